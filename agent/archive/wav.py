"""Crash-safe incremental WAV writer for a visit's timeline (16 kHz mono s16le).

This is the plaintext writer (``archive.encrypt = false``, ``record --plaintext``). Visits are written by its sealed
variant, :class:`agent.archive.sealed_writer.SealedArchiveWriter` (same timeline, durability and disk-full policy,
over an age file: see there for what differs). The hooks both share are marked below.

While recording, audio goes to ``<final>.partial``; :meth:`WavArchiveWriter.finish` seals it and renames it to the
final name with ``os.replace`` (atomic: a reader sees either the ``.partial`` or the complete WAV, never half).

Durability policy (what a crash can cost):

* Every frame is handed to the kernel with ``os.write`` as soon as it arrives (one call per block of frames);
  there is no user-space buffer, the page cache is the buffer. A ``kill -9`` of the agent therefore loses nothing
  it had passed to the writer.
* The RIFF and data sizes in the header are rewritten (one ``pwrite`` of 44 bytes) every
  ``ArchiveSettings.header_interval_s`` of audio, so the ``.partial`` is itself a valid WAV of (nearly) the whole
  visit at any time; :mod:`agent.archive.repair` fixes the sizes from the file length after a crash anyway.
* ``fdatasync`` runs every ``ArchiveSettings.fsync_interval_s`` of audio (right after a header rewrite when the
  intervals coincide), so a power loss costs at most about that much audio. The file and its folder entry are
  fsynced at creation, and the folder again after the final rename, so the name survives a power loss too.
  The fsync runs on the calling (DSP) thread, whose hand-off ring absorbs its latency; with ``background_sync``
  (the writer driven by an event loop, which must not block) it runs on one worker thread instead, in order, and
  a failure is handled like a failed write at the next write or at ``finish``.
* Disk full (ENOSPC), quota, read-only remount or I/O error: the writer truncates the file to the last whole sample
  that reached the disk and fixes the header (neither needs free space), fsyncs and renames it to the final name
  ("sealed"), then raises :class:`~agent.errors.ArchiveError` naming the file and how much audio it holds. Nothing
  already written is lost and the result is a complete, valid WAV that the upload can take. (A visit must not end
  there: :class:`agent.archive.resilient.ResilientArchiveWriter` stops writing instead, and resumes.)

While recording, the writer holds an exclusive ``flock`` on the ``.partial`` (released by the kernel when the
process dies, even by kill -9), so a repair running at the same time (another ``record`` starting in the same
folder, or the upload queue looking at a visit still being recorded) skips a file that is still being written.
The rename to the final name happens while the lock is still held.

Timeline: the archive holds every frame, ungated. A frame whose ``start`` lies beyond the current position (the
caller lost audio: overflow, device loss) is preceded by silence, so archive time always equals timeline time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NoReturn, Self

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.sealed import PlainDigest
from agent.archive.storage import FILE_MODE, describe_os_error, fsync_directory, write_all
from agent.archive.wavfmt import HEADER_BYTES, wav_header
from agent.audio.types import Frame
from agent.errors import ArchiveError
from agent.settings import ArchiveSettings

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_SILENCE_CHUNK = bytes(SAMPLE_RATE * BYTES_PER_SAMPLE)
__all__ = ["FILE_MODE", "HEADER_BYTES", "PARTIAL_SUFFIX", "WavArchiveWriter", "partial_path", "wav_header"]
"""The header and file helpers live in agent.archive.wavfmt and agent.archive.storage (re-exported for callers)."""

def partial_path(final: Path) -> Path:
    """Where ``final`` is written while recording."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


class WavArchiveWriter:
    """Writes one visit's timeline to ``<final>.partial`` and renames it to ``final`` when finished.

    Not thread-safe: one thread writes (the DSP thread). Use :meth:`create`, then :meth:`write_frame` per frame and
    :meth:`finish` at the end; as a context manager, leaving the block without ``finish`` (an exception) seals
    the file under its final name so nothing recorded is lost.
    """

    def __init__(self, final: Path, fd: int, settings: ArchiveSettings, *, background_sync: bool = False) -> None:
        self.final = final
        self.partial = partial_path(final)
        self._fd: int | None = fd
        self._data_bytes = 0
        self._header_every = max(1, round(settings.header_interval_s * SAMPLE_RATE)) * BYTES_PER_SAMPLE
        self._sync_every = max(1, round(settings.fsync_interval_s * SAMPLE_RATE)) * BYTES_PER_SAMPLE
        self._next_header = self._header_every
        self._next_sync = self._sync_every
        self.header_rewrites = 0
        """How many times the header was rewritten while recording (for tests and metrics)."""
        self.fsyncs = 0
        """How many data fsyncs ran (or were started, with ``background_sync``) while recording."""
        self._sync_pool = ThreadPoolExecutor(1, "archive-fsync") if background_sync else None
        self._syncs: deque[Future[None]] = deque()
        self.digest: PlainDigest | None = None
        """Size and SHA-256 of what uploading the finished file sends, when the writer knows them (a sealed
        archive reads its chunks back at the end); None: hash the file."""

    @classmethod
    def create(cls, final: Path | str, settings: ArchiveSettings, *, overwrite: bool = False,
               background_sync: bool = False, **options: Any) -> Self:  # fmt: skip
        """Create ``<final>.partial`` with an empty WAV header, durable (file and folder entry fsynced).

        Raises ArchiveError if the folder is missing or not writable, if a ``.partial`` of the same name exists
        (an earlier crash: repair it first) or if ``final`` exists and ``overwrite`` is false. ``options`` go to
        the constructor of a subclass.
        """
        final = Path(final)
        folder = final.parent
        if not folder.is_dir():
            raise ArchiveError(f"cannot record to {final}: output folder {folder} does not exist")
        if final.exists() and not overwrite:
            raise ArchiveError(f"cannot record to {final}: the file exists (choose another name or overwrite it)")
        partial = partial_path(final)
        try:
            # Read and write: a sealed archive reads its own chunks back when it is finished (the upload digest).
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            raise ArchiveError(
                f"cannot record to {final}: {partial.name} exists from an earlier crash (run 'medisync-agent repair')"
            ) from None
        except OSError as exc:
            raise ArchiveError(f"cannot write to output folder {folder}: {describe_os_error(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # marks it as being recorded: repair leaves it alone (see repair.py)
            writer = cls(final, fd, settings, background_sync=background_sync, **options)
            writer._begin()
            os.fsync(fd)
            fsync_directory(folder)
        except OSError as exc:
            os.close(fd)
            _remove_quietly(partial)
            raise ArchiveError(f"cannot write to output folder {folder}: {describe_os_error(exc)}") from exc
        return writer

    @property
    def position(self) -> int:
        """Timeline index one past the last sample written (= samples in the archive)."""
        return self.archived_samples

    @property
    def archived_samples(self) -> int:
        """Samples in the archive file."""
        return self._data_bytes // BYTES_PER_SAMPLE

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write_frame(self, frame: Frame) -> None:
        """Append ``frame``; silence first if it starts after the current position (a gap in the timeline)."""
        self.write_frames([frame])

    def write_frames(self, frames: Sequence[Frame]) -> None:
        """Append ``frames`` (in timeline order) like :meth:`write_frame` each, with one ``os.write`` per run of
        contiguous frames instead of one per frame: per-call and per-syscall cost is what a live capture pays for."""
        self._require_open()
        if not frames:
            return
        try:
            self._write_run(frames)
        except OSError as exc:
            self._fault(exc, frames[-1].end)

    def write_silence(self, samples: int) -> None:
        """Append ``samples`` of silence (audio the caller lost), keeping archive time equal to timeline time."""
        self._require_open()
        try:
            self._append_silence(samples)
        except OSError as exc:
            self._fault(exc, self.archived_samples + samples)

    def finish(self) -> Path:
        """Write the final header, fsync, rename to the final name atomically, fsync the folder. Returns it."""
        fd = self._require_open()
        self._seal_final()
        self._stop_sync_pool()
        try:
            self._rename_to_final()  # while the lock is held: nobody repairs a .partial that is being renamed
        finally:
            os.close(fd)
            self._fd = None
        return self.final

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.finish()

    # -- internals (and the hooks ResilientArchiveWriter and SealedArchiveWriter override) ----------------------

    def _begin(self) -> None:
        """Write what the file starts with (the caller fsyncs it)."""
        write_all(self._require_open(), wav_header(0))

    def _settle_after_error(self, whole: int) -> None:
        """A write failed: make the file a complete recording of the first ``whole`` data bytes without needing
        free space, durably; sets ``_data_bytes`` to what it holds. OSError if even that fails."""
        seal(self._require_open(), whole)
        self._data_bytes = whole

    def _stop_writing(self, whole: int) -> None:
        """Writing stops (and may resume): keep the first ``whole`` data bytes, durably, needing no free space."""
        self._settle_after_error(whole)

    def _reserve_space(self, nbytes: int) -> None:
        """Reserve ``nbytes`` more data bytes after the data (OSError if they do not fit)."""
        os.posix_fallocate(self._require_open(), HEADER_BYTES + self._data_bytes, nbytes)

    def _drop_reservation(self) -> None:
        os.ftruncate(self._require_open(), HEADER_BYTES + self._data_bytes)

    def _skip_to(self, data_bytes: int) -> None:
        """Go on writing at ``data_bytes``: the reserved blocks in between read as zeros (silence)."""
        self._data_bytes = data_bytes
        os.lseek(self._require_open(), HEADER_BYTES + data_bytes, os.SEEK_SET)
        self._next_header = data_bytes  # the header follows at the next write

    def _close_after_outage(self) -> None:
        """The recording ends while writing is stopped: the file is already complete (sealed when it stopped)."""

    def _fault(self, exc: OSError, timeline_end: int) -> None:
        """A write, header rewrite or fsync failed after ``_data_bytes`` reached the file; the frames handed in
        reached ``timeline_end``. Here: seal and raise ArchiveError."""
        self._seal_after_error(exc)

    def _seal_final(self) -> None:
        """The end of :meth:`finish` before the rename: final header and fsync."""
        fd = self._require_open()
        try:
            self._check_syncs(wait_all=True)
            os.pwrite(fd, wav_header(self._data_bytes), 0)
            os.fsync(fd)
        except OSError as exc:
            self._fault(exc, self.position)

    def _require_open(self) -> int:
        if self._fd is None:
            raise ArchiveError(f"archive {self.final} is already finished")
        return self._fd

    def _write_run(self, frames: Sequence[Frame]) -> None:
        """Write ``frames`` (silence before any that starts late); OSError propagates (see :meth:`_append`)."""
        run: list[bytes] = []
        end = self._data_bytes // BYTES_PER_SAMPLE
        for frame in frames:
            start, pcm = frame.start, frame.pcm
            if start != end:  # rare: the usual frame follows the last one
                self._append(b"".join(run))
                if start < end:
                    raise ValueError(f"frame at {start} overlaps the archive, which is at {end}")
                run = []
                self._append_silence(start - end)
            run.append(pcm)
            end = start + len(pcm) // BYTES_PER_SAMPLE
        if run:
            self._append(b"".join(run))

    def _append_silence(self, samples: int) -> None:
        remaining = samples * BYTES_PER_SAMPLE
        while remaining > 0:
            piece = min(remaining, len(_SILENCE_CHUNK))
            self._append(_SILENCE_CHUNK[:piece] if piece < len(_SILENCE_CHUNK) else _SILENCE_CHUNK)
            remaining -= piece

    def _append(self, pcm: bytes) -> None:
        """Write ``pcm`` at the end; an OSError propagates with ``_data_bytes`` counting what reached the file."""
        fd = self._require_open()
        if self._syncs:
            self._check_syncs(wait_all=False)
        view = memoryview(pcm)
        while view:
            written = os.write(fd, view)
            self._data_bytes += written
            view = view[written:]
        if self._data_bytes >= self._next_header:
            os.pwrite(fd, wav_header(self._data_bytes), 0)
            self.header_rewrites += 1
            self._next_header = (self._data_bytes // self._header_every + 1) * self._header_every
        if self._data_bytes >= self._next_sync:
            self._sync(fd)

    def _sync(self, fd: int) -> None:
        if self._sync_pool is not None:
            self._syncs.append(self._sync_pool.submit(os.fdatasync, fd))
        else:
            os.fdatasync(fd)
        self.fsyncs += 1
        self._next_sync = (self._data_bytes // self._sync_every + 1) * self._sync_every

    def _check_syncs(self, *, wait_all: bool) -> None:
        """Collect finished background fsyncs (all of them with ``wait_all``); a failed one raises its OSError."""
        while self._syncs and (wait_all or self._syncs[0].done()):
            self._syncs.popleft().result()

    def _drop_syncs(self) -> None:
        """Wait for background fsyncs still running and forget them (a fault is being handled: their failure is
        that same fault, and the seal fsyncs again)."""
        pending, self._syncs = list(self._syncs), deque()
        wait(pending)

    def _stop_sync_pool(self) -> None:
        """Wait for background fsyncs still running (the fd must outlive them) and end the worker thread."""
        self._drop_syncs()
        if self._sync_pool is not None:
            self._sync_pool.shutdown(wait=True)
            self._sync_pool = None

    def _seal_after_error(self, exc: OSError) -> NoReturn:
        """Keep what reached the disk as a valid WAV under the final name, then raise ArchiveError. Never returns."""
        self._stop_sync_pool()
        fd = self._fd
        reason = describe_os_error(exc)
        if fd is None:  # pragma: no cover - guarded by _require_open
            raise ArchiveError(f"archive {self.final}: {reason}") from exc
        whole = self._data_bytes - self._data_bytes % BYTES_PER_SAMPLE
        try:
            try:
                self._settle_after_error(whole)
            except OSError as seal_exc:
                raise ArchiveError(
                    f"archive {self.partial} stopped ({reason}) and could not be sealed "
                    f"({describe_os_error(seal_exc)}): run 'medisync-agent repair' when the disk is fixed"
                ) from exc
            self._rename_to_final()
        finally:
            self._fd = None
            os.close(fd)
        whole = self._data_bytes
        seconds = whole / BYTES_PER_SAMPLE / SAMPLE_RATE
        raise ArchiveError(
            f"{reason} while writing {self.final}: recording stopped, the first {seconds:.2f} s are saved"
        )

    def _rename_to_final(self) -> None:
        try:
            os.replace(self.partial, self.final)
            fsync_directory(self.final.parent)
        except OSError as exc:
            raise ArchiveError(
                f"could not rename {self.partial.name} to {self.final.name}: {describe_os_error(exc)}"
            ) from exc


def seal(fd: int, data_bytes: int) -> None:
    """Cut a torn trailing sample and write the sizes into the header, durably: needs no free space."""
    os.ftruncate(fd, HEADER_BYTES + data_bytes)  # shrinking needs no free space
    os.pwrite(fd, wav_header(data_bytes), 0)  # overwrites existing bytes: needs no free space either
    os.fsync(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        log.warning("could not remove %s: %s", path.name, describe_os_error(exc))
