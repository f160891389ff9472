"""Speech-socket wire messages (shared/speech-protocol.md), pure: bytes in, values out.

Text messages are JSON objects tagged by ``type``. Decoding never fails on what a newer server may add: unknown
fields are ignored and an unknown ``type`` decodes to :class:`Unknown`. Only a message that is not a JSON object
at all, a known type with fields of the wrong kind, or a message longer than :data:`MAX_TEXT_BYTES` or nested
deeper than :data:`MAX_DEPTH` (both checked before parsing) raises :class:`~agent.errors.ProtocolError`.

Binary audio messages in resume mode carry a 16-byte header: ``seq`` (u64 LE) and ``start`` (u64 LE, timeline
index of the first sample), then s16le PCM of at most one second.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import msgspec

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.backoff import retry_after_s
from agent.errors import ProtocolError

RESUME_SUBPROTOCOL = "medisync.resume.v1"
HEADER = struct.Struct("<QQ")
"""Resume-mode binary header: seq, start."""
MAX_PAYLOAD_BYTES = SAMPLE_RATE * BYTES_PER_SAMPLE
"""At most one second of audio per binary message."""
MAX_MESSAGE_BYTES = 1 << 20
"""Largest server message the socket accepts, in bytes; a larger one fails the connection (close code 1009)."""
MAX_TEXT_BYTES = 256 * 1024
"""Largest server text message parsed, in bytes; a longer one is refused before parsing."""
MAX_DEPTH = 32
"""Deepest nesting of JSON arrays and objects parsed; the protocol's messages are flat (depth 1)."""


# --- client to server -------------------------------------------------------------------------------------------


class Start(msgspec.Struct, tag="start", tag_field="type", kw_only=True):
    session_id: str
    appointment_id: str
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    channels: int = 1


class Gap(msgspec.Struct, tag="gap", tag_field="type", kw_only=True):
    start: int
    """Timeline index of the first missing sample."""
    end: int
    """Timeline index one past the last missing sample."""
    reason: str = "ring_overflow"


class End(msgspec.Struct, tag="end", tag_field="type", kw_only=True):
    last_seq: int
    """seq of the last audio frame of the visit; -1 when the visit sent no audio."""
    final_sample: int
    """Timeline index one past the visit's last captured sample."""


ClientMessage = Start | Gap | End


def encode(message: ClientMessage) -> str:
    return msgspec.json.encode(message).decode()


def encode_audio(seq: int, start: int, pcm: bytes) -> bytes:
    if len(pcm) % 2 or len(pcm) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(pcm)} bytes is not 0..{MAX_PAYLOAD_BYTES} even bytes")
    return HEADER.pack(seq, start) + pcm


def decode_audio(data: bytes) -> tuple[int, int, bytes]:
    """(seq, start, pcm) of a resume-mode binary message (used by the local server and tests)."""
    if len(data) < HEADER.size:
        raise ProtocolError(f"binary message of {len(data)} bytes is shorter than its header")
    seq, start = HEADER.unpack_from(data)
    return seq, start, data[HEADER.size :]


# --- server to client -------------------------------------------------------------------------------------------


class SessionInit(msgspec.Struct, tag="session_init", tag_field="type", kw_only=True):
    session_id: str = ""


class Ready(msgspec.Struct, tag="ready", tag_field="type", kw_only=True):
    next_seq: int
    session_id: str = ""


class Ack(msgspec.Struct, tag="ack", tag_field="type", kw_only=True):
    seq: int


class Transcription(msgspec.Struct, tag="transcription", tag_field="type", kw_only=True):
    text: str = ""
    speaker: str | int | None = None
    start_time: float | None = None
    end_time: float | None = None
    final: bool | None = None
    timestamp: float | None = None


class ServerWarning(msgspec.Struct, tag="warning", tag_field="type", kw_only=True):
    message: str = ""
    code: str | int | None = None


class Error(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    code: str | int | None = None
    message: str = ""
    retryable: bool = False
    retry_after: float | None = None
    """Seconds, already clamped by :func:`~agent.backoff.retry_after_s` (None: absent or not a number)."""


class _ErrorIn(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """``error`` as sent: ``retry_after`` taken raw, so that -5, 1e999 or "7" are clamped instead of refused."""

    code: str | int | None = None
    message: str = ""
    retryable: bool = False
    retry_after: msgspec.Raw = msgspec.Raw(b"null")


class Closed(msgspec.Struct, tag="closed", tag_field="type", kw_only=True):
    last_seq: int = -1


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message of a type this client does not know; ignored by callers."""

    type: str


ServerMessage = SessionInit | Ready | Ack | Transcription | ServerWarning | Error | Closed
_KNOWN = {
    cls.__struct_config__.tag: cls for cls in (SessionInit, Ready, Ack, Transcription, ServerWarning, Error, Closed)
}


class _Envelope(msgspec.Struct):
    type: str


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_decoders: dict[str, msgspec.json.Decoder[ServerMessage | _ErrorIn]] = {
    tag: msgspec.json.Decoder(_ErrorIn if cls is Error else cls)  # type: ignore[misc]
    for tag, cls in _KNOWN.items()
}
_NESTING = re.compile(rb'["\\\[\]{}]')


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """True if JSON text ``data`` nests arrays/objects deeper than ``limit`` (brackets inside strings do not count).

    Checked before parsing: a parser recursing into 100 000 nested arrays fails with RecursionError."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case, at C speed
    depth, in_string, escaped_at = 0, False, -1
    for match in _NESTING.finditer(data):
        char, at = match[0], match.start()
        if in_string:
            if char == b"\\" and escaped_at != at:
                escaped_at = at + 1  # the next character is escaped
            elif char == b'"' and escaped_at != at:
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def decode(text: str | bytes) -> ServerMessage | Unknown:
    """One server text message; ProtocolError (a one-line reason without the message's content) if unusable."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_TEXT_BYTES:
        raise ProtocolError(f"server sent a text message of {len(data)} bytes (limit {MAX_TEXT_BYTES})")
    if nesting_exceeds(data, MAX_DEPTH):
        raise ProtocolError(f"server sent a text message nested deeper than {MAX_DEPTH} levels")
    try:
        tag = _envelope_decoder.decode(data).type
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"server sent a text message that is not a typed JSON object: {exc}") from None
    decoder = _decoders.get(tag)
    if decoder is None:
        return Unknown(tag)
    try:
        msg = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"server sent a malformed {tag!r} message: {exc}") from None
    if isinstance(msg, _ErrorIn):
        return Error(code=msg.code, message=msg.message, retryable=msg.retryable,
                     retry_after=retry_after_s(_raw_scalar(msg.retry_after)))  # fmt: skip
    return msg


def _raw_scalar(raw: msgspec.Raw) -> str | None:
    """A raw JSON value as text for :func:`retry_after_s`: a string's content, a number's digits, else None."""
    text = bytes(raw).decode("utf-8", "replace").strip()
    if text.startswith('"'):
        try:
            return str(msgspec.json.decode(text))
        except msgspec.DecodeError:
            return None
    return None if text in ("", "null") else text


# --- transcripts -------------------------------------------------------------------------------------------------

_TEXT_FORMAT = re.compile(
    r"^\s*\[\s*(?P<speaker>[^|\]]*?)\s*\|\s*(?P<start>[0-9.]+)\s*-->\s*(?P<end>[0-9.]+)\s*\]\s*:?\s*(?P<words>.*)$",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """One piece of live transcript, with times on the visit timeline (seconds from the visit's first sample)."""

    words: str
    speaker: str | None
    start: float | None
    end: float | None
    final: bool
    chunk: int | None = None
    """Basic mode: number of the chunk this transcribes (0-based, in visit order); None in resume mode."""


def parse_transcription(msg: Transcription, *, offset_s: float = 0.0, chunk: int | None = None) -> TranscriptEvent:
    """Speaker, times and words from ``[SPEAKER_0 | 0.000 --> 3.450]: words`` or from the separate fields.

    Separate fields win over the text's bracket when both are present. ``offset_s`` is added to the times (basic
    mode: the server times a chunk from its own start; the chunk's place on the timeline is known here).
    """
    speaker: str | None = None
    start = end = None
    words = msg.text.strip()
    match = _TEXT_FORMAT.match(msg.text)
    if match is not None:
        speaker = match["speaker"] or None
        start, end = _float_or_none(match["start"]), _float_or_none(match["end"])
        words = match["words"].strip()
    if msg.speaker is not None:
        speaker = str(msg.speaker)
    if msg.start_time is not None:
        start = msg.start_time
    if msg.end_time is not None:
        end = msg.end_time
    return TranscriptEvent(
        words=words,
        speaker=speaker,
        start=None if start is None else start + offset_s,
        end=None if end is None else end + offset_s,
        final=True if msg.final is None else msg.final,
        chunk=chunk,
    )


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
