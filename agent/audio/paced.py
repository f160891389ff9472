"""Base for sources that generate their audio (WAV file, synthetic): block production plus pacing.

``realtime`` pacing delivers each block when its last sample would have been captured by a microphone that
started at the first ``read`` (using the injected clock and sleep, so tests run instantly with a fake clock);
``fast`` delivers blocks as fast as they are asked for. Capture times are derived from the stream position
(first read's clock + position / rate) in both modes, so they are deterministic.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.audio.types import Block

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Pace = Literal["realtime", "fast"]

BLOCK_SECONDS = 0.02
"""Default block length of generated sources in seconds (what a microphone callback typically delivers)."""
FAST_BLOCK_SECONDS = 1.0
"""Default block length in seconds when paced ``fast``: nobody waits for the audio, and the per-block work
(hand-offs, wake-ups, wire messages) dominated: 20 ms blocks ran the whole pipeline at ~200x real time, 1 s blocks
at ~700x (``python -m benchmarks --only throughput``)."""


class PacedSource(abc.ABC):
    """Subclasses set ``_rate``/``_channels`` and implement ``_produce(n)``; this class does the rest."""

    _rate: int
    _channels: int

    def __init__(
        self,
        *,
        pace: Pace,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        block_frames: int | None = None,
    ) -> None:
        self._pace = pace
        self._clock = clock
        self._sleep = sleep
        self._block_frames = block_frames
        self._position = 0
        self._t0: float | None = None
        self._stopped = threading.Event()

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def position(self) -> int:
        """Source-rate sample frames delivered so far."""
        return self._position

    @abc.abstractmethod
    def _produce(self, n: int) -> npt.NDArray[np.float32] | None:
        """Up to ``n`` next sample frames, shape (k, channels), k >= 1; None at the end."""

    def read(self) -> Block | None:
        if self._stopped.is_set():
            return None
        seconds = BLOCK_SECONDS if self._pace == "realtime" else FAST_BLOCK_SECONDS
        block_frames = self._block_frames or max(1, round(self._rate * seconds))
        samples = self._produce(block_frames)
        if samples is None or len(samples) == 0:
            return None
        if self._t0 is None:
            self._t0 = self._clock()
        start = self._position
        self._position += len(samples)
        if self._pace == "realtime":
            due = self._t0 + self._position / self._rate
            wait = due - self._clock()
            if wait > 0:
                self._sleep(wait)
        return Block(samples=samples, capture_time=self._t0 + start / self._rate)

    def stop(self) -> None:
        self._stopped.set()
