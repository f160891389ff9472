"""The daemon's visit slot (an enum moved along a transition table) and its background tasks held by name.
Pure: no daemon, no socket; the tasks test runs its own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from itertools import product

import pytest

from agent.daemon_state import TRANSITIONS, DaemonState, IllegalTransition, VisitSlot
from agent.supervise import SupervisedTasks

ALLOWED = {
    (DaemonState.IDLE, DaemonState.STARTING),
    (DaemonState.STARTING, DaemonState.RECORDING),
    (DaemonState.STARTING, DaemonState.IDLE),  # refused (no subscription, second recording, ...)
    (DaemonState.RECORDING, DaemonState.STOPPING),
    (DaemonState.RECORDING, DaemonState.IDLE),  # the visit ended by itself (failure, duration)
    (DaemonState.STOPPING, DaemonState.IDLE),
}


def slot_in(state: DaemonState) -> VisitSlot:
    slot = VisitSlot()
    path = {
        DaemonState.IDLE: [],
        DaemonState.STARTING: [DaemonState.STARTING],
        DaemonState.RECORDING: [DaemonState.STARTING, DaemonState.RECORDING],
        DaemonState.STOPPING: [DaemonState.STARTING, DaemonState.RECORDING, DaemonState.STOPPING],
    }[state]
    for step in path:
        slot.move(step)
    return slot


def test_the_values_are_the_words_status_has_always_shown() -> None:
    assert [s.value for s in DaemonState] == ["idle", "starting", "recording", "stopping"]
    assert set(TRANSITIONS) == set(DaemonState)
    assert [s for s in DaemonState if s.in_visit] == [DaemonState.STARTING, DaemonState.RECORDING,
                                                      DaemonState.STOPPING]  # fmt: skip


@pytest.mark.parametrize(("start", "to"), list(product(DaemonState, DaemonState)))
def test_every_move_the_table_allows_works_and_every_other_is_refused(start: DaemonState, to: DaemonState) -> None:
    slot = slot_in(start)
    if (start, to) in ALLOWED:
        slot.move(to)
        assert slot.state is to
    else:
        with pytest.raises(IllegalTransition, match=f"{start.value} cannot become {to.value}"):
            slot.move(to)
        assert slot.state is start  # a refused move leaves the state alone


@pytest.mark.parametrize("state", list(DaemonState))
def test_end_returns_to_idle_from_any_state(state: DaemonState) -> None:
    slot = slot_in(state)
    slot.end()
    assert slot.state is DaemonState.IDLE


def test_tasks_are_held_by_name_and_restarted_by_name() -> None:
    def worker(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started.put_nowait(name)
            await asyncio.Event().wait()

        return run

    async def next_started() -> str:
        return await asyncio.wait_for(started.get(), 30.0)

    async def main() -> None:
        names = ("tick", "upload_worker", "queue_count")
        tasks = SupervisedTasks(names)
        for name in names:
            tasks.start(name, worker(name))
        with pytest.raises(RuntimeError, match="upload_worker is already running"):
            tasks.start("upload_worker", worker("again"))
        assert [await next_started() for _ in names] == list(names)
        assert all(h.running for h in tasks.health.values())
        await tasks.restart("upload_worker", worker("upload_worker 2"))
        assert await next_started() == "upload_worker 2"
        assert {t.get_name() for t in asyncio.all_tasks()} >= set(names)
        await tasks.stop()
        assert not any(h.running for h in tasks.health.values())
        assert tasks.restarts == 0  # cancelled on purpose: not a failure
        assert {t.get_name() for t in asyncio.all_tasks()}.isdisjoint(names)

    started: asyncio.Queue[str] = asyncio.Queue()
    asyncio.run(main())
