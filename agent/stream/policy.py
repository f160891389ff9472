"""Reconnect, pacing and liveness policies for the speech socket. Pure: time and randomness are passed in.

- :class:`ReconnectPolicy`: full-jitter exponential backoff (first delay drawn from ``[0, backoff_first_s]``,
  doubling, capped at ``backoff_cap_s``); the attempt count resets only after a connection stayed up for
  :data:`STABLE_AFTER_S` *and* advanced the ack (basic mode: completed a chunk). ``Retry-After`` (HTTP header or the
  protocol's ``error.retry_after``) is honoured; 401 asks for a new login and dials at once the first time;
  403 stops dialling; everything else is transient and retried forever.
- :class:`Pacer`: token bucket limiting audio written to ``replay_speed`` x real time, with a burst of one replay
  message; live audio (1x) never waits.
- :class:`AckWatchdog`: no ack progress for ``ack_timeout_s`` while messages are outstanding means the connection
  is dead even if TCP says otherwise.
- the delays and the ``Retry-After`` rule (clamped to ``[0, MAX_RETRY_AFTER_S]``, a floor under the jittered
  backoff, never a replacement for it) are :mod:`agent.backoff`'s, shared with the uploads.
- :func:`check_ready`, :func:`check_ack`, :func:`check_closed`: a server's claims about what it stored, checked
  against what was written. A claim beyond it is a protocol error (reconnect), never audio skipped.
- :class:`DrainWait`: how long a finished visit's stream may keep replaying its backlog before it is abandoned.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from agent.backoff import MAX_RETRY_AFTER_S, delay_after, retry_after_s
from agent.settings import StreamSettings

__all__ = ["MAX_RETRY_AFTER_S", "retry_after_s"]  # re-exported: the stream's tests and wire name them here

STABLE_AFTER_S = 2.0
"""Seconds a connection must stay up (and advance the ack) before the backoff starts from the beginning again."""


class Failure(enum.Enum):
    TRANSIENT = "transient"
    """Network error, reset, timeout, 429, 5xx, retryable protocol error, watchdog."""
    UNAUTHORIZED = "unauthorized"
    """HTTP 401 at the handshake."""
    FORBIDDEN = "forbidden"
    """HTTP 403: no active subscription."""
    FATAL = "fatal"
    """Non-retryable protocol ``error``: the server ended the session."""


@dataclass(frozen=True, slots=True)
class Decision:
    delay_s: float | None
    """Seconds to wait before dialling again; None: stop dialling."""
    relogin: bool = False
    """Fetch a new token before dialling."""


class ReconnectPolicy:
    def __init__(self, settings: StreamSettings, random: Callable[[], float]) -> None:
        """``random()`` returns a float in [0, 1) (``random.random`` in production, a fixed sequence in tests)."""
        self._first = settings.backoff_first_s
        self._cap = settings.backoff_cap_s
        self._random = random
        self._attempt = 0
        self._connected_at: float | None = None
        self._progressed = False
        self._last_failure: Failure | None = None

    @property
    def attempt(self) -> int:
        """Failures since the last stable connection."""
        return self._attempt

    def on_connected(self, now: float) -> None:
        self._connected_at = now
        self._progressed = False

    def on_progress(self) -> None:
        """The server confirmed audio on the current connection (ack advanced / chunk done)."""
        self._progressed = True

    def on_failure(self, failure: Failure, now: float, retry_after: float | None = None) -> Decision:
        """The connection (or the dial) ended; what to do next."""
        stable = self._connected_at is not None and self._progressed and now - self._connected_at >= STABLE_AFTER_S
        if stable:
            self._attempt = 0
        self._connected_at = None
        previous, self._last_failure = self._last_failure, failure
        if failure in (Failure.FORBIDDEN, Failure.FATAL):
            return Decision(None)
        if failure is Failure.UNAUTHORIZED and previous is not Failure.UNAUTHORIZED:
            return Decision(0.0, relogin=True)
        delay = delay_after(self._attempt, self._first, self._cap, self._random, retry_after)
        self._attempt += 1
        return Decision(delay, relogin=failure is Failure.UNAUTHORIZED)


class Pacer:
    """Token bucket over seconds of audio; tokens refill at ``speed`` per wall-clock second."""

    def __init__(self, speed: float, burst_s: float, now: float) -> None:
        self._speed = speed
        self._burst = burst_s
        self._tokens = burst_s
        self._at = now

    def delay(self, audio_s: float, now: float) -> float:
        """Seconds to wait before ``audio_s`` seconds of audio may be written (0: now)."""
        self._refill(now)
        need = min(audio_s, self._burst)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self._speed

    def spend(self, audio_s: float, now: float) -> None:
        self._refill(now)
        self._tokens -= audio_s

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._speed)
        self._at = now


class AckWatchdog:
    def __init__(self, timeout_s: float, now: float) -> None:
        self._timeout = timeout_s
        self._since = now
        self._outstanding = False

    def update(self, outstanding: bool, progressed: bool, now: float) -> None:
        """Call after every write and every ack: the clock runs from the last progress while anything is pending."""
        if progressed or (outstanding and not self._outstanding):
            self._since = now
        self._outstanding = outstanding

    def deadline(self) -> float | None:
        """Monotonic time at which the connection counts as dead, or None while nothing is outstanding."""
        return self._since + self._timeout if self._outstanding else None

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline


# --- what the server claims to hold (resume mode) --------------------------------------------------------------


def check_ready(next_seq: int, highest_written: int) -> str | None:
    """Why ``ready.next_seq`` cannot be true (None when it can): the server cannot hold a frame never written."""
    if next_seq < 0:
        return f"ready.next_seq {next_seq} is negative"
    if next_seq > highest_written + 1:
        return f"ready.next_seq {next_seq} is beyond the frames written (up to seq {highest_written})"
    return None


def check_ack(seq: int, written_next: int) -> str | None:
    """Why ``ack.seq`` cannot be true; ``written_next`` is one past the highest seq written on this connection
    (a write in progress included: the server may read it before the write call returns)."""
    if seq >= written_next:
        return f"ack of seq {seq} is beyond the frames written on this connection (up to seq {written_next - 1})"
    return None


def check_closed(last_seq: int, written_next: int) -> str | None:
    """Why ``closed.last_seq`` cannot be true: it confirms storage up to ``last_seq``, like an ack."""
    if last_seq >= written_next:
        return f"closed.last_seq {last_seq} is beyond the frames written on this connection"
    return None


# --- the end of a visit ----------------------------------------------------------------------------------------


class DrainWait:
    """When a finished visit's stream is abandoned (its audio is in the upload either way). Pure.

    The wait is what the unconfirmed audio needs: ``grace_s`` (a connection, the last acks, ``closed``) plus the
    reconnect delay still pending plus the audio at ``replay_speed``. It is recomputed whenever the server confirms
    more audio (progress buys more time), never shortened, and never runs past ``cap_s`` from the start.
    """

    def __init__(self, *, replay_speed: float, grace_s: float, cap_s: float, now: float) -> None:
        self._speed = replay_speed
        self._grace = grace_s
        self._hard = now + cap_s
        self._deadline = now
        self._unconfirmed: float | None = None

    def update(self, unconfirmed_s: float, reconnect_in_s: float, now: float) -> float:
        """The monotonic time to give up at, given the audio still unconfirmed and the pending reconnect delay."""
        if self._unconfirmed is None or unconfirmed_s < self._unconfirmed:
            need = self._grace + max(0.0, reconnect_in_s) + unconfirmed_s / self._speed
            self._deadline = max(self._deadline, now + need)
            self._unconfirmed = unconfirmed_s
        return min(self._deadline, self._hard)
