"""What the speech session (:mod:`agent.stream.session`) tells its adapter to do. Pure values."""

from __future__ import annotations

from dataclasses import dataclass

from agent.stream import wire
from agent.stream.policy import Failure
from agent.stream.stats import State


@dataclass(frozen=True, slots=True)
class Ended:
    """How a connection (or a dial) ended."""

    failure: Failure | None
    """None: the visit was confirmed complete (``closed`` / every chunk done)."""
    reason: str
    retry_after: float | None = None
    protocol_error: bool = False
    """The server claimed something that cannot be true (logged as a WARNING)."""
    unreachable: bool = False
    """The speech host could not be reached at all (TCP connect failed): a reachability probe may end the wait."""


@dataclass(frozen=True, slots=True)
class Retry:
    delay_s: float
    """Seconds to wait before dialling again."""
    relogin: bool
    """Fetch a new token before dialling (the last one was refused)."""
    probe: bool
    """The host was unreachable: a successful reachability probe may end the wait early."""


@dataclass(frozen=True, slots=True)
class Stop:
    state: State
    """``done``, ``forbidden`` or ``failed``: dial no more."""


@dataclass(frozen=True, slots=True)
class Received:
    ended: Ended | None = None
    transcript: wire.TranscriptEvent | None = None
    wake: bool = False
    """The sender may have something new to do (the handshake moved on, the visit may be confirmed)."""
