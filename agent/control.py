"""The daemon's control protocol: newline-delimited JSON over a local Unix stream socket. Pure, no I/O.

One request per line, one response line per request::

    {"cmd": "visit_start", "appointment_id": "a1b2"}   -> {"ok": true, "status": {...}}
    {"cmd": "visit_stop"}                               -> {"ok": true, "status": {...}, "message": "..."}
    {"cmd": "status"}                                   -> {"ok": true, "status": {...}}
    {"cmd": "follow"}                                   -> one state event line now and one per change
                                                           (agent.events.StateEvent) until either side ends
    anything wrong                                      -> {"ok": false, "error": "one line for a person"}

Who may talk is decided by the socket file's permissions (mode 0660: the service user and its group), not by
the protocol. Requests are size-limited and validated here; the daemon only sees typed requests.
Appointment ids are opaque MediSync ids, never patient names, and are never logged by the daemon.
"""

from __future__ import annotations

import msgspec

from agent.ids import checked_appointment_id
from agent.mic_problems import describe as describe_problem

MAX_LINE_BYTES = 4096
"""Longest request or response line accepted, in bytes (newline included)."""


class StartVisit(msgspec.Struct, tag="visit_start", tag_field="cmd", forbid_unknown_fields=True, frozen=True):
    appointment_id: str


class StopVisit(msgspec.Struct, tag="visit_stop", tag_field="cmd", forbid_unknown_fields=True, frozen=True):
    pass


class GetStatus(msgspec.Struct, tag="status", tag_field="cmd", forbid_unknown_fields=True, frozen=True):
    pass


class Follow(msgspec.Struct, tag="follow", tag_field="cmd", forbid_unknown_fields=True, frozen=True):
    """Turn the connection into the event stream (:mod:`agent.event_hub`); it takes no further requests."""


Request = StartVisit | StopVisit | GetStatus | Follow


class DaemonStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``medisync-agent status`` shows, projected from the daemon's one telemetry snapshot (agent.telemetry).

    Visit figures (``visit_seconds`` to ``archive_problem``, ``vad_share``, the stream's, the ids) refer to the visit
    in progress and are zero, empty or None when idle (the answer to ``visit_stop`` carries the ended visit's);
    device, upload and background-task figures are always filled. Totals since the start are in the metrics."""

    state: str = "idle"
    """``starting`` (checking the account), ``recording``, ``stopping`` or ``idle`` (``agent.daemon_state``)."""
    device: str = ""
    """Description of the capture source (e.g. "mic 'USB Audio' 48000 Hz x1")."""
    device_state: str = "opening"
    """``open`` (delivering audio), ``lost`` (being reopened) or ``opening``."""
    input_level_dbfs: float | None = None
    """Recent input level, dBFS RMS (-inf shown as None)."""
    vad_share: float | None = None
    """Share of this visit's audio the voice gate passed, 0 to 1; None outside a visit."""
    connection: str = "-"
    """Speech socket state (``connecting``, ``streaming``, ``backoff``, ...) or ``-`` when not streaming."""
    stream_mode: str = ""
    """``resume`` or ``basic`` once the server picked a mode."""
    ring_fill_s: float = 0.0
    """Seconds of audio in the send ring, not yet confirmed by the server."""
    reconnects: int = 0
    """Speech socket reconnects in this visit."""
    upload_queue: int = 0
    """Visits waiting in the upload queue."""
    visit_seconds: float = 0.0
    """Seconds of audio captured in this visit."""
    gap_seconds: float = 0.0
    """Seconds of this visit the source lost (device loss), archived as silence."""
    archive_writable: bool = True
    """False while this visit's archive cannot be written (disk full, I/O error); capture and stream go on."""
    archive_missing_s: float = 0.0
    """Seconds of this visit missing from its archive so far (silence there once writing resumed)."""
    archive_problem: str = ""
    """Why this visit's archive stopped (the current or last stop), e.g. ``disk full``; empty if it never did."""
    blocks_captured: int = 0
    """Audio blocks captured since the daemon started (between visits too); stops growing when capture stalls."""
    appointment_id: str = ""
    """The current visit's appointment id (local socket only; never logged)."""
    session_id: str = ""
    """The current visit's speech session id (resume key; no patient data)."""
    pending_reload: bool = False
    """A SIGHUP arrived during the visit; the new configuration applies when it ends."""
    upload_worker: str = "running"
    """Health of the background upload worker: ``running``, ``starting`` or ``restarting (reason)``."""
    worker_restarts: int = 0
    """Restarts of the daemon's background tasks (upload worker, tick, queue count) since it started."""
    needs_appointment: int = 0
    """Recordings in the archive that no visit journal or queue item accounts for (``uploads assign``)."""
    quarantined: int = 0
    """Files (queue items, journals, recordings) that could not be read and were quarantined."""
    draining_streams: int = 0
    """Live streams of ended visits still replaying their backlog to the speech server (in the background)."""
    draining_seconds: float = 0.0
    """Seconds of audio those streams still have to get confirmed (their uploads hold it either way)."""
    mic_problems: list[str] = msgspec.field(default_factory=list)
    """Microphone problems now (``silent``, ``clipping``, ``no_data``, ``no_speech``: agent.audio.mic_health)."""


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    ok: bool
    status: DaemonStatus | None = None
    message: str = ""
    """For a person: what happened (ok) or what went wrong (not ok)."""
    error: str = ""


class ProtocolViolation(ValueError):
    """A request line that cannot be served; ``str()`` is the one-line answer."""


_request_decoder = msgspec.json.Decoder(Request)
_response_decoder = msgspec.json.Decoder(Response)
_encoder = msgspec.json.Encoder()


def validate_appointment_id(value: str) -> str:
    """The id, stripped; ProtocolViolation when it is empty, too long or has characters an id cannot have."""
    return checked_appointment_id(value, ProtocolViolation)


def parse_request(line: bytes) -> Request:
    """One request line (with or without its newline) -> typed request; ProtocolViolation otherwise."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolViolation(f"request longer than {MAX_LINE_BYTES} bytes")
    text = line.strip()
    if not text:
        raise ProtocolViolation("empty request")
    try:
        request: Request = _request_decoder.decode(text)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(f"bad request: {exc}") from None
    except msgspec.DecodeError:
        raise ProtocolViolation("bad request: not a JSON object") from None
    except RecursionError:  # msgspec skips unknown fields recursively: deep nesting must not reach the daemon
        raise ProtocolViolation("bad request: nested too deeply") from None
    except UnicodeDecodeError:  # msgspec decodes strings lazily: invalid UTF-8 inside one raises this
        raise ProtocolViolation("bad request: not UTF-8 text") from None
    if isinstance(request, StartVisit):
        return StartVisit(appointment_id=validate_appointment_id(request.appointment_id))
    return request


def encode_request(request: Request) -> bytes:
    return _encoder.encode(request) + b"\n"


def encode_response(response: Response) -> bytes:
    return _encoder.encode(response) + b"\n"


def parse_response(line: bytes) -> Response:
    """A response line -> Response; ProtocolViolation when it is not one (e.g. something else owns the socket)."""
    try:
        response: Response = _response_decoder.decode(line.strip())
        return response
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolViolation(f"unexpected answer from the daemon: {exc}") from None
    except RecursionError:
        raise ProtocolViolation("unexpected answer from the daemon: nested too deeply") from None


def ok(status: DaemonStatus, message: str = "") -> Response:
    return Response(ok=True, status=status, message=message)


def failure(error: str) -> Response:
    return Response(ok=False, error=" ".join(error.splitlines()))


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} dBFS"


def _archive_row(status: DaemonStatus) -> str:
    if not status.archive_writable:
        return (f"NOT WRITING ({status.archive_problem}): {status.archive_missing_s:.1f} s of the visit missing so "
                "far; capture and stream go on, the saved part is queued")
    if status.archive_missing_s:
        return (f"writing; {status.archive_missing_s:.1f} s missing earlier ({status.archive_problem}), silence in "
                "the recording")
    return "writing"


def format_status(status: DaemonStatus) -> str:
    """Clear text for ``medisync-agent status``: one ``name: value`` per line."""
    rows = [
        ("state", status.state + (" (configuration reload waits for the visit to end)" if status.pending_reload
                                  else "")),
        ("device", f"{status.device or '-'} ({status.device_state})"),
        ("input level", _db(status.input_level_dbfs)),
        ("voice share", "-" if status.vad_share is None else f"{status.vad_share:.0%}"),
        ("connection", status.connection + (f" ({status.stream_mode} mode)" if status.stream_mode else "")),
        ("ring fill", f"{status.ring_fill_s:.1f} s"),
        ("reconnects", str(status.reconnects)),
        ("upload queue", f"{status.upload_queue} visit(s) waiting"),
        ("uploader", f"{status.upload_worker}; {status.worker_restarts} background restart(s)"),
    ]
    if status.draining_streams:
        rows.insert(-1, ("ended visits' streams", f"{status.draining_streams} still confirming "
                                                  f"{status.draining_seconds:.1f} s of audio"))
    rows.insert(3, ("microphone", "; ".join(f"PROBLEM {p} ({describe_problem(p)})" for p in status.mic_problems)
                    or "ok"))
    if status.needs_appointment or status.quarantined:
        rows.append(("needs a person", f"{status.needs_appointment} recording(s) need an appointment, "
                                        f"{status.quarantined} file(s) quarantined: see 'medisync-agent uploads list'"))
    if status.state != "idle":
        rows.insert(1, ("visit", f"appointment {status.appointment_id}, {status.visit_seconds:.1f} s recorded"
                                 + (f", {status.gap_seconds:.1f} s lost to device gaps" if status.gap_seconds else "")))
        rows.insert(2, ("archive", _archive_row(status)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows)
