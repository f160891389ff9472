"""Advisory ``flock`` locks on files in the agent's folders (the upload queue's ``.lock`` and ``.release.lock``).

The kernel drops a lock when its holder dies (kill -9, power loss), so a lock never outlives its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from agent.archive.storage import FILE_MODE


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path`` (created 0600 if missing); OSError if it cannot be opened."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)


@contextlib.contextmanager
def held(fd: int) -> Iterator[None]:
    """Hold the exclusive lock of the lock file ``fd`` for the block (waits for it); closes ``fd`` after."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Hold the exclusive lock of ``path`` if nobody does (yields True), else yield False at once."""
    fd = open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
