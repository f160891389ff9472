"""Continuous capture for the daemon: the configured source stays open between visits, a lost device is reopened.

:class:`Capture` opens the source with a *sink* (``open_source(..., sink=)``): the source's producer -- PortAudio's
callback for a microphone -- calls the capture's sink with every block, on its own thread. The sink does the least
it can there (issue 11: each bytecode on that thread runs cold, ten times a second): it counts the block, appends it
to a short queue the event loop looks at (:meth:`Capture.look`, about once a second: the level meter and the
``on_blocks`` hook, e.g. the microphone health detector, run there in one batch, with no wake-up of their own), and,
during a visit, puts it into the hand-off of a :class:`CaptureTap`, the :class:`~agent.audio.types.Source` the
visit's recorder consumes: the same one hand-off and eventfd wake-up as a microphone recorded directly, no capture
thread, no second buffer. Between visits nothing wakes the loop per block, and a microphone is read in batches
(:class:`~agent.audio.types.Paced`: told idle while no tap is attached; a tap's attach hands on what waits at once).

Device loss: a task on the event loop (:meth:`Capture._watch`) looks at the open source every ``CHECK_S`` seconds
(or, for a *driven* capture, whenever its owner calls :meth:`Capture.check`: the daemon's tick, so the loop wakes
once a second for both instead of twice, issue 11); when it reports its device dead (``check_alive`` raises
DeviceError) or its stream ended, the task closes it and
reopens it *by name* (the same spec, pinned to the first rate and channel count so a running visit's pipeline still
fits) with capped exponential backoff (:class:`ReopenPolicy`, pure). The first block after a reopen carries
``Block.missed`` = the wall-clock time lost, in source samples, so the DSP fills the visit timeline with silence
and reports a Gap: the archive stays wall-clock true and the stream announces the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio.handoff import Handoff
from agent.audio.sources import Opener
from agent.audio.types import Block, FixedFormat, Paced, Source
from agent.errors import AgentError, DeviceError

log = logging.getLogger(__name__)

LEVEL_WINDOW_S = 0.3
"""Time constant in seconds of the input level meter (exponential average of the power)."""
MIN_GAP_S = 0.05
"""A discontinuity after a reopen shorter than this (seconds) is capture jitter, not a gap."""
CHECK_S = 1.0
"""Seconds between looks at whether the open source's device still works (each also meters the blocks since)."""
LOOK_QUEUE_BLOCKS = 150
"""Blocks kept for the loop's look (3 s of 20 ms blocks): a loop that stalls loses metering, never memory or audio."""


def level_dbfs(power: float) -> float | None:
    """Mean square of float samples -> dBFS (RMS of a full-scale square wave = 0 dBFS); None for silence."""
    if power <= 1e-20:
        return None
    return 10.0 * math.log10(power)


def block_power(samples: npt.NDArray[np.float32]) -> float:
    flat = samples.reshape(-1)
    return float(np.dot(flat, flat)) / flat.size if flat.size else 0.0  # float32 sum: ample for a level meter


@dataclass
class ReopenPolicy:
    """Delays between attempts to reopen a lost device: 0.5 s doubling up to ``cap_s``; reset by a good block."""

    cap_s: float
    first_s: float = 0.5
    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.first_s * 2.0**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


def missed_samples(expected_start: float | None, capture_time: float, rate: int) -> int:
    """Source samples lost between where the previous block ended and where this one starts (0 for jitter)."""
    if expected_start is None:
        return 0
    lost = capture_time - expected_start
    return round(lost * rate) if lost >= MIN_GAP_S else 0


class CaptureTap(FixedFormat):
    """The visit's view of the running capture (a Source). Opening or closing it never touches the device."""

    def __init__(self, capture: Capture, handoff_seconds: float) -> None:
        self._capture = capture
        self._rate = capture.sample_rate
        self._channels = capture.channels
        self.handoff = Handoff(max(1, round(handoff_seconds * self._rate)))
        self._attached_at = capture.now()

    @property
    def description(self) -> str:
        return self._capture.description

    def __enter__(self) -> CaptureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def put(self, samples: npt.NDArray[np.float32], capture_time: float, missed: int) -> None:
        """On the source's producer thread (PortAudio's callback, or a paced source's reader). Only until the
        visit's first block: then it is the hand-off's own ``put`` (one Python call less per block)."""
        if capture_time + len(samples) / self._rate <= self._attached_at:
            return  # all before the visit began: a paced source hands on what waited since its last read
        # A device lost before the visit began: only the part after the visit's start is the visit's gap.
        missed = min(missed, max(0, round((capture_time - self._attached_at) * self._rate)))
        self.put = self.handoff.put  # type: ignore[method-assign]
        self.handoff.put(samples, capture_time, missed)

    def check_alive(self) -> None:
        """Never raises: the capture reopens a lost device and the gap is reported in the blocks."""

    def stop(self) -> None:
        self._capture.detach(self)
        self.handoff.close()


class Capture:
    """Keeps the source open for the daemon's lifetime; see the module docstring."""

    def __init__(self, open_source: Opener, *, retry_cap_s: float,
                 clock: Callable[[], float] = time.monotonic, driven: bool = False) -> None:  # fmt: skip
        self._open = open_source
        self._driven = driven
        self._wake = asyncio.Event()
        """A driven capture's watch waits on this: set by :meth:`check` (the source is dead or ended) and stop."""
        self._failure: Exception | None = None  # what check() found wrong, raised in the watch task
        self._watched: Source | None = None  # the open source once it delivers: check() asks it if it is alive
        self._policy = ReopenPolicy(cap_s=retry_cap_s)
        self._clock = clock
        self._stop = asyncio.Event()
        self._lock = threading.Lock()
        self._tap: CaptureTap | None = None
        self._source: Source | None = None  # the open source (paced between visits)
        self._task: asyncio.Task[None] | None = None
        self._first_try = asyncio.Event()
        self._ever_opened = False
        self._open_error: AgentError | None = None
        self._expected: float | None = None  # capture time where the next block should start (after a loss)
        self._generation = 0  # which opened source the sink accepts blocks from
        self._last_end: float | None = None
        self.sample_rate = 0
        self.channels = 0
        self.description = ""
        self.state = "opening"
        """``opening``, ``open`` or ``lost``."""
        self.blocks = 0
        """Blocks captured since start; stops growing when the device stalls (the watchdog reads it)."""
        self.samples = 0
        self.reopens = 0
        self.lost_samples = 0
        """Source samples lost before the capture passed a block on, since start: device loss, and what the source
        reported missing (input overflow, its own hand-off) in ``Block.missed``; the one count of them."""
        self._power = 0.0
        self._looked: deque[tuple[npt.NDArray[np.float32], float, int]] = deque(maxlen=LOOK_QUEUE_BLOCKS)
        """(samples, capture time, missed) the sink passed on since the last look (the producer appends, the loop
        pops: each a single atomic deque operation, no lock)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._announce = False  # the next block is the first of a newly opened source: have the loop look at once
        self.on_blocks: Callable[[Sequence[Block], int], None] | None = None
        """Called on the event loop at each look with the blocks since the last one, in order, and their sample
        rate (the microphone health detector); must not raise. Soon after the first block of each open, then about
        once a second (:data:`CHECK_S`, and whenever the owner calls :meth:`look`)."""

    # --- control (event loop) ---------------------------------------------------------------------------------

    async def start(self, timeout_s: float) -> None:
        """Start watching and wait (bounded) for the first open; raise its error if it failed at once."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._watch(), name="capture-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_try.wait(), timeout_s)
        if self._open_error is not None and not self._ever_opened:
            raise self._open_error

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        tap = self._tap
        if tap is not None:
            tap.stop()
        if self._task is not None:
            await self._task

    def now(self) -> float:
        return self._clock()

    @property
    def level_dbfs(self) -> float | None:
        return level_dbfs(self._power) if self.state == "open" else None

    def tap(self, handoff_seconds: float) -> CaptureTap:
        """A new Source for a visit, fed from the next block on. One at a time."""
        if not self._ever_opened:
            raise DeviceError(f"the microphone is not open yet ({self.description or 'opening'})")
        tap = CaptureTap(self, handoff_seconds)
        with self._lock:
            if self._tap is not None:
                raise RuntimeError("a capture tap is already attached")
            self._tap = tap
        self._pace(self._source)
        return tap

    def detach(self, tap: CaptureTap) -> None:
        with self._lock:
            if self._tap is tap:
                self._tap = None
        self._pace(self._source)

    def _pace(self, source: Source | None) -> None:
        """Tell a paced source whether a visit takes its blocks (idle while no tap is attached)."""
        if isinstance(source, Paced):
            source.set_idle(self._tap is None)

    # --- watching the device (event loop) ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                reason = await self._run_once()
            except AgentError as exc:
                reason = str(exc)
                if not self._ever_opened:
                    self._open_error = exc
            except Exception as exc:  # the capture must outlive any device bug; logged in full
                log.exception("capture failed unexpectedly")
                reason = f"unexpected {type(exc).__name__}"
            self._first_try.set()
            self.look()  # the closed source's last blocks: where they ended is where a gap begins
            self._expected = self._last_end
            if self._stop.is_set():
                break
            self.state = "lost"
            delay = self._policy.next_delay()
            log.warning("microphone lost (%s); reopening in %.1f s", reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self) -> str:
        """Open the source, watch it until it fails or ends, close it; the reason it is gone."""
        pin = (self.sample_rate, self.channels) if self._ever_opened else None
        self._generation += 1
        generation = self._generation

        sink = functools.partial(self._sink, generation)  # a C-level wrapper: no Python frame of its own
        source = await asyncio.to_thread(self._open, pin, sink)
        try:
            if self._ever_opened:
                self._fit(source)
            else:
                self._fit_first(source)  # before the first block reaches the sink
            self._announce = True
            self._source = source
            self._pace(source)
            await asyncio.to_thread(source.__enter__)
            self._opened(source)
            self._watched, self._failure = source, None  # nothing a check found of the last source is left over
            self._wake.clear()  # (a stop in between is seen by the loop's condition)
            while not self._stop.is_set():
                await self._until_check()
                self.look()
                source.check_alive()
                if source.handoff.closed:
                    return "the source ended"
            return "stopped"
        finally:
            self._generation += 1
            self._source = self._watched = None
            await asyncio.to_thread(source.__exit__, None, None, None)

    async def _until_check(self) -> None:
        """Until the next look at the open source: ``CHECK_S`` seconds, or (driven) until :meth:`check` found it
        dead or ended; its error is raised here, in the watch task, as if the source had raised it."""
        if not self._driven:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CHECK_S)
            return
        await self._wake.wait()
        self._wake.clear()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def check(self) -> None:
        """A driven capture's periodic look (its owner's timer, about every ``CHECK_S``): the blocks since the last
        look; then whether the open source still works; the watch task reopens one that is dead or ended."""
        self.look()
        source = self._watched
        if source is None or self._wake.is_set():
            return
        try:
            source.check_alive()
        except Exception as exc:  # not handled here: the watch task logs it and reopens, as for its own check
            self._failure = exc
            self._wake.set()
            return
        if source.handoff.closed:
            self._wake.set()

    def _fit(self, source: Source) -> None:
        if (source.sample_rate, source.channels) != (self.sample_rate, self.channels):
            raise DeviceError(f"reopened {source.description} at another rate or channel count")
        self.description = source.description

    def _fit_first(self, source: Source) -> None:
        self.sample_rate, self.channels, self.description = source.sample_rate, source.channels, source.description

    def _opened(self, source: Source) -> None:
        if self._ever_opened:
            self.reopens += 1
            log.warning("microphone reopened: %s", source.description)
        else:
            log.info("capturing from %s", source.description)
        self._ever_opened = True
        self._first_try.set()

    # --- the source's producer thread -------------------------------------------------------------------------

    def _sink(self, generation: int, samples: npt.NDArray[np.float32], capture_time: float, missed: int) -> None:
        """Every block, on the source's producer thread: gap accounting after a loss, counters; queued for the
        loop's look; the visit's tap. Nothing else: the level and the ``on_blocks`` hook run at the look.

        Only after a loss is a hole counted here: within one open stream the microphone reports its own
        overflows, and a late callback is late audio, not lost audio."""
        if generation != self._generation:  # a closed source's late callbacks are not counted
            return
        if self._expected is not None:
            missed += self._gap_before(capture_time)
        self.blocks += 1
        self.samples += len(samples)
        if missed:
            self.lost_samples += missed
        self._looked.append((samples, capture_time, missed))
        if self._announce:
            self._announce_first()
        tap = self._tap  # one attribute read (atomic): attach and detach happen on the loop
        if tap is not None:
            tap.put(samples, capture_time, missed)

    def _gap_before(self, capture_time: float) -> int:
        lost = missed_samples(self._expected, capture_time, self.sample_rate)
        self._expected = None
        if lost:
            log.warning("microphone delivered again after %.1f s without audio", lost / self.sample_rate)
        return lost

    def _announce_first(self) -> None:
        self._announce = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.look)  # "open" and the first block seen now, not at the next look

    # --- the loop's look at the blocks ------------------------------------------------------------------------

    def look(self) -> None:
        """On the event loop: the blocks since the last look through the level meter and ``on_blocks``; the state
        becomes ``open`` with the first of them. Cheap when there are none."""
        batch = self._take_looked()
        if not batch:
            return
        if self.state != "open":
            self.state = "open"
            self._policy.reset()
        rate = self.sample_rate
        power = self._power
        for block in batch:
            alpha = min(1.0, len(block.samples) / (rate * LEVEL_WINDOW_S))
            power += alpha * (block_power(block.samples) - power)
        self._power = power
        last = batch[-1]
        self._last_end = last.capture_time + len(last.samples) / rate
        if self.on_blocks is not None:
            self.on_blocks(batch, rate)

    def _take_looked(self) -> list[Block]:
        looked = self._looked
        batch = []
        for _ in range(len(looked)):
            samples, capture_time, missed = looked.popleft()
            batch.append(Block(samples, capture_time, missed))
        return batch
