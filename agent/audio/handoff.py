"""Bounded, drop-oldest hand-off between a capture callback thread and the thread that reads the source.

The producer (PortAudio's callback) must never block and never wait for the consumer: :meth:`Handoff.put` only
appends and, when the capacity is exceeded, drops the oldest blocks. Dropped samples are not forgotten: their
count travels with the next block still queued (``Block.missed``), so the DSP can keep the timeline equal to wall
time and announce the gap.

Every source delivers through one of these (the microphone from PortAudio's callback, file and synthetic
sources from their pacing thread with :meth:`Handoff.put_wait`, which waits for room instead of dropping), and
every recording consumes it the same way: the event loop asks for :meth:`Handoff.wake_fd` (an eventfd that
``put`` and ``close`` make readable; ``loop.add_reader`` on it) and drains with :meth:`Handoff.get_nowait`: one
wake-up of the loop per block instead of waking a reader thread that then wakes the loop (each thread wake-up
costs more CPU than the DSP of a 100 ms block). A producer that fails closes the buffer with its error
(:meth:`Handoff.fail`); the consumer raises it once the blocks before it are drained.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio.types import Block

_Entry = tuple[npt.NDArray[np.float32], float, int]
"""(samples, capture time, missed) of one queued block: a tuple, made in C (the producer is PortAudio's callback)."""


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
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads in get(timeout) or put_wait: only then does put notify the condition
        self._wake_fd: int | None = None
        self._fd_lock = threading.Lock()  # held while writing to or closing the wake fd (never the other lock)

    def put(self, samples: npt.NDArray[np.float32], capture_time: float, missed: int = 0) -> None:
        """Queue a block (the caller gives up ownership of ``samples``). Never blocks for long.

        Kept lean: it runs on the capture's thread for every block (a C lock, a tuple, one eventfd write). The
        write comes after the queue's lock is released, under the wake fd's own lock: the write lets go of the GIL,
        the consumer it wakes takes the queue's lock at once, and a write under that lock made it wait for this
        thread again (two more context switches a block, measured)."""
        with self._lock:
            self.stats.blocks_in += 1
            self._queue.append((samples, capture_time, missed))
            self._queued_samples += len(samples)
            if self._queued_samples > self.capacity_samples:
                self._drop_excess()
            if self._waiting:
                self._cond.notify_all()
        if self._wake_fd is not None:
            self._signal()

    def put_wait(self, samples: npt.NDArray[np.float32], capture_time: float, missed: int = 0) -> bool:
        """Queue a block, first waiting while the buffer is full (for producers that may wait: generated audio).

        False, and nothing queued, when the buffer is closed."""
        with self._cond:
            while self._queue and self._queued_samples + len(samples) > self.capacity_samples and not self._closed:
                self._wait(None)
            if self._closed:
                return False
        self.put(samples, capture_time, missed)
        return True

    def _wait(self, timeout: float | None) -> None:
        self._waiting += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def _drop_excess(self) -> None:
        """Drop the oldest blocks while over capacity (never the newest); their samples and their own ``missed``
        are added to the ``missed`` of the block that is oldest after them."""
        while self._queued_samples > self.capacity_samples and len(self._queue) > 1:
            samples, _, missed = self._queue.popleft()
            self._queued_samples -= len(samples)
            self.stats.blocks_dropped += 1
            self.stats.samples_dropped += len(samples)
            head, at, head_missed = self._queue[0]
            self._queue[0] = (head, at, head_missed + missed + len(samples))

    def get(self, timeout: float | None = None) -> Block | None:
        """Oldest queued block; None if none arrived within ``timeout`` seconds or the buffer is closed and empty."""
        with self._cond:
            if not self._queue and not self._closed:
                self._wait(timeout)
            if not self._queue:
                return None
            return self._pop()

    def _pop(self) -> Block:
        samples, capture_time, missed = self._queue.popleft()
        self._queued_samples -= len(samples)
        if self._waiting:
            self._cond.notify_all()  # a producer waiting in put_wait
        return Block(samples=samples, capture_time=capture_time, missed=missed)

    def get_nowait(self) -> Block | None:
        """Oldest queued block, or None if none is queued (never waits)."""
        with self._cond:
            if not self._queue:
                return None
            return self._pop()

    def wake_fd(self) -> int:
        """An eventfd that becomes readable on every ``put`` and on ``close`` (created on first call).

        The reader calls :meth:`clear_wake` before draining with :meth:`get_nowait`, and :meth:`close_wake_fd`
        when done with it."""
        with self._fd_lock:
            if self._wake_fd is None:
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._wake_fd

    def clear_wake(self) -> None:
        """Make the wake fd unreadable again (it counts puts; one read resets it)."""
        fd = self._wake_fd  # the reader's own fd: only the reader closes it
        if fd is None:
            return
        with contextlib.suppress(BlockingIOError):  # nothing signalled since the last clear
            os.eventfd_read(fd)

    def close_wake_fd(self) -> None:
        with self._fd_lock:  # not while a producer writes to it: the number could be reused by then
            fd, self._wake_fd = self._wake_fd, None
            if fd is not None:
                os.close(fd)

    def _signal(self) -> None:
        # After the queue changed, outside its lock. A non-blocking eventfd write never waits (it could only fail
        # after 2**64 - 2 unread puts).
        with self._fd_lock:
            if self._wake_fd is not None:
                os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        """Wake any waiting reader; blocks still queued can be read, then ``get`` returns None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._signal()

    def fail(self, error: BaseException) -> None:
        """Close with the producer's error: the consumer raises it after draining what was queued before it."""
        with self._cond:
            self._error = error
        self.close()

    @property
    def error(self) -> BaseException | None:
        with self._cond:
            return self._error

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def queued_samples(self) -> int:
        with self._cond:
            return self._queued_samples


def read_blocks(handoff: Handoff, poll_s: float = 0.1) -> Iterator[Block]:
    """Blocks on the calling thread until the buffer closes (raising the producer's error, if any): for the
    diagnostics (``check``), not the recording path."""
    while True:
        block = handoff.get(timeout=poll_s)
        if block is not None:
            yield block
        elif handoff.closed and handoff.queued_samples == 0:
            if handoff.error is not None:
                raise handoff.error
            return
