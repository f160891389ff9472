"""Repair of sealed recordings: a crash's unfinished file, or a damaged one (flipped, cut or reordered chunks).

Every chunk position is checked against the file's key. Then:

* The intact chunks form a prefix (a crash: the tail was never sealed, or a write was torn): the last intact
  chunk is sealed again as the final one, in place (same plaintext, same counter, the final flag: a nonce the
  file never used), and the rest is cut. No free space needed.
* A damaged chunk lies before an intact one (tampering, a bad block): the intact chunks are kept in a new sealed
  file with a fresh file key, each damaged chunk replaced by silence of the same length so the visit's timeline
  (transcript times) still holds; the new file replaces the old one atomically. Sealing other content under the
  old key's nonces is never done (it would leak both plaintexts).

Either way the result says what was lost, and a file whose header is damaged cannot be repaired at all: the
visit's file key is wrapped there and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive import age
from agent.archive.age import CHUNK, SEALED_CHUNK, Identity
from agent.archive.sealed import SealedAppender, SealedFile, chunk_seconds
from agent.archive.storage import atomic_private_file
from agent.archive.wavfmt import HEADER_BYTES, STREAMING_HEADER


@dataclass(frozen=True, slots=True)
class SealedRepair:
    """What repairing a sealed file did."""

    plain_bytes: int
    """Plaintext bytes the repaired file holds (WAV header included)."""
    chunks: int
    replaced: tuple[int, ...] = field(default=())
    """Damaged chunks (0-based) replaced by silence."""
    moved: tuple[int, ...] = field(default=())
    """Chunks found at another position (cut or swapped chunks) and put back at their place."""
    cut_bytes: int = 0
    """Bytes after the last intact chunk that were cut (an unfinished or damaged end)."""
    already_whole: bool = False
    """Nothing to repair: the file was complete and every chunk authenticates."""

    def describe_loss(self) -> str:
        parts = []
        for index in self.replaced:
            start, end = chunk_seconds(index)
            parts.append(f"chunk {index + 1} (about {start:.2f}-{end:.2f} s) damaged, silence in its place")
        if self.moved:
            parts.append(f"{len(self.moved)} chunk(s) found out of place, put back in order")
        if self.cut_bytes:
            lost = max(0, self.cut_bytes - age.TAG) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
            parts.append(f"cut {self.cut_bytes} bytes of an unfinished or damaged end (about {lost:.2f} s)")
        return "; ".join(parts)


REORDER_WINDOW = 4
"""A chunk that fails at its position is tried as the chunks up to this many positions before and after it: a cut
or swapped chunk is found and put back at its place in the timeline."""


def repair_sealed(fd: int, path: Path, identity: Identity) -> SealedRepair:
    """Repair the sealed file open (read-write) on ``fd`` in place or by replacing ``path``; see module doc."""
    sealed = SealedFile.open(fd, path.name, identity)
    payload_bytes = os.fstat(fd).st_size - sealed.data_start
    positions = -(-payload_bytes // SEALED_CHUNK) if payload_bytes > 0 else 0
    found: dict[int, tuple[int, bool]] = {}
    """counter -> (position, final flag)"""
    for position in range(positions):
        hit = _identify(sealed, position)
        if hit is not None and hit[0] not in found:
            found[hit[0]] = (position, hit[1])
    if not found:
        _empty_payload(sealed)
        return SealedRepair(plain_bytes=0, chunks=1, cut_bytes=max(0, payload_bytes))
    finals = [counter for counter, (_, final) in found.items() if final]
    last = min(finals) if finals else max(found)
    if all(found.get(c, (-1, False))[0] == c for c in range(last + 1)):  # intact prefix: a crash, a cut-off end
        kept_bytes = _end_of(sealed, last) - sealed.data_start
        whole = bool(finals) and last == finals[0] and kept_bytes == payload_bytes
        if not whole:
            _finish_in_place(sealed, last, found[last][1])
        return SealedRepair(_plain_of(sealed, last), last + 1, cut_bytes=payload_bytes - kept_bytes,
                            already_whole=whole)  # fmt: skip
    replaced = tuple(c for c in range(last + 1) if c not in found)
    moved = tuple(c for c in range(last + 1) if c in found and found[c][0] != c)
    used_end = max(_end_of(sealed, p) for c, (p, _) in found.items() if c <= last) - sealed.data_start
    plain = _rebuild(sealed, path, identity, last, found)
    return SealedRepair(plain, last + 1, replaced=replaced, moved=moved, cut_bytes=payload_bytes - used_end)


def _identify(sealed: SealedFile, position: int) -> tuple[int, bool] | None:
    """(counter, final) of the chunk at ``position``: its own counter first, then its neighbours'."""
    data = os.pread(sealed.fd, SEALED_CHUNK, sealed.data_start + position * SEALED_CHUNK)
    candidates = [position] + [position + d for k in range(1, REORDER_WINDOW + 1) for d in (-k, k) if position + d >= 0]
    for counter in candidates:
        for final in (False, True):
            try:
                sealed.payload.open(counter, data, last=final)
            except age.ChunkError:
                continue
            return counter, final
    return None


def _end_of(sealed: SealedFile, position: int) -> int:
    """File offset after the chunk at ``position`` (the last one may be short)."""
    start = sealed.data_start + position * SEALED_CHUNK
    return min(os.fstat(sealed.fd).st_size, start + SEALED_CHUNK)


def _plain_of(sealed: SealedFile, last: int) -> int:
    """Plaintext bytes of a file whose final chunk ``last`` now ends the file."""
    return _end_of(sealed, last) - sealed.data_start - (last + 1) * age.TAG


def _finish_in_place(sealed: SealedFile, last: int, is_final: bool) -> None:
    offset = sealed.data_start + last * SEALED_CHUNK
    if not is_final:
        plain = sealed.chunk(last, last=False)
        # Same plaintext and counter, the final flag: a nonce this file never used. Nothing else is re-sealed.
        _pwrite(sealed.fd, sealed.payload.seal(last, plain, last=True), offset)
        os.ftruncate(sealed.fd, offset + SEALED_CHUNK)
    else:
        size = os.fstat(sealed.fd).st_size
        os.ftruncate(sealed.fd, min(size, offset + SEALED_CHUNK))
    os.fsync(sealed.fd)


def _empty_payload(sealed: SealedFile) -> None:
    """No chunk survived: a complete file of no audio (recovery then discards it, like an empty WAV)."""
    os.ftruncate(sealed.fd, sealed.data_start)
    empty = sealed.payload.seal(0, b"", last=True)
    _pwrite(sealed.fd, empty, sealed.data_start)
    os.fsync(sealed.fd)


def _rebuild(sealed: SealedFile, path: Path, identity: Identity, last: int, found: dict[int, tuple[int, bool]]) -> int:
    """A new sealed file (fresh file key) of chunks 0..last in counter order, missing ones as silence; replaces
    ``path``. Returns its plaintext bytes."""
    with atomic_private_file(path) as fd:  # replaces ``path`` only once it is complete and durable
        out = SealedAppender(fd, identity.recipient)
        out.begin()
        for counter in range(last + 1):
            if counter not in found:
                out.append(STREAMING_HEADER + bytes(CHUNK - HEADER_BYTES) if counter == 0 else bytes(CHUNK))
                continue
            position, final = found[counter]
            data = os.pread(sealed.fd, SEALED_CHUNK, sealed.data_start + position * SEALED_CHUNK)
            out.append(sealed.payload.open(counter, data, last=final))
        out.finish()
    return out.plain_bytes


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
