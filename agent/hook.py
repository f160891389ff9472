"""The optional state hook: a command run on each device state change (``device.state_hook``).

The command (an argv list, run without a shell) gets the event's JSON line (:class:`~agent.events.StateEvent`) on
stdin and the state in ``MEDISYNC_STATE`` (warnings, comma-separated, in ``MEDISYNC_WARNINGS``). Its environment
is only those and ``PATH``/``LANG``/``LC_ALL``/``HOME``/``USER``: nothing of the daemon's (no credential
directory, no token). One hook runs at a time, in its own task and process group; the daemon never waits for it. A
hook that runs longer than ``device.state_hook_timeout_s`` is killed (its whole process group). A failure (cannot
start, non-zero exit, timeout) is one WARNING line with the program's file name, the state and what went wrong
(its last stderr line, shortened). Changes that arrive while a hook runs wait in a queue of
:data:`PENDING_EVENTS`; when it is full the oldest is dropped (the hook always gets the newest state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.events import StateEvent, encode_event
from agent.safe_text import clean_line
from agent.settings import DeviceSettings

log = logging.getLogger(__name__)

PENDING_EVENTS = 16
"""State changes kept while a hook runs; older ones are dropped."""
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "USER")
"""The only variables of the daemon's environment a hook sees."""
STDERR_SHOWN = 200
"""Characters of a failed hook's last stderr line quoted in the WARNING."""


def hook_environment(environ: Mapping[str, str], event: StateEvent) -> dict[str, str]:
    env = {name: environ[name] for name in PASSED_ENV if name in environ}
    env["MEDISYNC_STATE"] = event.state
    env["MEDISYNC_WARNINGS"] = ",".join(event.warnings)
    return env


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return ""
    text = clean_line(lines[-1].strip())
    return ": " + (text if len(text) <= STDERR_SHOWN else text[: STDERR_SHOWN - 3] + "...")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the hook's process group (its pid is the group's id: it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)


async def run_hook(argv: tuple[str, ...], event: StateEvent, timeout_s: float) -> str:
    """Run the hook once for ``event``; the problem in one line, or ``""`` when it exited 0 in time."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=hook_environment(os.environ, event), start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return f"cannot start it ({exc.strerror or exc})"
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that meets the hook's exit, and the
        # daemon's stop then waits for this task forever.
        async with asyncio.timeout(timeout_s):
            _, stderr = await proc.communicate(encode_event(event))
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        return f"did not finish within {timeout_s:g} s (killed)"
    except BaseException:  # cancelled at shutdown: leave nothing running
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise
    code = proc.returncode or 0  # set: communicate() waited for the exit
    if code != 0:
        return (f"killed by signal {-code}" if code < 0 else f"exit status {code}") + _last_line(stderr)
    return ""


class HookRunner:
    """Queues events without waiting (:meth:`submit`) and runs the configured hook for each (:meth:`run`)."""

    def __init__(self, settings: Callable[[], DeviceSettings]) -> None:
        self._settings = settings
        """Read at each run, so a reloaded configuration applies to the next change."""
        self._pending: deque[StateEvent] = deque(maxlen=PENDING_EVENTS)
        self._wake = asyncio.Event()
        self.runs = 0
        self.failures = 0

    @property
    def pending(self) -> tuple[StateEvent, ...]:
        """Changes waiting for the hook, oldest first."""
        return tuple(self._pending)

    def submit(self, event: StateEvent) -> None:
        if self._settings().state_hook:
            self._pending.append(event)
            self._wake.set()

    async def run(self) -> None:
        """Run hooks until cancelled (a daemon task)."""
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            event = self._pending.popleft()
            settings = self._settings()
            if not settings.state_hook:
                continue
            problem = await run_hook(settings.state_hook, event, settings.state_hook_timeout_s)
            self.runs += 1
            if problem:
                self.failures += 1
                log.warning("state hook %s for state %s failed: %s", Path(settings.state_hook[0]).name, event.state,
                            problem)  # fmt: skip
