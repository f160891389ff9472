"""Durable per-session audio log for resume mode: what the server has stored is what it has acknowledged.

The log is a sequence of records ``<kind:1><a:u64><b:u64><length:u32><payload>``:
``F`` frames (a = seq, b = timeline start, payload = PCM) and ``G`` gaps (a = start, b = end, payload = reason).
Each append is written, flushed and fsynced before the caller acknowledges it. Opening a log re-reads it, so
``next_seq`` is right after a restart; a torn record at the tail (kill -9 mid-write) was never acknowledged and is cut.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from agent.archive.storage import open_private_append

HEADER = struct.Struct("<cQQI")
FRAME, GAP = b"F", b"G"


class FrameVerdict(Enum):
    STORE = "store"
    DUPLICATE = "duplicate"
    FUTURE = "future"


def judge_seq(seq: int, next_seq: int) -> FrameVerdict:
    """Resume-mode rule: below the stored count is a duplicate, above it a protocol error (close 4409)."""
    if seq < next_seq:
        return FrameVerdict.DUPLICATE
    if seq > next_seq:
        return FrameVerdict.FUTURE
    return FrameVerdict.STORE


@dataclass(frozen=True)
class Gap:
    start: int
    end: int
    reason: str


@dataclass
class SessionAudio:
    """What a resume-mode session holds: contiguous PCM runs on the visit timeline, and announced gaps."""

    runs: list[tuple[int, bytes]] = field(default_factory=list)
    """(timeline start index, s16le PCM) per run of frames whose samples follow each other without a jump."""
    gaps: list[Gap] = field(default_factory=list)
    frames_stored: int = 0
    next_seq: int = 0
    frames_received: int = 0
    """Binary frames that arrived (stored + duplicates + refused) since this server process started."""
    duplicates_ignored: int = 0
    closed_last_seq: int | None = None

    def pcm_at(self, start: int, samples: int) -> bytes:
        """PCM of the stored run covering ``[start, start + samples)`` (tests compare sample for sample)."""
        for run_start, pcm in self.runs:
            offset = (start - run_start) * 2
            if offset >= 0 and offset + samples * 2 <= len(pcm):
                return pcm[offset: offset + samples * 2]
        raise KeyError(f"no stored run covers samples {start}..{start + samples}")


class SessionLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self.next_seq = 0
        self.end_sample = 0
        """Timeline index just after the last stored sample."""
        valid = self._scan()
        self._file = os.fdopen(open_private_append(path), "ab")  # held open for the session's life
        if self._file.tell() != valid:
            self._file.truncate(valid)
            self._file.seek(valid)

    def _scan(self) -> int:
        if not self.path.exists():
            return 0
        valid = 0
        with open(self.path, "rb") as log:
            while True:
                head = log.read(HEADER.size)
                if len(head) < HEADER.size:
                    return valid
                kind, a, b, length = HEADER.unpack(head)
                if len(log.read(length)) < length:
                    return valid
                if kind == FRAME:
                    self.next_seq, self.end_sample = a + 1, b + length // 2
                valid += HEADER.size + length

    def _append(self, kind: bytes, a: int, b: int, payload: bytes) -> None:
        self._file.write(HEADER.pack(kind, a, b, len(payload)) + payload)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def append_frame(self, seq: int, start: int, pcm: bytes) -> None:
        if seq != self.next_seq:
            raise ValueError(f"frame {seq} out of order (next is {self.next_seq})")
        self._append(FRAME, seq, start, pcm)
        self.next_seq, self.end_sample = seq + 1, start + len(pcm) // 2

    def append_gap(self, start: int, end: int, reason: str) -> None:
        self._append(GAP, start, end, reason.encode("utf-8", "replace"))

    def close(self) -> None:
        self._file.close()


def read_session_audio(path: Path) -> SessionAudio:
    """Everything a session log holds, frames merged into runs where their samples are contiguous."""
    audio = SessionAudio()
    if not path.exists():
        return audio
    runs: list[tuple[int, bytearray]] = []
    with open(path, "rb") as log:
        while True:
            head = log.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            kind, a, b, length = HEADER.unpack(head)
            payload = log.read(length)
            if len(payload) < length:
                break
            if kind == GAP:
                audio.gaps.append(Gap(a, b, payload.decode("utf-8", "replace")))
                continue
            audio.frames_stored += 1
            audio.next_seq = a + 1
            if runs and runs[-1][0] + len(runs[-1][1]) // 2 == b:
                runs[-1][1].extend(payload)
            else:
                runs.append((b, bytearray(payload)))
    audio.runs = [(start, bytes(pcm)) for start, pcm in runs]
    return audio
