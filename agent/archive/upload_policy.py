"""What to do next with one queued visit recording: pure policy, no I/O, no event loop.

The on-disk queue (:mod:`agent.archive.upload_queue`) asks this module three questions and does what it says:

* :func:`is_due` — may this item be uploaded now?
* :func:`after_success` / :func:`after_failure` — the upload returned or raised; what state comes next?
* :func:`retention_expired` — may the local audio of a confirmed upload be deleted now?
* :func:`seconds_until_due` — how long may the upload runner sleep?

Rules (MediSync keeps one recording per appointment, and a visit's audio is the complete record, so the audio is
never deleted unless MediSync confirmed it holds exactly these bytes):

* transient failures (5xx, connection trouble, an unknown API error) wait a full-jitter exponential backoff:
  ``uniform(0, min(cap, first * 2**(attempts-1)))``; a 429 ``Retry-After`` is a floor under that delay
  (:mod:`agent.backoff`, the rule the speech stream uses too);
* 401: the HTTP client already logged in again and retried once (:mod:`agent.api.transport`); a 401 that reaches
  this policy is an ordinary failure and waits its backoff;
* 403 (no subscription): the item is kept and reported *blocked*, re-checked every ``backoff_cap_s``;
* 404 (appointment gone), a different recording on the server, a file over the limit, a missing file, or a sealed
  file that does not authenticate (damaged, altered, sealed to another key):
  dead-letter with a reason — kept on disk for a person, never retried automatically, never deleted;
* an upload answer naming another appointment than the one uploaded: dead-letter too. It is not "done" (this
  appointment may lack the recording), and not a retry: posting the visit again could file the patient's audio
  under yet another appointment, and what the server did with the first copy needs a person's look;
* success (including "already exists" resolved by the client as the same bytes): done; the audio is deleted
  ``retention_hours`` later.

Time is wall-clock seconds since the epoch (the queue outlives reboots); the random source is injected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from agent.backoff import MAX_RETRY_AFTER_S, delay_after
from agent.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    RateLimitError,
    RecordingMismatchError,
    ServerError,
    SubscriptionError,
    TransportError,
    UploadTooLargeError,
    WrongAppointmentError,
)
from agent.settings import UploadSettings

RETRY_AFTER_MAX_S = MAX_RETRY_AFTER_S
"""A server's Retry-After is honoured up to this many seconds (:data:`agent.backoff.MAX_RETRY_AFTER_S`)."""


class ItemState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its first or next attempt."""
    BLOCKED = "blocked"
    """The account has no active subscription (403); re-checked periodically, kept."""
    DONE = "done"
    """MediSync confirmed it holds this recording; audio kept until retention expires."""
    DEAD = "dead"
    """Cannot be uploaded without a person (404, mismatch, too large, file missing); audio kept."""


class ErrorKind(enum.StrEnum):
    AUTH = "auth"
    SUBSCRIPTION = "subscription"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER = "server"
    TRANSPORT = "transport"
    MISMATCH = "mismatch"
    TOO_LARGE = "too_large"
    MISSING_AUDIO = "missing_audio"
    DAMAGED_AUDIO = "damaged_audio"
    WRONG_APPOINTMENT = "wrong_appointment"
    OTHER = "other"


ERROR_TEXT: dict[ErrorKind, str] = {
    ErrorKind.AUTH: "login refused or token expired",
    ErrorKind.SUBSCRIPTION: "MediSync subscription required",
    ErrorKind.NOT_FOUND: "appointment not found on MediSync",
    ErrorKind.RATE_LIMITED: "rate limited by MediSync",
    ErrorKind.SERVER: "MediSync server error",
    ErrorKind.TRANSPORT: "MediSync unreachable",
    ErrorKind.MISMATCH: "MediSync holds a different recording for this appointment",
    ErrorKind.TOO_LARGE: "recording over the upload size limit",
    ErrorKind.MISSING_AUDIO: "local audio file missing or changed",
    ErrorKind.DAMAGED_AUDIO: "local audio damaged, altered or sealed to another key (see the log; 'medisync-agent "
    "repair FILE' keeps its intact part)",
    ErrorKind.WRONG_APPOINTMENT: "MediSync's upload answer names another appointment",
    ErrorKind.OTHER: "upload failed",
}
"""Fixed texts stored as an item's last error: never the server's own words, which might echo patient data."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed upload attempt, reduced to what the policy needs."""

    kind: ErrorKind
    status: int | None = None
    """HTTP status when there was a response."""
    retry_after: float | None = None
    """Seconds the server asked us to wait (429), if it said."""

    def text(self) -> str:
        """The last-error text for the queue listing: fixed per kind, plus the HTTP status."""
        base = ERROR_TEXT[self.kind]
        return f"{base} (HTTP {self.status})" if self.status is not None else base


def classify(exc: ApiError) -> Failure:
    """Map an exception of the agent's ApiError tree onto a :class:`Failure`."""
    kind = ErrorKind.OTHER
    retry_after: float | None = None
    if isinstance(exc, AuthError):
        kind = ErrorKind.AUTH
    elif isinstance(exc, SubscriptionError):
        kind = ErrorKind.SUBSCRIPTION
    elif isinstance(exc, NotFoundError):
        kind = ErrorKind.NOT_FOUND
    elif isinstance(exc, RateLimitError):
        kind, retry_after = ErrorKind.RATE_LIMITED, exc.retry_after
    elif isinstance(exc, ServerError):
        kind = ErrorKind.SERVER
    elif isinstance(exc, TransportError):
        kind = ErrorKind.TRANSPORT
    elif isinstance(exc, RecordingMismatchError):
        kind = ErrorKind.MISMATCH
    elif isinstance(exc, UploadTooLargeError):
        kind = ErrorKind.TOO_LARGE
    elif isinstance(exc, WrongAppointmentError):
        kind = ErrorKind.WRONG_APPOINTMENT
    return Failure(kind, status=exc.status, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class Retry:
    """Keep the item pending; next attempt at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class Block:
    """Keep the item, report it blocked; check again at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the item and its audio to the dead-letter folder (never delete) for this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """Upload confirmed at ``uploaded_at``; local audio may be deleted from ``delete_at`` on."""

    uploaded_at: float
    delete_at: float


Decision = Retry | Block | DeadLetter | Done

DEAD_ENDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.NOT_FOUND,
        ErrorKind.MISMATCH,
        ErrorKind.TOO_LARGE,
        ErrorKind.MISSING_AUDIO,
        ErrorKind.DAMAGED_AUDIO,
        ErrorKind.WRONG_APPOINTMENT,
    }
)
"""Failures no retry can fix: the item is dead-lettered for a person (its audio kept)."""

ACCOUNT_WIDE: frozenset[ErrorKind] = frozenset(
    {ErrorKind.AUTH, ErrorKind.SUBSCRIPTION, ErrorKind.RATE_LIMITED, ErrorKind.SERVER, ErrorKind.TRANSPORT}
)
"""Failures that would hit every other item too: a queue run stops after one instead of hammering the server."""


def after_success(now: float, settings: UploadSettings) -> Done:
    return Done(uploaded_at=now, delete_at=now + settings.retention_hours * 3600.0)


def after_failure(
    failure: Failure,
    *,
    attempts: int,
    now: float,
    rng: Callable[[], float],
    settings: UploadSettings,
) -> Decision:
    """Decide after a failed attempt.

    ``attempts`` counts failed attempts including this one.
    """
    kind = failure.kind
    if kind is ErrorKind.SUBSCRIPTION:
        return Block(at=now + settings.backoff_cap_s)
    if kind in DEAD_ENDS:
        return DeadLetter(reason=failure.text())
    retry_after = failure.retry_after if kind is ErrorKind.RATE_LIMITED else None
    delay = delay_after(attempts - 1, settings.backoff_first_s, settings.backoff_cap_s, rng, retry_after)
    return Retry(at=now + delay)


def is_due(state: ItemState, next_attempt_at: float, now: float, settings: UploadSettings) -> bool:
    """Whether a pending or blocked item should be tried now.

    A next-attempt time further ahead than any delay this policy sets means the wall clock was set back
    (e.g. a Pi without RTC booting at 1970, then NTP): treat the item as due rather than parking it for days.
    """
    if state not in (ItemState.PENDING, ItemState.BLOCKED):
        return False
    if now >= next_attempt_at:
        return True
    return next_attempt_at - now > max(settings.backoff_cap_s, RETRY_AFTER_MAX_S)


def retention_expired(state: ItemState, uploaded_at: float | None, now: float, settings: UploadSettings) -> bool:
    """Whether the local audio of an item may be deleted: only after a confirmed upload and the retention time."""
    if state is not ItemState.DONE or uploaded_at is None:
        return False
    return now >= uploaded_at + settings.retention_hours * 3600.0


HELD_RECHECK_S = 10.0
"""Seconds between looks at a held item (is its recorder gone?) while nothing else is due."""


class Scheduled(Protocol):
    """What :func:`seconds_until_due` reads of a queue item."""

    state: ItemState
    uploaded_at: float | None
    held: bool
    next_attempt_at: float


def seconds_until_due(items: Iterable[Scheduled], now: float, settings: UploadSettings) -> float:
    """Seconds from ``now`` until something is due (an attempt or a retention expiry), at most the backoff cap."""
    wake = now + settings.backoff_cap_s
    for item in items:
        if item.state is ItemState.DONE and item.uploaded_at is not None:
            wake = min(wake, item.uploaded_at + settings.retention_hours * 3600.0)
        elif item.held:
            wake = min(wake, now + HELD_RECHECK_S)  # its visit's end wakes the runner; a crash is found here
        elif is_due(item.state, item.next_attempt_at, now, settings):
            return 0.0
        else:
            wake = min(wake, item.next_attempt_at)
    return max(wake - now, 0.0)
