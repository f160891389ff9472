"""The device state a light, a button script or a person follows: derived from the daemon's facts. Pure, no I/O.

:func:`derive_state` maps what the daemon knows (:class:`Facts`) to one of :data:`STATES` and a short reason;
:class:`StateTracker` turns a series of facts into :class:`StateEvent` values, one per change of state, reason or
audio warnings. The events go to ``medisync-agent status --follow`` (:mod:`agent.event_hub`) and to the optional
hook command (:mod:`agent.hook`) as one JSON line each::

    {"seq": 3, "time": "2026-11-26T23:40:01.250Z", "state": "offline", "reason": "speech stream disconnected",
     "warnings": [], "session_id": "0b6c..."}

Events carry ids only (the speech session id), never an appointment id or patient data.

Precedence, most urgent first: ``error`` (microphone lost, archive not writable during a visit, background worker
restarting, last visit failed), ``paused``, ``offline`` (in a visit: the speech stream dropped or cannot run;
between visits: uploads fail because MediSync is unreachable or refusing), ``recording``, ``uploading`` (visits
waiting in the upload queue, or a visit being stopped and queued), ``idle``. A visit being started (the account
check) is still ``idle``; the stream's first connection is ``recording``, only a reconnect is ``offline``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import msgspec

DeviceState = Literal["idle", "recording", "paused", "offline", "uploading", "error"]
STATES: tuple[DeviceState, ...] = ("idle", "recording", "paused", "offline", "uploading", "error")

OFFLINE_STREAM_STATES = frozenset({"backoff", "forbidden", "failed"})
"""Speech socket states (``agent.stream.client.State`` values) that mean no live transcript right now."""


@dataclass(frozen=True)
class Facts:
    """What the daemon knows at one moment (from its status and workers); every field has a harmless default."""

    daemon_state: str = "idle"
    """The daemon's visit state: ``idle``, ``starting``, ``recording``, ``stopping`` (``paused`` is understood too,
    should the daemon name the privacy pause as a visit state rather than set :attr:`paused`)."""
    paused: bool = False
    """The visit is paused (privacy pause)."""
    connection: str = "-"
    """Speech socket state of the visit (``connecting``, ``streaming``, ``backoff``, ...) or ``-`` without a stream."""
    reconnects: int = 0
    """Speech socket reconnects in this visit (``connecting`` after one is offline, the first is not)."""
    device_lost: bool = False
    """The capture device is gone and being reopened."""
    archive_writable: bool = True
    """False while the visit's archive cannot be written."""
    worker_problem: str = ""
    """Non-empty while a background worker (e.g. the uploader) is restarting."""
    visit_failed: bool = False
    """The last visit ended with an error (until the next one starts)."""
    upload_queue: int = 0
    """Visits waiting for their upload."""
    uploads_unreachable: bool = False
    """The last upload pass stopped on an account-wide failure (MediSync unreachable, 5xx, 429, 401, 403)."""
    warnings: frozenset[str] = frozenset()
    """Audio warnings of the microphone detector (``mic_silent``, ``mic_clipping``, ``mic_no_data``, ...)."""
    session_id: str = ""
    """The current visit's speech session id (no patient data)."""


IN_VISIT = frozenset({"recording", "paused", "stopping"})
"""Daemon states with a visit whose archive and session count."""


def _error_reason(facts: Facts) -> str:
    in_visit = facts.daemon_state in IN_VISIT
    if facts.device_lost:
        return "microphone lost"
    if in_visit and not facts.archive_writable:
        return "archive not writable"
    if facts.worker_problem:
        return "background worker restarting"
    if facts.visit_failed and facts.daemon_state == "idle":
        return "last visit failed"
    return ""


def _stream_offline(facts: Facts) -> bool:
    if facts.connection in OFFLINE_STREAM_STATES:
        return True
    return facts.connection == "connecting" and facts.reconnects > 0


def derive_state(facts: Facts) -> tuple[DeviceState, str]:
    """``(state, reason)`` for ``facts``; the reason is a short fixed phrase (no ids, no patient data)."""
    error = _error_reason(facts)
    if error:
        return "error", error
    if facts.daemon_state in ("recording", "paused"):
        if facts.paused or facts.daemon_state == "paused":
            return "paused", "privacy pause"
        if _stream_offline(facts):
            return "offline", "speech stream disconnected"
        return "recording", ""
    if facts.daemon_state == "stopping":
        return "uploading", "visit ending, upload being queued"
    if facts.uploads_unreachable and facts.upload_queue:
        return "offline", "MediSync unreachable, uploads waiting"
    if facts.upload_queue:
        return "uploading", f"{facts.upload_queue} visit(s) to upload"
    return "idle", ""


class StateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the event stream and of the hook's stdin."""

    seq: int
    """1 for the first event since the daemon started, then +1 per change."""
    time: str
    """When the change was seen, UTC, ISO 8601 with milliseconds (``2026-11-26T23:40:01.250Z``)."""
    state: DeviceState
    reason: str = ""
    """Why, for a person (``speech stream disconnected``); empty for idle and recording."""
    warnings: list[str] = msgspec.field(default_factory=list)
    """Audio warnings, sorted; empty when the microphone is healthy."""
    session_id: str = ""
    """The visit's speech session id while one runs (ids only, never patient data)."""


def utc_stamp(epoch_s: float) -> str:
    """``epoch_s`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StateTracker:
    """Facts in, an event out when the visible state changed (state, reason or warnings); None otherwise."""

    clock: Callable[[], float]
    """Wall clock in seconds since the epoch (``time.time``; tests inject their own)."""
    current: StateEvent | None = None
    _key: tuple[str, str, tuple[str, ...], str] | None = field(default=None, repr=False)

    def observe(self, facts: Facts) -> StateEvent | None:
        state, reason = derive_state(facts)
        warnings = tuple(sorted(facts.warnings))
        session = facts.session_id if facts.daemon_state in IN_VISIT else ""
        key = (state, reason, warnings, session)
        if key == self._key:
            return None
        self._key = key
        seq = 1 if self.current is None else self.current.seq + 1
        self.current = StateEvent(seq=seq, time=utc_stamp(self.clock()), state=state, reason=reason,
                                  warnings=list(warnings), session_id=session)  # fmt: skip
        return self.current


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StateEvent)


def encode_event(event: StateEvent) -> bytes:
    """One JSON line, newline included."""
    return _encoder.encode(event) + b"\n"


def parse_event(line: bytes) -> StateEvent:
    """A JSON line -> StateEvent (msgspec errors propagate: the caller says what it was reading)."""
    return _decoder.decode(line.strip())
