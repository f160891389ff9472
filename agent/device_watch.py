"""Continuous capture for the daemon: the configured source stays open between visits, a lost device is reopened.

:class:`Capture` runs one thread that reads the source for as long as the daemon runs. Between visits the blocks
are only counted and metered (cheap: no DSP, archive or stream), so the watchdog can tell a stalled or unplugged
microphone even when nobody is recording. During a visit every block is also handed to a :class:`CaptureTap`, a
:class:`~agent.audio.types.Source` that the visit's recorder reads.

Device loss: when the source raises DeviceError (PortAudio reports the stream dead, or it stopped delivering) or
ends, the thread closes it and reopens it *by name* (the same spec, pinned to the first rate and channel count so a
running visit's pipeline still fits) with capped exponential backoff (:class:`ReopenPolicy`, pure). The first block
after a reopen carries ``Block.missed`` = the wall-clock time lost, in source samples, so the DSP fills the visit
timeline with silence and reports a Gap: the archive stays wall-clock true and the stream announces the gap.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio.handoff import Handoff
from agent.audio.types import Block, Source
from agent.errors import AgentError, DeviceError

log = logging.getLogger(__name__)

SourceFactory = Callable[[], Source]
LEVEL_WINDOW_S = 0.3
"""Time constant in seconds of the input level meter (exponential average of the power)."""
MIN_GAP_S = 0.05
"""A discontinuity after a reopen shorter than this (seconds) is capture jitter, not a gap."""


def level_dbfs(power: float) -> float | None:
    """Mean square of float samples -> dBFS (RMS of a full-scale square wave = 0 dBFS); None for silence."""
    if power <= 1e-20:
        return None
    return 10.0 * math.log10(power)


def block_power(samples: npt.NDArray[np.float32]) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0


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


class CaptureTap:
    """The visit's view of the running capture (a Source). Opening or closing it never touches the device."""

    def __init__(self, capture: Capture, handoff_seconds: float) -> None:
        self._capture = capture
        self._rate = capture.sample_rate
        self._channels = capture.channels
        self.handoff = Handoff(max(1, round(handoff_seconds * self._rate)))
        self._stopped = threading.Event()
        self._attached_at = capture.now()
        self._first = True

    @property
    def description(self) -> str:
        return self._capture.description

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    def __enter__(self) -> CaptureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def put(self, block: Block) -> None:
        missed = block.missed
        if self._first:
            # A device lost before the visit began: only the part after the visit's start is the visit's gap.
            self._first = False
            missed = min(missed, max(0, round((block.capture_time - self._attached_at) * self._rate)))
        self.handoff.put(block.samples, block.capture_time, missed)

    def read(self) -> Block | None:
        while not self._stopped.is_set():
            block = self.handoff.get(timeout=0.1)
            if block is not None:
                return block
        return None

    def check_alive(self) -> None:
        """Never raises: the capture thread reopens a lost device and the gap is reported in the blocks."""

    def stop(self) -> None:
        self._stopped.set()
        self._capture.detach(self)
        self.handoff.close()


class Capture:
    """Reads the source on its own thread for the daemon's lifetime; see the module docstring."""

    def __init__(self, open_source: Callable[[int | None, int | None], Source], *, retry_cap_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``open_source(rate, channels)`` opens (not enters) the configured source, pinned when not None."""
        self._open = open_source
        self._policy = ReopenPolicy(cap_s=retry_cap_s)
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tap: CaptureTap | None = None
        self._current: Source | None = None
        self._last_end: float | None = None
        self._thread: threading.Thread | None = None
        self._first_open = threading.Event()
        self._open_error: AgentError | None = None
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
        self.on_block: Callable[[Block, int], None] | None = None
        """Called on the capture thread with every block and its sample rate (the microphone health detector);
        must be quick and must not raise."""

    # --- control (daemon thread) ------------------------------------------------------------------------------

    def start(self, timeout_s: float) -> None:
        """Start the thread and wait (bounded) for the first open; raise its error if it failed at once."""
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        self._first_open.wait(timeout_s)
        if self._open_error is not None and self.sample_rate == 0:
            raise self._open_error

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            tap, current = self._tap, self._current
        if tap is not None:
            tap.stop()
        if current is not None:
            current.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def now(self) -> float:
        return self._clock()

    @property
    def level_dbfs(self) -> float | None:
        return level_dbfs(self._power) if self.state == "open" else None

    def tap(self, handoff_seconds: float) -> CaptureTap:
        """A new Source for a visit, fed from the next block on. One at a time."""
        if self.sample_rate == 0:
            raise DeviceError(f"the microphone is not open yet ({self.description or 'opening'})")
        tap = CaptureTap(self, handoff_seconds)
        with self._lock:
            if self._tap is not None:
                raise RuntimeError("a capture tap is already attached")
            self._tap = tap
        return tap

    def detach(self, tap: CaptureTap) -> None:
        with self._lock:
            if self._tap is tap:
                self._tap = None

    # --- capture thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        expected: float | None = None  # capture time where the next block should start (after a loss)
        while not self._stop.is_set():
            try:
                source = self._open(self.sample_rate or None, self.channels or None)
                with source:
                    self._opened(source)
                    self._pump(source, expected)
                reason = "the source ended"
            except AgentError as exc:
                reason = str(exc)
                if self.sample_rate == 0:
                    self._open_error = exc
            except Exception as exc:  # the capture must outlive any device bug; logged in full
                log.exception("capture failed unexpectedly")
                reason = f"unexpected {type(exc).__name__}"
            finally:
                self._first_open.set()
                with self._lock:
                    self._current = None
            expected = self._last_end
            if self._stop.is_set():
                break
            self.state = "lost"
            delay = self._policy.next_delay()
            log.warning("microphone lost (%s); reopening in %.1f s", reason, delay)
            self._stop.wait(delay)

    def _opened(self, source: Source) -> None:
        if self.sample_rate and (source.sample_rate, source.channels) != (self.sample_rate, self.channels):
            raise DeviceError(f"reopened {source.description} at another rate or channel count")
        if self.sample_rate:
            self.reopens += 1
            log.warning("microphone reopened: %s", source.description)
        else:
            log.info("capturing from %s", source.description)
        self.sample_rate, self.channels, self.description = source.sample_rate, source.channels, source.description
        self._first_open.set()

    def _pump(self, source: Source, expected: float | None) -> float | None:
        """Read blocks until the source fails or ends; returns where the next block should start.

        ``expected`` is only set after a loss: within one open stream MicSource reports its own overflows, and a
        late callback is late audio, not lost audio."""
        with self._lock:
            self._current = source
        if self._stop.is_set():
            return expected
        while not self._stop.is_set():
            block = source.read()
            if block is None:
                return expected
            missed = missed_samples(expected, block.capture_time, source.sample_rate)
            expected = None
            if missed:
                log.warning("microphone delivered again after %.1f s without audio", missed / source.sample_rate)
                block = Block(block.samples, block.capture_time, block.missed + missed)
            self._count(block)
            self._last_end = block.capture_time + len(block.samples) / source.sample_rate
        return expected

    def _count(self, block: Block) -> None:
        if self.state != "open":
            self.state = "open"
            self._policy.reset()
        self.blocks += 1
        self.samples += len(block.samples)
        self.lost_samples += block.missed
        alpha = min(1.0, len(block.samples) / (self.sample_rate * LEVEL_WINDOW_S))
        self._power += alpha * (block_power(block.samples) - self._power)
        if self.on_block is not None:
            self.on_block(block, self.sample_rate)
        with self._lock:
            tap = self._tap
        if tap is not None:
            tap.put(block)
