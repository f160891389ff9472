"""Supervised background work: a long-lived task that dies is logged and restarted with backoff, never lost silently.

:func:`supervise` runs ``work()`` until cancelled. When it raises (anything but cancellation) or returns, the
failure is logged as one ERROR line with the reason (the traceback only at DEBUG), :class:`WorkerHealth` says
``restarting (reason)`` and counts the restart, and after :func:`restart_delay` the work starts again. The delay
doubles per consecutive failure up to a cap; a run that lasted ``healthy_after_s`` starts the count afresh.
The daemon shows the health in ``status`` and the metrics. Clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.backoff import ceiling

log = logging.getLogger(__name__)

RESTART_FIRST_S = 1.0
"""Seconds before the first restart of a task that died."""
RESTART_CAP_S = 60.0
"""Longest wait between restarts, in seconds."""
HEALTHY_AFTER_S = 60.0
"""A run at least this long (seconds) resets the backoff: the next failure is restarted after the first delay."""
REASON_CHARS = 160


def restart_delay(failures: int, *, first_s: float = RESTART_FIRST_S, cap_s: float = RESTART_CAP_S) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1, 2, ...)."""
    return ceiling(failures - 1, first_s, cap_s)


def describe_failure(exc: BaseException | None) -> str:
    """One line naming what went wrong: the exception type and the first line of its message, shortened."""
    if exc is None:
        return "ended unexpectedly"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


@dataclass
class WorkerHealth:
    """What ``status`` and the metrics show about one supervised task."""

    name: str
    running: bool = False
    reason: str = ""
    """Why it last died (empty until it does)."""
    restarts: int = 0

    def describe(self) -> str:
        if self.running:
            return "running"
        return f"restarting ({self.reason})" if self.reason else "starting"


Sleep = Callable[[float], Awaitable[None]]


async def supervise(
    work: Callable[[], Awaitable[None]],
    health: WorkerHealth,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    healthy_after_s: float = HEALTHY_AFTER_S,
    first_s: float = RESTART_FIRST_S,
    cap_s: float = RESTART_CAP_S,
) -> None:
    """Run ``work()`` again and again until cancelled (see module doc); CancelledError always propagates."""
    failures = 0
    while True:
        started = clock()
        health.running = True
        error: BaseException | None = None
        try:
            await work()
        except asyncio.CancelledError:
            health.running = False
            raise
        except Exception as exc:  # a supervisor exists to outlive this: logged, counted, restarted
            error = exc
        health.running = False
        failures = 1 if clock() - started >= healthy_after_s else failures + 1
        delay = restart_delay(failures, first_s=first_s, cap_s=cap_s)
        health.reason = describe_failure(error)
        health.restarts += 1
        log.error("%s stopped (%s); restarting it in %.0f s", health.name, health.reason, delay)
        if error is not None:
            log.debug("%s failure", health.name, exc_info=error)
        await sleep(delay)


class SupervisedTasks:
    """The daemon's background tasks, each held by its name (never found by position) with its health."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.health = {name: WorkerHealth(name) for name in names}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` under :func:`supervise` as the task ``name`` (one of the names given at construction)."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"background task {name} is already running")
        self._tasks[name] = asyncio.create_task(supervise(work, self.health[name]), name=name)

    async def stop(self, *names: str) -> None:
        """Cancel the named tasks (all of them when no name is given) and wait until they have ended."""
        tasks = [self._tasks.pop(n) for n in (names or tuple(self._tasks)) if n in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restart(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        await self.stop(name)
        self.start(name, work)

    @property
    def restarts(self) -> int:
        return sum(h.restarts for h in self.health.values())
