"""The one place that knows the RIFF/WAVE layout: the header the archive writes, and a walk over a file's chunks.

The archive writer (:mod:`agent.archive.wav`), repair (:mod:`agent.archive.repair`), the content sniffer
(:mod:`agent.archive.audio_format`), the WAV source reader (:mod:`agent.audio.wavfile`) and the basic-mode stream's
WAV chunks (:mod:`agent.stream.basic`) all use these.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent import SAMPLE_RATE

HEADER_BYTES = 44
"""Length of the canonical header :func:`wav_header` writes (the ``data`` chunk's body starts here)."""
UNKNOWN_SIZE = 0xFFFFFFFF
"""A size a streaming writer leaves when it cannot seek back: "to the end of the file"."""


def wav_header(data_bytes: int, *, sample_rate: int = SAMPLE_RATE, channels: int = 1, bits: int = 16,
               riff_bytes: int | None = None) -> bytes:  # fmt: skip
    """The canonical 44-byte PCM WAV header for ``data_bytes`` of sample data."""
    block_align = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes if riff_bytes is None else riff_bytes, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits,
        b"data", data_bytes,
    )  # fmt: skip


STREAMING_HEADER = wav_header(UNKNOWN_SIZE, riff_bytes=UNKNOWN_SIZE)
"""What a sealed visit archive starts with: its sizes are not known when chunk 0 is sealed (and a sealed chunk is
never rewritten with other content), so readers restore the exact header from the file's length."""

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, size) -> bytes`` (fewer at the end of the file)."""


@dataclass(frozen=True, slots=True)
class RiffChunk:
    chunk_id: bytes
    size: int
    """Declared size of the body."""
    body: int
    """File offset of the body."""


def is_riff_wave(head: bytes) -> bool:
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def riff_chunks(read_at: ReadAt, *, limit: int = 64, end: int | None = None) -> Iterator[RiffChunk]:
    """The chunks after the 12-byte RIFF/WAVE preamble, in order, until one is cut off, ``limit`` chunks were seen,
    or (given ``end``) the next one would start at or past ``end``. The walk stops at ``data`` too: what follows
    it is the samples (and its size may be a placeholder)."""
    offset = 12
    for _ in range(limit):
        if end is not None and offset + 8 > end:
            return
        header = read_at(offset, 8)
        if len(header) < 8:
            return
        chunk_id, size = struct.unpack("<4sI", header)
        yield RiffChunk(chunk_id, size, offset + 8)
        if chunk_id == b"data":
            return
        offset += 8 + size + (size & 1)


def bytes_reader(data: bytes) -> ReadAt:
    return lambda offset, size: data[offset : offset + size]
