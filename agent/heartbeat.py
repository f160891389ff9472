"""What the daemon tells systemd each tick: ``READY=1`` once, ``WATCHDOG=1`` while capture advances, ``STATUS=``.

``READY=1`` goes out when the capture delivers its first block, ``WATCHDOG=1`` only while its block counter keeps
advancing (:class:`~agent.sdnotify.WatchdogPolicy`), so a stalled or unplugged microphone gets the service
restarted by systemd. The STATUS line is sent when its text changes.

The daemon looks every :func:`tick_period_s` (about once a second), not faster: each need on its natural period,
and what changes by itself (the first block, a microphone problem, the visit slot) is pushed to the loop when it
happens instead of being polled for (issue 11: no idle timers; each wake-up of the loop costs CPU). During a visit
the look rides a block's wake-up instead of a timer's own (:meth:`Heartbeat.nudge`: up to :data:`EARLY_S` early).
"""

from __future__ import annotations

import asyncio
import logging

from agent.control import DaemonStatus
from agent.sdnotify import Notifier, WatchdogPolicy

log = logging.getLogger(__name__)

EARLY_S = 0.15
"""How early a visit's block may start the next look: a little over one 120 ms block, so one block always falls in
the window while audio flows and the loop is not woken once more for the look (~0.4 ms of CPU per wake-up here)."""
STATE_S = 1.0
"""Seconds between looks at what nobody announces (queue counts, stream and device state: STATUS, metrics)."""


def tick_period_s(watchdog_s: float | None, no_data_s: float) -> float:
    """Seconds between the daemon's looks: the shortest natural period of what they serve. ``watchdog_s``: the
    ping interval (:class:`WatchdogPolicy` wants a look every half of it); ``no_data_s``: the microphone's "no data"
    threshold (looked at twice within it); otherwise :data:`STATE_S`."""
    periods = [STATE_S, no_data_s / 2]
    if watchdog_s is not None:
        periods.append(watchdog_s / 2)
    return min(periods)


def status_line(s: DaemonStatus) -> str:
    """The one-line systemd STATUS text (no patient data: no appointment id)."""
    text = f"{s.state}; device {s.device_state}; uploads waiting {s.upload_queue}"
    if s.state != "idle":
        text += f"; stream {s.connection}"
    if not s.archive_writable:
        text += f"; archive stopped ({s.archive_problem})"
    return text


class Heartbeat:
    def __init__(self, notifier: Notifier, watchdog: WatchdogPolicy | None) -> None:
        self._notifier = notifier
        self._watchdog = watchdog
        self._ready = False
        self._stalled_logged = False
        self._status_text = ""
        self._sleeper: asyncio.Future[None] | None = None
        self._early_at = float("inf")
        """Loop time from which :meth:`nudge` ends the sleep between looks."""

    async def sleep(self, no_data_s: float) -> None:
        """Until the next look: :meth:`period_s`, or a :meth:`nudge` at most :data:`EARLY_S` before it."""
        loop = asyncio.get_running_loop()
        period, sleeper = self.period_s(no_data_s), loop.create_future()
        self._sleeper, self._early_at = sleeper, loop.time() + period - EARLY_S
        timer = loop.call_at(loop.time() + period, _end, sleeper)  # between visits (or a stalled microphone)
        try:
            await sleeper
        finally:
            timer.cancel()  # a cancelled timer never wakes the loop
            self._sleeper, self._early_at = None, float("inf")

    def nudge(self) -> None:
        """A visit's block was just handled (on the loop): the look starts now, in this wake-up, if it is nearly
        due."""
        sleeper = self._sleeper
        if sleeper is not None and sleeper.get_loop().time() >= self._early_at:
            _end(sleeper)

    def period_s(self, no_data_s: float) -> float:
        """Seconds until the next look (:func:`tick_period_s` for this watchdog and the microphone's threshold)."""
        return tick_period_s(None if self._watchdog is None else self._watchdog.interval_s, no_data_s)

    @property
    def ready(self) -> bool:
        """``READY=1`` has been sent (the capture delivered its first block)."""
        return self._ready

    def observe(self, now: float, blocks: int, device: str, status: DaemonStatus) -> None:
        """One tick: ``blocks`` is the capture's block counter, ``device`` its description."""
        if not self._ready and blocks > 0:
            self._ready = True
            self._notifier.ready(f"ready: capturing from {device}")
            log.info("ready: %s delivers audio", device)
        watchdog = self._watchdog
        if self._ready and watchdog is not None:
            if watchdog.observe(now, blocks, expect_frames=True):
                self._notifier.watchdog()
                self._stalled_logged = False
            elif watchdog.stalled_for(now) > watchdog.interval_s and not self._stalled_logged:
                self._stalled_logged = True
                log.error("no audio from %s for %.1f s: watchdog pings stopped, systemd will restart the service "
                          "(check the microphone connection)", device, watchdog.stalled_for(now))  # fmt: skip
        text = status_line(status)
        if text != self._status_text:
            self._status_text = text
            self._notifier.status(text)


def _end(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
