"""The agent's own files: private folders, atomic writes, bounded reads of its JSON state, quarantine.

Every file the agent creates holds patient data or ids and is private whatever the umask: files 0600, folders 0700.
When a person runs a command as root on the service user's storage (``sudo medisync-agent uploads list``), what
it creates is handed to the owner of the folder it lands in, so the service can still read it afterwards.

State files (queue items, visit journals) are written with :func:`write_atomic` (temporary file, fsync, rename,
fsync of the folder: after a power cut either the old or the new content is there, never a torn mix) and read with
:func:`read_state` (a regular file, bounded size, decoded without RecursionError). A state file that cannot be read
is not skipped in silence: :func:`quarantine` moves it into a quarantine folder with a one-line reason beside it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_STATE_BYTES = 64 * 1024
"""Largest queue item or visit journal accepted, in bytes (ours are under 1 kB)."""
REASON_SUFFIX = ".reason.txt"
TMP_SUFFIX = ".tmp"
COPY_BLOCK = 1024 * 1024

T = TypeVar("T")


class Unreadable(ValueError):
    """A state file whose content cannot be used (torn, garbage, too deep, too large, not a regular file)."""


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 folders (chmod after mkdir: the umask may remove bits)."""
    for folder in make_dirs(path, DIR_MODE):
        _adopt_owner(folder, folder.parent)
    return path


def make_dirs(path: Path, mode: int) -> list[Path]:
    """Create ``path`` and its missing parents with exactly ``mode`` (chmod after mkdir: the umask may remove
    bits); returns the folders this call created, outermost first. A folder another process makes at the same
    moment is left as it is."""
    missing = []
    probe = path
    while not (probe.exists() or probe.is_symlink()):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue  # another process made it at the same moment
        os.chmod(folder, mode)
        made.append(folder)
    return made


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _adopt_owner(path: Path | int, parent: Path) -> None:
    """As root, give a new file or folder to the owner of its parent folder (the service user), not to root."""
    if os.geteuid() != 0:
        return
    owner = os.stat(parent)
    if owner.st_uid != 0:
        if isinstance(path, int):
            os.fchown(path, owner.st_uid, owner.st_gid)
        else:
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _temp_name(path: Path) -> Path:
    # Unique per writer: two processes saving the same item never write into one temporary file.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def _write_temp(path: Path, data: bytes) -> tuple[Path, int]:
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        _adopt_owner(fd, path.parent)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return tmp, fd


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) so that after a crash it holds either the old or the new content."""
    tmp, fd = _write_temp(path, data)
    os.close(fd)
    _rename_into_place(tmp, path)


def write_atomic_locked(path: Path, data: bytes) -> int:
    """Like :func:`write_atomic`, and return an open descriptor of the new file holding an exclusive ``flock``.

    The lock is taken before the file appears under its name, so a reader never sees it unlocked while its
    writer lives; the kernel drops it when the writer dies (kill -9, power loss). Close the descriptor to release.
    """
    tmp, fd = _write_temp(path, data)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _rename_into_place(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rename_into_place(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def read_state(path: Path, decoder: msgspec.json.Decoder[T], *, max_bytes: int = MAX_STATE_BYTES) -> T:
    """Read and decode one state file. Unreadable for anything wrong with the file itself.

    Not following symlinks and refusing anything but a regular file (a FIFO would block, /dev/zero never ends);
    FileNotFoundError passes through (another process moved it), other OSErrors (permission, I/O) too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable("a symbolic link, not a file the agent wrote") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("not a regular file")
        if info.st_size > max_bytes:
            raise Unreadable(f"{info.st_size} bytes, more than the {max_bytes} a state file may have")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Unreadable(f"more than the {max_bytes} bytes a state file may have")
    return decode_state(data, decoder)


def decode_state(data: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode JSON state; Unreadable (one line) for torn, garbage, empty or too deeply nested content."""
    if not data.strip():
        raise Unreadable("empty")
    try:
        return decoder.decode(data)
    except RecursionError:
        raise Unreadable("nested too deeply to be ours") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable(" ".join(str(exc).split())[:160]) from None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A file set aside because the agent could not use it; kept for a person."""

    path: Path
    reason: str


def quarantine(path: Path, folder: Path, reason: str) -> Path | None:
    """Move ``path`` into ``folder`` (created 0700) with ``<name>.reason.txt`` beside it; returns where it went.

    Returns None if ``path`` vanished first (another process quarantined it). Never deletes anything.
    """
    ensure_private_dir(folder)
    target = folder / path.name
    n = 1
    while target.exists() or target.with_name(target.name + REASON_SUFFIX).exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    write_atomic(target.with_name(target.name + REASON_SUFFIX), (" ".join(reason.split()) + "\n").encode())
    try:
        os.replace(path, target)
    except FileNotFoundError:
        target.with_name(target.name + REASON_SUFFIX).unlink(missing_ok=True)
        return None
    fsync_directory(folder)
    fsync_directory(path.parent)
    log.error("%s could not be used (%s): moved to %s, kept for a person", path.name, reason, target)
    return target


def list_quarantine(folder: Path) -> list[Quarantined]:
    """What ``folder`` holds, oldest name first, each with its reason (or "reason unknown")."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(REASON_SUFFIX) or (path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)):
            continue
        reason = "reason unknown"
        with contextlib.suppress(OSError, UnicodeDecodeError):
            reason = path.with_name(path.name + REASON_SUFFIX).read_text().strip() or reason
        found.append(Quarantined(path, reason))
    return found


@contextlib.contextmanager
def atomic_private_file(target: Path) -> Iterator[int]:
    """A new private (0600) file written through the yielded descriptor (open read-write); when the block ends it
    is fsynced and renamed to ``target`` atomically, or removed if the block raised."""
    tmp = _temp_name(target)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        _adopt_owner(fd, target.parent)
        yield fd
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    _rename_into_place(tmp, target)


def copy_private(source_fd: int, size: int, target: Path) -> None:
    """Copy ``size`` bytes from ``source_fd`` into a new private ``target`` (atomic: temporary file, fsync, rename).

    Raises ValueError if the source does not hold exactly ``size`` bytes (it changed while being copied).
    """
    with atomic_private_file(target) as fd:
        for block in read_blocks(source_fd, size):
            write_all(fd, block)


def read_blocks(source_fd: int, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of ``source_fd`` in blocks; ValueError if it holds another number of bytes."""
    copied = 0
    while copied <= size:
        block = os.pread(source_fd, COPY_BLOCK, copied)
        if not block:
            break
        copied += len(block)
        yield block
    if copied != size:
        raise ValueError(f"the file changed while it was copied ({size} bytes expected, {copied} read)")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(folder: Path, older_than_s: float, now: float) -> int:
    """Delete our own temporary files left by a crash mid-write (``.<name>.<id>.tmp``) older than the given age."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            if not (path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)):
                continue
            try:
                if now - path.lstat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
            except OSError as exc:
                log.warning("could not remove the leftover %s: %s", path.name, describe_os_error(exc))
    return removed


def private_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a private folder of this user (None when it is), phrased to follow the folder's name.

    A symbolic link, not a folder, owned by another user, or with any group/other permission bit.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link, not a folder"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid != os.geteuid():
        return f"is owned by another user (uid {info.st_uid}, this process runs as uid {os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"is accessible by group or others (mode {mode:04o}); run: chmod 700 {path}"
    return None


def create_private_file(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if it does not exist (never through a symlink); make it 0600 if it does.

    For files that another library then opens by name (SQLite), so they never exist with wider permissions.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make a create/rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private_append(path: Path) -> int:
    """A descriptor appending to ``path``, created 0600 if missing (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def describe_os_error(exc: OSError) -> str:
    """A short human reason for a file-system error (no paths: callers add the one that matters)."""
    reasons = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOENT: "folder does not exist",
        errno.ENOTDIR: "not a folder",
        errno.EIO: "input/output error",
    }
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)
