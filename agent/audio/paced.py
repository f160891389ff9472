"""Base for sources that generate their audio (WAV file, synthetic): block production plus pacing.

``realtime`` pacing delivers each block when its last sample would have been captured by a microphone that
started at the first ``read`` (using the injected clock and sleep, so tests run instantly with a fake clock);
``fast`` delivers blocks as fast as they are asked for. Capture times are derived from the stream position
(first read's clock + position / rate) in both modes, so they are deterministic.

Inside the context manager a producer thread (the equivalent of the microphone's callback) reads the blocks and
puts them into :attr:`PacedSource.handoff`, waiting for room (``put_wait``: generated audio is never dropped),
or hands them to the ``sink`` given instead (the daemon's device watch); at the end it closes the hand-off, on an
error (a truncated file) it fails it with that error.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.audio.handoff import Handoff
from agent.audio.types import Block, BlockSink, FixedFormat

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Pace = Literal["realtime", "fast"]

BLOCK_SECONDS = 0.02
"""Default block length of generated sources in seconds (what a microphone callback typically delivers)."""
FAST_BLOCK_SECONDS = 1.0
"""Default block length in seconds when paced ``fast``: nobody waits for the audio, and the per-block work
(hand-offs, wake-ups, wire messages) dominated: 20 ms blocks ran the whole pipeline at ~200x real time, 1 s blocks
at ~700x (``python -m benchmarks --only throughput``)."""
HANDOFF_SECONDS = 5.0
"""Capacity of a generated source's hand-off in seconds of audio (at least four blocks)."""


class PacedSource(FixedFormat, abc.ABC):
    """Subclasses set ``_rate``/``_channels`` and implement ``_produce(n)``; this class does the rest."""

    def __init__(
        self,
        *,
        pace: Pace,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        block_frames: int | None = None,
        sink: BlockSink | None = None,
    ) -> None:
        """``sink``: deliver blocks there instead of into :attr:`handoff` (which then only signals the end)."""
        self._pace = pace
        self._clock = clock
        self._sleep = sleep
        self._block_frames = block_frames
        self._position = 0
        self._t0: float | None = None
        self._stopped = threading.Event()
        self._sink = sink
        self._handoff: Handoff | None = None
        self._producer: threading.Thread | None = None

    @property
    def handoff(self) -> Handoff:
        if self._handoff is None:  # sized once the subclass knows its rate
            block = self._block_frames or round(self._rate * FAST_BLOCK_SECONDS)
            self._handoff = Handoff(max(4 * block, round(self._rate * HANDOFF_SECONDS)))
        return self._handoff

    def start(self) -> None:
        """Start the producer thread (``__enter__`` of the subclasses calls it)."""
        handoff = self.handoff
        if self._producer is None:
            self._producer = threading.Thread(target=self._produce_all, args=(handoff,), name="paced-source",
                                              daemon=True)  # fmt: skip
            self._producer.start()

    def _produce_all(self, handoff: Handoff) -> None:
        try:
            while (block := self.read()) is not None:
                if self._sink is not None:
                    self._sink(block.samples, block.capture_time, block.missed)
                elif not handoff.put_wait(block.samples, block.capture_time, block.missed):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            handoff.fail(exc)
            return
        handoff.close()

    def join(self, timeout: float = 10.0) -> None:
        """Stop and wait for the producer thread."""
        self.stop()
        producer = self._producer
        if producer is not None and producer is not threading.current_thread():
            producer.join(timeout)

    def check_alive(self) -> None:
        """Never raises: the end of a generated source or its error arrive through the hand-off."""

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
        if self._handoff is not None:
            self._handoff.close()
