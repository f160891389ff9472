"""Repair a ``.partial`` WAV left behind by kill -9 or a power loss, and rename it to its final name.

The header of a ``.partial`` is only as fresh as the writer's last periodic rewrite (or says 0, or is garbage if the
crash hit mid-update), so repair never trusts its sizes: it finds the ``data`` chunk, takes every whole sample
frame actually on disk after it, truncates a torn trailing sample, writes the sizes into the header, fsyncs and
renames atomically to the name without ``.partial``. The format fields (rate, channels, bits) must be sane PCM,
otherwise the file is not ours and is left untouched. A file whose writer is alive (it holds the writer's
``flock``) is refused: repair is only for files whose process is gone.

A visit archive of the agent's own (``canonical=True``) always starts with the writer's 44-byte header for 16 kHz
mono 16-bit; if a power cut tore that header, repair writes it anew instead of giving the audio up.

A sealed (age) recording is repaired by :mod:`agent.archive.sealed_repair` with the device key: every chunk that
authenticates is kept, the loss is reported (:attr:`RepairResult.loss`). :func:`repair_recording` does the same for
a finished sealed file that turned out damaged (an upload refused it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.age import Identity
from agent.archive.sealed import PlainDigest, is_sealed_bytes, open_plain, plain_digest, require_identity
from agent.archive.sealed_repair import repair_sealed
from agent.archive.storage import describe_os_error, fsync_directory
from agent.archive.wav import PARTIAL_SUFFIX
from agent.archive.wavfmt import HEADER_BYTES, bytes_reader, is_riff_wave, riff_chunks, wav_header
from agent.errors import AgentError, ArchiveError

log = logging.getLogger(__name__)

_MAX_HEADER_SCAN = 64 * 1024
"""Bytes searched for the ``data`` chunk; our writer puts it at 36, other writers add small chunks before it."""


@dataclass(frozen=True, slots=True)
class RepairResult:
    partial: Path
    """The ``.partial`` that was repaired (no longer exists)."""
    final: Path
    """The complete WAV it became."""
    frames: int
    """Sample frames (per channel) the repaired WAV holds."""
    sample_rate: int
    """Hz, from the header."""
    dropped_bytes: int
    """Bytes of a torn trailing sample frame that were cut off."""
    loss: str = ""
    """What a sealed recording's repair could not keep (damaged or unfinished chunks), for a person; empty if
    nothing."""
    digest: PlainDigest | None = None
    """Size and SHA-256 of what uploading the repaired file sends (sealed files: taken while checking them)."""

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True, slots=True)
class RepairFailure:
    partial: Path
    reason: str
    """One line for a person (from the ArchiveError)."""


@dataclass(frozen=True, slots=True)
class _Layout:
    sample_rate: int
    block_align: int
    data_offset: int
    """File offset of the first sample byte."""


def final_path_of(partial: Path) -> Path:
    if not partial.name.endswith(PARTIAL_SUFFIX) or partial.name == PARTIAL_SUFFIX:
        raise ArchiveError(f"cannot repair {partial}: the name does not end in {PARTIAL_SUFFIX}")
    return partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])


def parse_layout(head: bytes, name: str) -> _Layout:
    """Find format and data offset in the first bytes of a WAV; ArchiveError if it is not a PCM WAV."""
    if not head:
        raise ArchiveError(f"cannot repair {name}: the file is empty (nothing reached the disk)")
    if not is_riff_wave(head):
        raise ArchiveError(f"cannot repair {name}: not a partial WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    for chunk in riff_chunks(bytes_reader(head), end=len(head)):
        if chunk.chunk_id == b"data":
            if fmt is None:
                raise ArchiveError(f"cannot repair {name}: data chunk before the format chunk")
            return _checked_layout(fmt, chunk.body, name)
        if chunk.chunk_id == b"fmt " and chunk.size >= 16 and chunk.body + 16 <= len(head):
            encoding, channels, rate, _byte_rate, block_align = struct.unpack_from("<HHIIH", head, chunk.body)
            fmt = (encoding, channels, rate, block_align)
    raise ArchiveError(f"cannot repair {name}: not a partial WAV file (no data chunk in the header)")


def _checked_layout(fmt: tuple[int, int, int, int], data_offset: int, name: str) -> _Layout:
    encoding, channels, rate, block_align = fmt
    if encoding not in (1, 0xFFFE) or not 1 <= channels <= 32 or not 1000 <= rate <= 768_000 or block_align == 0:
        raise ArchiveError(f"cannot repair {name}: unsupported or corrupt WAV format header")
    return _Layout(sample_rate=rate, block_align=block_align, data_offset=data_offset)


CANONICAL = _Layout(sample_rate=SAMPLE_RATE, block_align=BYTES_PER_SAMPLE, data_offset=HEADER_BYTES)
"""What the agent's own visit archive writer puts in every header (agent.archive.wav.wav_header)."""


def repair_partial(partial: Path | str, *, canonical: bool = False, identity: Identity | None = None) -> RepairResult:
    """Repair one ``.partial`` into its final WAV (see module doc). Raises ArchiveError with a one-line reason.

    ``canonical``: the file is a visit archive the agent wrote; a torn header is replaced by the writer's own.
    ``identity``: the device key, needed for a sealed file (WrongKeyError without it).
    """
    partial = Path(partial)
    final = final_path_of(partial)
    if final.exists():
        raise ArchiveError(f"cannot repair {partial}: {final.name} exists already (move one of them away)")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArchiveError(f"cannot repair {partial}: no such file") from None
    except OSError as exc:
        raise ArchiveError(f"cannot repair {partial}: {describe_os_error(exc)}") from exc
    try:
        _lock_or_raise(fd, partial)
        try:
            if is_sealed_bytes(os.pread(fd, 64, 0)):
                result = _repair_sealed_file(fd, partial, final, require_identity(identity, f"repairing {partial}"))
            else:
                result = _repair_open_file(fd, partial, final, canonical=canonical)
        except OSError as exc:
            raise ArchiveError(f"cannot repair {partial}: {describe_os_error(exc)}") from exc
        try:
            os.replace(partial, final)
            fsync_directory(final.parent)
        except OSError as exc:
            raise ArchiveError(f"cannot rename {partial.name} to {final.name}: {describe_os_error(exc)}") from exc
    finally:
        os.close(fd)  # releases the lock, after the rename
    return result


def repair_recording(path: Path, identity: Identity) -> RepairResult:
    """Repair a finished sealed recording in place (damaged chunks become silence); ArchiveError if it is not
    sealed or is held by a running process."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArchiveError(f"cannot repair {path}: {describe_os_error(exc)}") from exc
    try:
        _lock_or_raise(fd, path)
        if not is_sealed_bytes(os.pread(fd, 64, 0)):
            raise ArchiveError(f"cannot repair {path}: only .partial files (and sealed recordings) are repaired")
        try:
            return _repair_sealed_file(fd, path, path, identity)
        except OSError as exc:
            raise ArchiveError(f"cannot repair {path}: {describe_os_error(exc)}") from exc
    finally:
        os.close(fd)


def _repair_sealed_file(fd: int, path: Path, final: Path, identity: Identity) -> RepairResult:
    repair = repair_sealed(fd, path, identity)
    layout = CANONICAL
    if repair.plain_bytes:
        with open_plain(path, identity) as reader:
            try:
                layout = parse_layout(reader.read(_MAX_HEADER_SCAN), str(path))
            except ArchiveError:
                layout = CANONICAL  # a chunk 0 replaced by silence starts with the writer's own header anyway
    frames = max(0, repair.plain_bytes - layout.data_offset) // layout.block_align
    return RepairResult(partial=path, final=final, frames=frames, sample_rate=layout.sample_rate, dropped_bytes=0,
                        loss=repair.describe_loss(), digest=plain_digest(path, identity))  # fmt: skip


def _lock_or_raise(fd: int, partial: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ArchiveError(f"cannot repair {partial}: it is being recorded right now by a running process") from None


def is_being_recorded(partial: Path) -> bool:
    """True if a live writer holds the file's ``flock`` (a ``.partial``, a visit journal); a crashed writer's lock
    is gone with its process."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _repair_open_file(fd: int, partial: Path, final: Path, *, canonical: bool) -> RepairResult:
    size = os.fstat(fd).st_size
    try:
        layout = parse_layout(os.pread(fd, _MAX_HEADER_SCAN, 0), str(partial))
    except ArchiveError:
        if not canonical or size < HEADER_BYTES:
            raise
        log.warning("%s: header torn; writing the archive writer's own header anew", partial.name)
        layout = CANONICAL
        os.pwrite(fd, wav_header(0), 0)
    on_disk = max(0, size - layout.data_offset)
    data_bytes = on_disk - on_disk % layout.block_align
    if data_bytes + layout.data_offset > 0xFFFFFFFF:
        raise ArchiveError(f"cannot repair {partial}: larger than a WAV file can be (4 GiB)")
    if size != layout.data_offset + data_bytes:
        os.ftruncate(fd, layout.data_offset + data_bytes)
    os.pwrite(fd, struct.pack("<I", layout.data_offset - 8 + data_bytes), 4)
    os.pwrite(fd, struct.pack("<I", data_bytes), layout.data_offset - 4)
    os.fsync(fd)
    return RepairResult(
        partial=partial,
        final=final,
        frames=data_bytes // layout.block_align,
        sample_rate=layout.sample_rate,
        dropped_bytes=max(0, size - layout.data_offset - data_bytes),
    )


def find_partials(directory: Path | str) -> list[Path]:
    """The ``.partial`` files in ``directory`` (not recursive), sorted by name."""
    directory = Path(directory)
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        raise ArchiveError(f"cannot look for unfinished recordings: folder {directory} does not exist") from None
    except OSError as exc:
        raise ArchiveError(f"cannot look for unfinished recordings in {directory}: {describe_os_error(exc)}") from exc
    return [p for p in entries if p.name.endswith(PARTIAL_SUFFIX) and p.name != PARTIAL_SUFFIX and p.is_file()]


def repair_all(directory: Path | str, *, identity: Identity | None = None) -> list[RepairResult | RepairFailure]:
    """Repair every ``.partial`` in ``directory`` (on the next start after a crash); one bad file never stops the rest.

    Files still being recorded by a live process (they hold the writer's lock) are skipped. Returns one outcome
    per repaired or failed file, in name order. Raises ArchiveError only if the folder cannot be listed.
    """
    outcomes: list[RepairResult | RepairFailure] = []
    for partial in find_partials(directory):
        if is_being_recorded(partial):
            log.info("%s is being recorded by a running process: left alone", partial.name)
            continue
        try:
            result = repair_partial(partial, identity=identity)
        except AgentError as exc:
            log.warning("%s", exc)
            outcomes.append(RepairFailure(partial=partial, reason=str(exc)))
        else:
            loss = f" ({result.loss})" if result.loss else ""
            log.info("repaired %s: %.2f s%s", result.final.name, result.seconds, loss)
            outcomes.append(result)
    return outcomes
