"""``run``'s pause key on a real terminal (a pseudo-terminal): cbreak mode inside, the terminal's modes restored
after, a key press toggles the pause. termios and tty are imported only here, not by the daemon (issue 11)."""

from __future__ import annotations

import asyncio
import io
import os
import termios

from agent.pause_key import pause_key


class Visit:
    def __init__(self) -> None:
        self.paused = False
        self.paused_once = asyncio.Event()

    def pause(self) -> None:
        self.paused = True
        self.paused_once.set()

    def resume(self) -> None:
        self.paused = False


async def press_p_on(master: int, slave: int, err: io.StringIO) -> tuple[Visit, int]:
    """Inside the pause key on ``slave``: its local modes, then ``p`` typed at ``master`` until the visit pauses."""
    visit = Visit()
    with os.fdopen(os.dup(slave), "r") as stdin, pause_key(visit, err, stdin):
        inside = termios.tcgetattr(slave)[3]
        os.write(master, b"p")
        await asyncio.wait_for(visit.paused_once.wait(), 30)
    return visit, inside


def test_the_key_toggles_in_cbreak_mode_and_the_terminal_is_restored() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        err = io.StringIO()
        visit, inside = asyncio.run(press_p_on(master, slave, err))
        assert inside & termios.ICANON == 0 and before[3] & termios.ICANON  # cbreak inside, canonical before
        assert visit.paused
        assert "PAUSED for privacy" in err.getvalue()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
