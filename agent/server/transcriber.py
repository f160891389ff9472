"""Speech spans and the pluggable transcriber (pure code: bytes in, segments out).

:class:`SpanDetector` finds stretches of audio that are louder than near-silence; a :class:`Transcriber` turns each
into segments. The offline recogniser (:mod:`agent.server.recognizer`, the ``[server]`` extra) puts words there;
without it, :class:`PlaceholderTranscriber` names each stretch's time span honestly, e.g.
``[speech 12.340-15.020 s]``, and invents nothing. Anything implementing :class:`Transcriber` can replace them
(``MediSyncServer(transcriber=...)``); it runs in the server's transcription thread
(:mod:`agent.server.transcription`), never on its event loop.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent import SAMPLE_RATE

WINDOW = SAMPLE_RATE // 50
"""Analysis window in samples (20 ms)."""


@dataclass(frozen=True)
class Span:
    start: int
    """Timeline index of the first sample."""
    pcm: bytes = field(repr=False)

    @property
    def end(self) -> int:
        return self.start + len(self.pcm) // 2


@dataclass(frozen=True)
class TranscribedSegment:
    speaker: str
    start: int
    """Timeline index (samples)."""
    end: int
    """Timeline index (samples), exclusive."""
    text: str


class Transcriber(Protocol):
    def transcribe(self, span: Span) -> list[TranscribedSegment]: ...


class PlaceholderTranscriber:
    """Honest placeholder: one segment per span, its text naming the span's time, no invented words."""

    def transcribe(self, span: Span) -> list[TranscribedSegment]:
        text = f"[speech {span.start / SAMPLE_RATE:.3f}-{span.end / SAMPLE_RATE:.3f} s]"
        return [TranscribedSegment("SPEAKER_0", span.start, span.end, text)]


def format_line(segment: TranscribedSegment, offset_s: float = 0.0) -> str:
    """MediSync's documented text format ``[SPEAKER_0 | 0.000 --> 3.450]: words``."""
    start = segment.start / SAMPLE_RATE + offset_s
    end = segment.end / SAMPLE_RATE + offset_s
    return f"[{segment.speaker} | {start:.3f} --> {end:.3f}]: {segment.text}"


class SpanDetector:
    """Incremental energy detector: feed timeline-stamped PCM, get closed speech spans back.

    A jump in the timeline (the client's voice gate removed silence) closes the open span; so does a pause
    longer than ``bridge_s`` or a span reaching ``max_span_s``. Trailing silence is trimmed off each span.
    """

    def __init__(self, *, threshold_rms: float = 300.0, bridge_s: float = 0.5, max_span_s: float = 15.0) -> None:
        self.threshold_rms = threshold_rms
        """RMS in int16 units above which a 20 ms window counts as speech (300 is about -41 dBFS)."""
        self._bridge = int(bridge_s * SAMPLE_RATE)
        self._max_span = int(max_span_s * SAMPLE_RATE)
        self._pos: int | None = None
        self._pending = bytearray()
        self._span = bytearray()
        self._span_start: int | None = None
        self._silent = 0

    def feed(self, start: int, pcm: bytes) -> list[Span]:
        closed: list[Span] = []
        if self._pos is not None and start != self._pos + len(self._pending) // 2:
            closed += self.flush()
        if self._pos is None:
            self._pos = start
        self._pending.extend(pcm)
        while len(self._pending) >= 2 * WINDOW:
            window = bytes(self._pending[: 2 * WINDOW])
            del self._pending[: 2 * WINDOW]
            closed += self._analyse(window)
            self._pos += WINDOW
        return closed

    def _analyse(self, window: bytes) -> list[Span]:
        samples = np.frombuffer(window, dtype="<i2").astype(np.float32)
        loud = float(np.sqrt(np.mean(samples * samples))) > self.threshold_rms
        if self._span_start is None:
            if loud:
                self._span_start, self._span, self._silent = self._pos, bytearray(window), 0
            return []
        self._span.extend(window)
        self._silent = 0 if loud else self._silent + WINDOW
        if self._silent >= self._bridge or len(self._span) // 2 >= self._max_span:
            return self._close_span()
        return []

    def _close_span(self) -> list[Span]:
        if self._span_start is None:
            return []
        kept = len(self._span) - 2 * self._silent
        span = Span(self._span_start, bytes(self._span[:kept]))
        self._span_start, self._span, self._silent = None, bytearray(), 0
        return [span]

    def flush(self) -> list[Span]:
        """Close whatever is open (end of a chunk, a timeline jump, the end of a visit)."""
        closed = self._close_span()
        self._pos, self._pending = None, bytearray()
        return closed


class ChunkRejected(Exception):
    """A basic-mode chunk the server cannot use; the message is sent back as a ``warning``."""


def decode_chunk(data: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """PCM of one basic-mode chunk: a complete WAV (16 kHz mono s16) or raw s16le PCM at ``sample_rate``."""
    if data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data), "rb") as wav:
                rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
                pcm = wav.readframes(wav.getnframes())
        except (wave.Error, EOFError, ValueError) as exc:
            raise ChunkRejected(f"malformed WAV chunk ({exc})") from exc
        if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
            raise ChunkRejected(f"unsupported WAV format {rate} Hz, {channels} ch, {8 * width} bit; "
                                f"expected {SAMPLE_RATE} Hz mono 16 bit")
        return pcm
    if sample_rate != SAMPLE_RATE:
        raise ChunkRejected(f"unsupported sample rate {sample_rate}; expected {SAMPLE_RATE}")
    if len(data) % 2:
        raise ChunkRejected("raw PCM chunk has an odd number of bytes")
    return data
