"""Operator commands that cannot hurt: ``uploads add`` and ``uploads assign`` (blocking file work, no network).

``add`` takes an operator's own file: a regular file (not a folder, device or FIFO), not empty, within the upload
limit, whose content is WAV, MP3 or M4A audio (:mod:`agent.archive.audio_format`), for a valid appointment id that
has no recording queued yet. It copies the file into the agent's archive folder (0600; sealed to the device key
when the archive is encrypted, hashing the plaintext on the way) and queues the copy, so the agent never moves or
deletes a file it did not create: a dead letter moves the copy, retention deletes the copy.

``assign`` queues audio already in the agent's storage that no journal or queue item accounts for (an orphan that
:mod:`agent.archive.recovery` listed) for an appointment.

Errors are :class:`~agent.errors.InputError` with one line for a person (exit 65).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.archive.audio_format import AudioFormat, NotAudio, sniff
from agent.archive.keys import ArchiveKeys
from agent.archive.recovery import is_orphan
from agent.archive.sealed import PlainDigest, SealedAppender, is_sealed_bytes, open_plain, plain_size
from agent.archive.storage import atomic_private_file, copy_private, describe_os_error, ensure_private_dir, read_blocks
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.archive.wav import PARTIAL_SUFFIX
from agent.archive.wavfmt import bytes_reader
from agent.errors import ArchiveError, InputError
from agent.ids import checked_appointment_id

ACCEPTED = "uploads take WAV, MP3 or M4A audio"
SNIFF_BYTES = 1024 * 1024
"""Plaintext decrypted to judge a sealed recording's format (its first chunks)."""


@dataclass(frozen=True, slots=True)
class OperatorFile:
    """An operator's file, checked and open for reading (see :func:`operator_file`)."""

    path: Path
    fd: int
    size: int
    audio: AudioFormat


@contextlib.contextmanager
def operator_file(path: Path, max_bytes: int) -> Iterator[OperatorFile]:
    """Open and check ``path`` (regular, non-empty, within ``max_bytes``, WAV/MP3/M4A content); InputError if not.

    No side effect on anything: run it before touching the queue, so a refusal is exactly one line.
    """
    fd, size = _open_operator_file(path, max_bytes)
    try:
        yield OperatorFile(path, fd, size, _format_of(fd, size, path))
    finally:
        os.close(fd)


def valid_appointment_id(appointment_id: str) -> str:
    """The id, stripped; InputError (one line) if it cannot be an appointment id."""
    return checked_appointment_id(appointment_id, InputError)


def add_copy(queue: UploadQueue, archive_dir: Path, appointment_id: str, source: OperatorFile) -> UploadItem:
    """Copy the checked ``source`` into ``archive_dir`` (0600) and queue the copy for ``appointment_id``."""
    appointment_id = _checked_appointment(queue, appointment_id)
    target = archive_dir / copy_name(time.time(), source.audio)
    try:
        ensure_private_dir(archive_dir)
        digest = _copy(source, target, queue.keys)
    except ValueError as exc:
        raise InputError(f"{source.path}: {exc}; nothing queued") from None
    except OSError as exc:
        raise ArchiveError(f"cannot copy {source.path} into {archive_dir}: {describe_os_error(exc)}") from exc
    try:
        return queue.enqueue(appointment_id, target, digest=digest)
    except BaseException:
        target.unlink(missing_ok=True)  # our copy, not queued: nothing else refers to it
        raise


def _copy(source: OperatorFile, target: Path, keys: ArchiveKeys | None) -> PlainDigest | None:
    """The private copy: sealed (and its plaintext hashed on the way) with ``keys``, else byte for byte."""
    if keys is None:
        copy_private(source.fd, source.size, target)
        return None
    digest = hashlib.sha256()
    with atomic_private_file(target) as fd:
        sealed = SealedAppender(fd, keys.recipient)
        sealed.begin()
        for block in read_blocks(source.fd, source.size):
            digest.update(block)
            sealed.append(block)
        sealed.finish()
    return PlainDigest(source.size, digest.hexdigest())


def assign(queue: UploadQueue, archive_dir: Path, file: Path, appointment_id: str) -> UploadItem:
    """Queue an orphan recording of the agent's storage (found by name or path) for ``appointment_id``."""
    appointment_id = _checked_appointment(queue, appointment_id)
    path = _locate(file, archive_dir, queue)
    if path.name.endswith(PARTIAL_SUFFIX) or not is_orphan(path, archive_dir, queue):
        raise InputError(f"{file} is not a recording waiting for an appointment (it is queued already, being "
                         "recorded, or could not be repaired): see 'medisync-agent uploads list'")  # fmt: skip
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{file}: cannot read it: {describe_os_error(exc)}") from None
    try:
        if is_sealed_bytes(os.pread(fd, 64, 0)):
            _sealed_format_of(path, queue, file)
        else:
            _format_of(fd, os.fstat(fd).st_size, file)
    finally:
        os.close(fd)
    return queue.enqueue(appointment_id, path)


def _sealed_format_of(path: Path, queue: UploadQueue, name: Path) -> AudioFormat:
    """The format of a sealed recording's plaintext (its start decrypted in memory; the device key needed)."""
    identity = queue.keys.opener(f"checking the sealed recording {name}") if queue.keys else None
    with open_plain(path, identity) as reader:
        head = reader.read(SNIFF_BYTES)
    try:
        return sniff(bytes_reader(head), plain_size(path))
    except NotAudio as exc:
        raise InputError(f"{name}: {exc}") from None


def copy_name(now: float, audio: AudioFormat) -> str:
    """``added-20261121T193000Z-1a2b3c4d.wav``: where an operator's file is copied; no patient data in it."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"added-{stamp}-{uuid.uuid4().hex[:8]}{audio.suffix}"


def _checked_appointment(queue: UploadQueue, appointment_id: str) -> str:
    appointment_id = valid_appointment_id(appointment_id)
    existing = queue.find(appointment_id)
    if existing is not None:
        raise InputError(f"appointment {appointment_id} already has a recording in the upload queue (item "
                         f"{existing.item_id[:8]}, {existing.state.value}); MediSync keeps one recording per "
                         "appointment")  # fmt: skip
    return appointment_id


def _open_operator_file(source: Path, max_bytes: int) -> tuple[int, int]:
    """An open descriptor of a regular, non-empty file within ``max_bytes``, and its size; InputError otherwise."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read it: {describe_os_error(exc)}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{source} is a folder, not an audio file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{source} is not a regular file (a device, FIFO or socket); {ACCEPTED} files")
        if info.st_size == 0:
            raise InputError(f"{source} is empty")
        if info.st_size > max_bytes:
            raise InputError(f"{source} is {info.st_size} bytes, over the upload limit of {max_bytes} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _format_of(fd: int, size: int, name: Path) -> AudioFormat:
    try:
        return sniff(lambda offset, count: os.pread(fd, count, offset), size)
    except NotAudio as exc:
        reason = str(exc) if "WAV, MP3 or M4A" in str(exc) else f"{exc}; {ACCEPTED}"
        raise InputError(f"{name}: {reason}") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read it: {describe_os_error(exc)}") from None


def _locate(file: Path, archive_dir: Path, queue: UploadQueue) -> Path:
    """``file`` as given, or by its bare name in the archive or dead-letter folder; it must lie in one of them."""
    folders = [archive_dir, queue.dead_dir]
    candidates = [file] if file.exists() or file.parent != Path() else [d / file for d in folders]
    for path in candidates:
        if os.path.realpath(path.parent) in {os.path.realpath(d) for d in folders} and path.is_file():
            return path
    if file.exists() or file.is_symlink():
        raise InputError(f"{file} is not in the agent's archive folder {archive_dir}: to queue a file of your own "
                         "use 'medisync-agent uploads add APPOINTMENT FILE'")  # fmt: skip
    raise InputError(f"{file}: no such recording in {archive_dir}; see 'medisync-agent uploads list'")
