"""What the daemon tells systemd each tick (agent.heartbeat), over a real datagram socket standing in for
NOTIFY_SOCKET; time is injected (``now``), nothing waits for real except the datagrams' arrival."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.control import DaemonStatus
from agent.heartbeat import EARLY_S, STATE_S, Heartbeat, status_line, tick_period_s
from agent.sdnotify import Notifier, WatchdogPolicy
from tests.plugins.daemon import NotifyListener, poll, short_tmp_dir

IDLE = DaemonStatus(state="idle", device_state="open", upload_queue=2)


def test_status_line_names_no_patient_and_says_what_is_wrong() -> None:
    assert status_line(IDLE) == "idle; device open; uploads waiting 2"
    recording = DaemonStatus(state="recording", device_state="lost", connection="backoff", appointment_id="a1b2",
                             archive_writable=False, archive_problem="disk full")  # fmt: skip
    line = status_line(recording)
    assert line == "recording; device lost; uploads waiting 0; stream backoff; archive stopped (disk full)"
    assert "a1b2" not in line


def test_ready_once_watchdog_only_while_blocks_advance_status_on_change() -> None:
    folder: Path = short_tmp_dir()
    listener = NotifyListener(folder / "notify.sock")
    notifier = Notifier(str(listener.path))
    beat = Heartbeat(notifier, WatchdogPolicy(2.0, now=0.0))
    try:
        beat.observe(0.0, 0, "mic", IDLE)  # nothing captured yet: no READY, no WATCHDOG
        beat.observe(0.5, 1, "mic", IDLE)
        beat.observe(1.0, 2, "mic", IDLE)
        beat.observe(5.0, 2, "mic", IDLE)  # stalled for 4 s > the interval: no ping
        beat.observe(6.0, 3, "mic", DaemonStatus(state="recording", device_state="open", connection="streaming"))
        poll(lambda: len(listener.lines()) >= 6, "six notification lines")
        assert listener.lines() == [
            "STATUS=idle; device open; uploads waiting 2",
            "READY=1", "STATUS=ready: capturing from mic",  # the first block (one datagram)
            "WATCHDOG=1",  # at 0.5 s; none at 1.0 s (within the interval), none at 5.0 s (stalled)
            "WATCHDOG=1",  # at 6.0 s: blocks advance again
            "STATUS=recording; device open; uploads waiting 0; stream streaming",  # sent only when it changes
        ]  # fmt: skip
    finally:
        notifier.close()
        listener.close()


def test_the_daemon_looks_on_the_natural_periods_of_what_it_serves() -> None:
    assert tick_period_s(None, 2.0) == STATE_S == 1.0  # no watchdog: the state and the no-data check, once a second
    assert tick_period_s(15.0, 2.0) == 1.0  # WatchdogSec=30: pings every 15 s want a look every 7.5 s
    assert tick_period_s(1.0, 2.0) == 0.5  # a short watchdog sets the pace
    assert tick_period_s(None, 1.0) == 0.5  # "no data" after 1 s: looked at twice within it


def test_the_heartbeat_paces_the_daemon_by_its_watchdog() -> None:
    assert Heartbeat(Notifier(None), None).period_s(2.0) == 1.0
    assert Heartbeat(Notifier(None), WatchdogPolicy(1.0, now=0.0)).period_s(2.0) == 0.5


def test_the_sleep_between_looks_ends_at_its_period_or_at_a_visit_block_near_it() -> None:
    """Between visits the look comes at its period; during a visit a block's wake-up within ``EARLY_S`` of it starts
    the look at once (no timer wake-up of its own), while a block earlier than that does not."""
    beat = Heartbeat(Notifier(None), None)
    no_data_s = 4.0  # a look a second (STATE_S)

    async def main() -> tuple[float, bool, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await beat.sleep(no_data_s)
        slept = loop.time() - started
        beat.nudge()  # no sleep: nothing to end
        started = loop.time()
        task = asyncio.create_task(beat.sleep(no_data_s))
        await asyncio.sleep(0.1)
        beat.nudge()  # 0.9 s before the look: too early
        await asyncio.sleep(0)
        ended_early = task.done()
        await asyncio.sleep(max(0.0, started + STATE_S - EARLY_S + 0.01 - loop.time()))
        assert not task.done(), "ended before its period without a nudge in the window"
        beat.nudge()
        for _ in range(2):  # the task's wake-up, then its end: in this wake-up of the loop, not at the timer's
            await asyncio.sleep(0)
        return slept, ended_early, task.done()

    slept, ended_early, nudged = asyncio.run(main())
    assert slept >= STATE_S and not ended_early and nudged
