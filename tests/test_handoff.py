"""The hand-off's producer side (:meth:`agent.audio.handoff.Handoff.put`, PortAudio's callback) kept lean: no
condition notify unless a thread waits, one eventfd write per block; what it must still do: count, drop the oldest
when over capacity carrying every lost sample (the dropped blocks' own ``missed`` too), wake waiting readers and
producers. Waiting is by polling with a deadline on the number of waiting threads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np

from agent.audio.handoff import Handoff

DEADLINE_S = 30.0


def block(value: float, frames: int = 100) -> np.ndarray:
    return np.full((frames, 1), value, dtype=np.float32)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_dropping_carries_the_dropped_blocks_own_missed_samples_to_the_next() -> None:
    h = Handoff(capacity_samples=250)
    h.put(block(0), 0.0, missed=7)
    h.put(block(1), 1.0, missed=11)
    h.put(block(2), 2.0, missed=13)  # 300 > 250: block 0 (100 samples, 7 missed before it) goes
    h.put(block(3), 3.0)  # block 1 goes
    assert h.stats.blocks_in == 4 and h.stats.blocks_dropped == 2 and h.stats.samples_dropped == 200
    head = h.get_nowait()
    assert head is not None and head.capture_time == 2.0 and float(head.samples[0, 0]) == 2.0
    assert head.missed == 13 + (100 + 11) + (100 + 7)  # nothing lost goes uncounted
    last = h.get_nowait()
    assert last is not None and last.missed == 0 and h.get_nowait() is None and h.queued_samples == 0


def test_the_newest_block_is_kept_even_when_larger_than_the_capacity() -> None:
    h = Handoff(capacity_samples=50)
    h.put(block(1), 1.0)
    h.put(block(2), 2.0)
    got = h.get_nowait()
    assert got is not None and got.capture_time == 2.0 and got.missed == 100 and h.get_nowait() is None


def test_each_put_makes_the_wake_fd_readable_and_one_read_clears_it() -> None:
    h = Handoff(capacity_samples=1000)
    fd = h.wake_fd()
    try:
        h.put(block(1), 1.0)
        h.put(block(2), 2.0)
        assert os.eventfd_read(fd) == 2  # one write per put
        h.put(block(3), 3.0)
        h.clear_wake()
        h.put(block(4), 4.0)
        h.close_wake_fd()
        h.put(block(5), 5.0)  # after close_wake_fd: no write to a closed (or reused) descriptor
        assert [b.capture_time for b in iter(h.get_nowait, None)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        h.close_wake_fd()


def test_the_consumer_never_waits_for_a_producer_writing_the_wake_fd() -> None:
    """The wake write lets go of the GIL and wakes the consumer: it must find the queue free (a write under the
    queue's lock made the woken event loop wait for the capture thread once more per block)."""
    h = Handoff(capacity_samples=1000)
    h.wake_fd()
    try:
        h.put(block(1), 1.0)
        got: list[object] = []
        with h._fd_lock:  # a producer is writing to the wake fd right now
            consumer = threading.Thread(target=lambda: (h.clear_wake(), got.append(h.get_nowait())))
            consumer.start()
            consumer.join(DEADLINE_S)
            assert not consumer.is_alive(), "the consumer waited for the producer's write"
        assert got and got[0] is not None
    finally:
        h.close_wake_fd()


def test_a_put_wakes_a_reader_waiting_in_get() -> None:
    h = Handoff(capacity_samples=1000)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(h.get(timeout=DEADLINE_S)))
    reader.start()
    until(lambda: h._waiting == 1, "the reader waits")
    h.put(block(1), 1.0)
    reader.join(DEADLINE_S)
    assert not reader.is_alive() and len(got) == 1 and got[0] is not None and h._waiting == 0


def test_put_wait_waits_for_room_and_a_get_wakes_it() -> None:
    h = Handoff(capacity_samples=100)
    h.put(block(1), 1.0)
    done: list[bool] = []
    producer = threading.Thread(target=lambda: done.append(h.put_wait(block(2), 2.0)))
    producer.start()
    until(lambda: h._waiting == 1, "the producer waits for room")
    assert h.stats.blocks_dropped == 0 and not done
    first = h.get_nowait()
    producer.join(DEADLINE_S)
    assert not producer.is_alive() and done == [True] and first is not None and first.capture_time == 1.0
    second = h.get_nowait()
    assert second is not None and second.capture_time == 2.0 and second.missed == 0 and h.stats.blocks_dropped == 0
