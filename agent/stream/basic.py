"""Basic mode (MediSync's documented API): one chunk per stretch of speech, done by its transcription. Pure.

A chunk is what the voice gate passed between a segment start and its end, split at ``basic_max_chunk_s`` (and at
any jump in the timeline, which is gated silence). It is sent as a complete WAV file (or raw PCM) and stays in the
outbox until done: its ``transcription`` arrived (results come in order, one per chunk that held speech, so a
result belongs to the oldest chunk outstanding on this connection) or it was outstanding on this connection for
``basic_chunk_timeout_s`` (no speech in it). A new connection resends every chunk not done, oldest first.

Attribution help: a result whose end time lies beyond the oldest outstanding chunk's length cannot be for it, so
that chunk held no speech and is done (a result that fits no outstanding chunk goes to the oldest, in order, and
completes only that one). A result while no chunk is outstanding belongs to no audio this client sent: it is
counted as unmatched and changes nothing. Dedupe: the previous chunk's result sent again (same text and
``timestamp``) is dropped, and so is a result with the text accepted for the previous chunk when that chunk was
sent more than once (the server answering a resend it had already answered).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.wavfmt import wav_header
from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentEnd, SegmentFrame, SegmentStart
from agent.settings import StreamSettings
from agent.stream.ring import ring_capacity_bytes
from agent.stream.wire import TranscriptEvent, Transcription, parse_transcription

_END_SLACK_S = 0.5
"""Seconds a result's end time may exceed its chunk's length (server rounding) and still belong to it."""


def wav_bytes(pcm: bytes) -> bytes:
    """A complete RIFF/WAVE file: 16 kHz mono s16le."""
    return wav_header(len(pcm)) + pcm


@dataclass(slots=True)
class Chunk:
    index: int
    """Number of the chunk in the visit, from 0."""
    start: int
    """Timeline index of the first sample."""
    pcm: bytes
    sends: int = 0
    """Times written on any connection."""
    sent_at: float | None = None
    """Monotonic seconds when written on the current connection; None: not yet written on it."""
    accepted: list[tuple[str, float | None]] = field(default_factory=list)
    """Results accepted for this chunk: (text, timestamp)."""

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (SAMPLE_RATE * BYTES_PER_SAMPLE)


class Chunker:
    """Gate events in, whole utterances (``start``, ``pcm``) out."""

    def __init__(self, max_chunk_s: float) -> None:
        self._max_bytes = max(BYTES_PER_SAMPLE, int(max_chunk_s * SAMPLE_RATE) * BYTES_PER_SAMPLE)
        self._start = 0
        self._end = 0
        self._parts: list[bytes] = []
        self._size = 0

    def push(self, event: GateEvent | Frame) -> list[tuple[int, bytes]]:
        if isinstance(event, SegmentStart):
            return self.flush()
        if isinstance(event, SegmentEnd):
            return self.flush()
        frame = event.frame if isinstance(event, SegmentFrame) else event
        out = self.flush() if self._parts and frame.start != self._end else []
        if self._parts and self._size + len(frame.pcm) > self._max_bytes:
            out += self.flush()
        if not self._parts:
            self._start = frame.start
        self._parts.append(frame.pcm)
        self._size += len(frame.pcm)
        self._end = frame.end
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        if not self._parts:
            return []
        out = [(self._start, b"".join(self._parts))]
        self._parts, self._size = [], 0
        return out


@dataclass(slots=True)
class BasicStats:
    chunks: int = 0
    sent: int = 0
    resent: int = 0
    transcribed: int = 0
    timed_out: int = 0
    duplicates_dropped: int = 0
    unmatched: int = 0
    """Results that arrived while no chunk was outstanding (ignored)."""
    dropped_chunks: int = 0
    dropped_samples: int = 0


class BasicOutbox:
    def __init__(self, settings: StreamSettings) -> None:
        self._chunker = Chunker(settings.basic_max_chunk_s)
        self._timeout_s = settings.basic_chunk_timeout_s
        self._wav = settings.basic_format == "wav"
        self._capacity = ring_capacity_bytes(settings)
        self._chunks: deque[Chunk] = deque()
        self._bytes = 0
        self._next_index = 0
        self._last_done: Chunk | None = None
        self.stats = BasicStats()

    def push(self, event: GateEvent | Frame) -> None:
        self._add(self._chunker.push(event))

    def flush(self) -> None:
        """Close the chunk being built (the visit ends)."""
        self._add(self._chunker.flush())

    def _add(self, closed: Iterable[tuple[int, bytes]]) -> None:
        for start, pcm in closed:
            self._chunks.append(Chunk(self._next_index, start, pcm))
            self._next_index += 1
            self._bytes += len(pcm)
            self.stats.chunks += 1
        while self._bytes > self._capacity and self._chunks:
            dropped = self._chunks.popleft()
            self._bytes -= len(dropped.pcm)
            self.stats.dropped_chunks += 1
            self.stats.dropped_samples += len(dropped.pcm) // BYTES_PER_SAMPLE

    @property
    def drained(self) -> bool:
        return not self._chunks

    @property
    def held_bytes(self) -> int:
        """PCM bytes of the chunks not done yet."""
        return self._bytes

    @property
    def outstanding(self) -> list[Chunk]:
        return [c for c in self._chunks if c.sent_at is not None]

    def on_connected(self) -> None:
        """A new connection: every chunk not done is to be (re)sent, oldest first."""
        for chunk in self._chunks:
            chunk.sent_at = None

    def next_chunk(self) -> Chunk | None:
        return next((c for c in self._chunks if c.sent_at is None), None)

    def payload(self, chunk: Chunk) -> bytes:
        return wav_bytes(chunk.pcm) if self._wav else chunk.pcm

    def mark_sent(self, chunk: Chunk, now: float) -> None:
        chunk.sent_at = now
        chunk.sends += 1
        if chunk.sends == 1:
            self.stats.sent += 1
        else:
            self.stats.resent += 1

    def on_transcription(self, msg: Transcription) -> TranscriptEvent | None:
        """Attribute a result to its chunk; None if it is a repeat (dropped) or matches nothing outstanding."""
        outstanding = self.outstanding
        if not outstanding:
            self.stats.unmatched += 1
            return None
        if self._is_repeat(msg):
            self.stats.duplicates_dropped += 1
            return None
        end = parse_transcription(msg).end
        fits = [c for c in outstanding if end is None or end <= c.seconds + _END_SLACK_S]
        # Nothing fits: times on another basis (a server timing from the session's start) or an invented result;
        # either way the in-order rule gives it to the oldest chunk, and one result never completes several.
        chunk = fits[0] if fits else outstanding[0]
        for skipped in outstanding[: outstanding.index(chunk)]:
            self._done(skipped, transcribed=False)  # too short for the result: it held no speech
        chunk.accepted.append((msg.text, msg.timestamp))
        self._done(chunk, transcribed=True)
        return parse_transcription(msg, offset_s=chunk.start / SAMPLE_RATE, chunk=chunk.index)

    def _is_repeat(self, msg: Transcription) -> bool:
        """The previous chunk's result again: the same message (same ``timestamp``, which MediSync sets when it
        receives a chunk) sent twice, or the same text when that chunk was sent more than once (a resend the
        server had answered already)."""
        prev = self._last_done
        if prev is None:
            return False
        if msg.timestamp is not None and (msg.text, msg.timestamp) in prev.accepted:
            return True
        return prev.sends > 1 and any(text == msg.text for text, _ in prev.accepted)

    def expire(self, now: float) -> int:
        """Chunks outstanding for longer than the timeout are done (no speech); returns how many."""
        expired = [c for c in self.outstanding if c.sent_at is not None and now - c.sent_at >= self._timeout_s]
        for chunk in expired:
            self._done(chunk, transcribed=False)
        return len(expired)

    def next_deadline(self) -> float | None:
        times = [c.sent_at for c in self._chunks if c.sent_at is not None]
        return min(times) + self._timeout_s if times else None

    def _done(self, chunk: Chunk, *, transcribed: bool) -> None:
        self._chunks.remove(chunk)
        self._bytes -= len(chunk.pcm)
        self._last_done = chunk
        if transcribed:
            self.stats.transcribed += 1
        else:
            self.stats.timed_out += 1
