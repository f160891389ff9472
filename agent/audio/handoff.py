"""Bounded, drop-oldest hand-off between a capture callback thread and the thread that reads the source.

The producer (PortAudio's callback) must never block and never wait for the consumer: :meth:`Handoff.put` only
appends and, when the capacity is exceeded, drops the oldest blocks. Dropped samples are not forgotten: their
count travels with the next block still queued (``Block.missed``), so the DSP can keep the timeline equal to wall
time and announce the gap.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio.types import Block


@dataclass
class _Entry:
    samples: npt.NDArray[np.float32]
    capture_time: float
    missed: int


@dataclass
class HandoffStats:
    """Counters of one hand-off buffer (read by metrics and tests; written under the buffer's lock)."""

    blocks_in: int = 0
    """Blocks the producer handed over."""
    blocks_dropped: int = 0
    """Blocks dropped because the consumer fell behind by more than the capacity (drop-oldest)."""
    samples_dropped: int = 0
    """Source-rate sample frames in the dropped blocks."""


class Handoff:
    """Thread-safe FIFO of blocks bounded by ``capacity_samples`` source-rate sample frames."""

    def __init__(self, capacity_samples: int) -> None:
        if capacity_samples <= 0:
            raise ValueError("capacity_samples must be positive")
        self.capacity_samples = capacity_samples
        self.stats = HandoffStats()
        self._queue: deque[_Entry] = deque()
        self._queued_samples = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, samples: npt.NDArray[np.float32], capture_time: float, missed: int = 0) -> None:
        """Queue a block (the caller gives up ownership of ``samples``). Never blocks for long."""
        with self._cond:
            self.stats.blocks_in += 1
            self._queue.append(_Entry(samples, capture_time, missed))
            self._queued_samples += len(samples)
            while self._queued_samples > self.capacity_samples and len(self._queue) > 1:
                self._drop_oldest()
            self._cond.notify()

    def _drop_oldest(self) -> None:
        old = self._queue.popleft()
        lost = old.missed + len(old.samples)
        self._queued_samples -= len(old.samples)
        self.stats.blocks_dropped += 1
        self.stats.samples_dropped += len(old.samples)
        self._queue[0].missed += lost

    def get(self, timeout: float | None = None) -> Block | None:
        """Oldest queued block; None if none arrived within ``timeout`` seconds or the buffer is closed and empty."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            if not self._queue:
                return None
            entry = self._queue.popleft()
            self._queued_samples -= len(entry.samples)
            return Block(samples=entry.samples, capture_time=entry.capture_time, missed=entry.missed)

    def close(self) -> None:
        """Wake any waiting reader; blocks still queued can be read, then ``get`` returns None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def queued_samples(self) -> int:
        with self._cond:
            return self._queued_samples
