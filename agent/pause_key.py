"""``run``'s terminal view: the ``p`` key pauses the visit for privacy and resumes it.

On a terminal the key acts at once (cbreak mode, restored on exit); from a pipe, a line holding ``p`` does the same
(that is how tests and scripts drive it). End of input just stops listening. :func:`toggles` is the pure part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

PAUSE_KEY = "p"


class Pausable(Protocol):
    def pause(self) -> bool: ...
    def resume(self) -> bool: ...
    @property
    def paused(self) -> bool: ...


def toggles(data: bytes) -> int:
    """How many pause/resume toggles a chunk of keyboard input asks for."""
    return data.decode("ascii", "replace").lower().count(PAUSE_KEY)


def toggle(visit: Pausable, err: TextIO) -> None:
    if visit.paused:
        visit.resume()
        print("resumed: recording again (p pauses)", file=err, flush=True)
    else:
        visit.pause()
        print("PAUSED for privacy: nothing is recorded or sent (p resumes)", file=err, flush=True)


@contextlib.contextmanager
def pause_key(visit: Pausable, err: TextIO, stdin: TextIO | None = None) -> Iterator[None]:
    """While inside, keyboard input on ``stdin`` toggles the visit's pause (on the running event loop)."""
    stream = sys.stdin if stdin is None else stdin
    try:
        fd = stream.fileno()
    except (ValueError, OSError):  # no standard input at all
        yield
        return
    loop = asyncio.get_running_loop()
    saved = _cbreak(fd)

    def readable() -> None:
        try:
            data = os.read(fd, 256)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        for _ in range(toggles(data)):
            toggle(visit, err)

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError, PermissionError):  # e.g. a regular file: nothing to wait for
        _restore(fd, saved)
        yield
        return
    print(f"press {PAUSE_KEY} to pause the visit for privacy", file=err, flush=True)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        _restore(fd, saved)


def _cbreak(fd: int) -> list[Any] | None:
    if not os.isatty(fd):
        return None
    import termios  # the terminal's modes: only for run's view (the daemon imports this module for apply_pause)
    import tty

    saved: list[Any] = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    return saved


def _restore(fd: int, saved: list[Any] | None) -> None:
    if saved is not None:
        import termios

        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def apply_pause(visit: Pausable | None, pause: bool) -> tuple[bool, str]:
    """The control socket's ``visit_pause`` / ``visit_resume``: (done, one line for a person). The audit line is
    written (fsynced) on a worker thread before the answer."""
    if visit is None:
        return False, "no visit is recording: nothing to pause" if pause else "no visit is paused: nothing to resume"
    if pause == visit.paused:
        return False, ("the visit is already paused (medisync-agent visit resume)" if pause
                       else "the visit is not paused: nothing to resume")  # fmt: skip
    await asyncio.to_thread(visit.pause if pause else visit.resume)
    return True, ("paused for privacy: nothing is recorded or sent until 'medisync-agent visit resume'" if pause
                  else "resumed: recording again")  # fmt: skip
