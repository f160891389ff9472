"""The microphone health detector's adapter: thread-safe, logs each change, tells listeners.

:class:`MicHealth` wraps :class:`~agent.audio.mic_health.MicHealthDetector` for the daemon (blocks in batches from
the capture's look on the event loop, about once a second; speech from the visit on the loop; ticks from the
daemon's tick) and for ``run``. Each change is one log line: WARNING when a problem is raised, INFO when it
clears; the lines carry the problem, the level and how long it held, never audio or patient data. For the event
stream and anything else that follows the microphone::

    health.problems()                    # frozenset of problem names now, e.g. frozenset({"silent"})
    remove = health.add_listener(fn)     # fn(MicChange) for every change, called outside the lock
    health.level_dbfs()                  # RMS level over the detector's window (-120 for silence or no data)

Listeners run on whichever thread fed the detector (the event loop in the daemon): they must be quick and must
not block (hand over with ``loop.call_soon_threadsafe``). One that raises is logged and the others still run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from agent import SAMPLE_RATE
from agent.audio.mic_health import MicChange, MicHealthDetector
from agent.audio.pipeline import PipelineOutput
from agent.audio.types import Block
from agent.audio.vad import SegmentFrame
from agent.settings import MicSettings

log = logging.getLogger(__name__)

Listener = Callable[[MicChange], object]  # what it returns is ignored


class MicHealth:
    """See the module docstring. ``clock`` must be the clock of the blocks' capture times (``time.monotonic``)."""

    def __init__(self, settings: MicSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._detector = MicHealthDetector(settings, clock())
        self._listeners: list[Listener] = []
        self.changes = 0
        """Changes so far (raised and cleared)."""

    def problems(self) -> frozenset[str]:
        """The problems raised now (names from :data:`agent.audio.mic_health.PROBLEMS`)."""
        with self._lock:
            return self._detector.problems

    def level_dbfs(self) -> float:
        with self._lock:
            return self._detector.level_dbfs

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every later change; returns the function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    # --- feeding ----------------------------------------------------------------------------------------------

    def feed_block(self, samples: npt.NDArray[np.floating], start: float, end: float) -> None:
        """A block of the device's own samples (float, [-1, 1]) captured from ``start`` to ``end``."""
        with self._lock:
            changes = self._detector.block(samples, start, end)
        self._publish(changes)

    def feed_blocks(self, blocks: Sequence[Block], rate: int) -> None:
        """Blocks of the device's own samples at ``rate`` Hz, in capture order (the capture's look: a batch)."""
        changes: list[MicChange] = []
        with self._lock:
            for block in blocks:
                end = block.capture_time + len(block.samples) / rate
                changes += self._detector.block(block.samples, block.capture_time, end)
        self._publish(changes)

    def feed_output(self, out: PipelineOutput, *, level: bool = True) -> None:
        """A pipeline output: its frames for the level (``level``) and the voice gate's speech for no_speech."""
        if not out.frames:
            return
        speech = any(type(e) is SegmentFrame for e in out.events) if out.events else False
        if not (level or speech):  # nothing to look at (most blocks of a visit: its level is metered elsewhere)
            return
        last = out.frames[-1]
        end = last.capture_time + last.samples / SAMPLE_RATE
        with self._lock:
            changes = []
            if level:
                pcm = b"".join(f.pcm for f in out.frames)
                changes += self._detector.frames_pcm(pcm, out.frames[0].capture_time, end)
            if speech:
                changes += self._detector.heard_speech(end)
        self._publish(changes)

    def watch_speech(self, on: bool) -> None:
        """A visit started (True) or ended or paused (False): expect speech, or stop expecting it."""
        with self._lock:
            changes = self._detector.watch_speech(on, self._clock())
        self._publish(changes)

    def tick(self) -> None:
        """Call a few times a second: notices a device that stopped delivering."""
        with self._lock:
            changes = self._detector.tick(self._clock())
        self._publish(changes)

    def reset(self, settings: MicSettings | None = None) -> None:
        """Start afresh now (new thresholds, or the device is being opened): raised problems are cleared first."""
        with self._lock:
            old = self._detector
            now = self._clock()
            changes = [MicChange(p, False, now, now, old.level_dbfs) for p in sorted(old.problems)]
            self._detector = MicHealthDetector(settings or old.settings, now)
        self._publish(changes)

    def _publish(self, changes: list[MicChange]) -> None:
        if not changes:
            return
        with self._lock:
            self.changes += len(changes)
            listeners = list(self._listeners)
        for change in changes:
            if change.raised:
                log.warning("microphone problem: %s", change.describe())
            else:
                log.info("microphone problem cleared: %s", change.describe())
            for listener in listeners:
                try:
                    listener(change)
                except Exception:  # one broken listener must not stop the capture or the others
                    log.exception("microphone health listener failed")



async def tick_while(health: MicHealth, active: Callable[[], bool], period_s: float = 0.25) -> None:
    """Tick ``health`` every ``period_s`` while ``active()`` (a visit's recording, not the stream draining after it);
    runs until cancelled."""
    while True:
        await asyncio.sleep(period_s)
        if active():
            health.tick()
