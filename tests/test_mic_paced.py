"""The paced microphone reader (:class:`agent.audio.mic_paced.PacedReader`) on a scripted stream, without PortAudio:
what it asks the stream for at each pace, how it stamps a read, and that a failing read or an overflow reaches its
owner instead of vanishing. The real stream, and sample continuity across pace switches, are in
tests/test_mic_paced_pulse.py."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from agent.audio import mic_paced
from agent.audio.mic_paced import PacedReader

BLOCK = 4
RATE = 1000


class ScriptedStream:
    """Frames become available when the test says so; a read takes exactly what it asks for, in order (a counter)."""

    channels = 1
    dtype = "float32"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._available = 0
        self._next = 0
        self.reads: list[int] = []
        self.overflow_on_read: set[int] = set()
        self.fail_on_read: int | None = None
        self.started = False

    def start(self) -> None:
        self.started = True

    @property
    def read_available(self) -> int:
        with self._cond:
            return self._available

    def arrive(self, frames: int) -> None:
        with self._cond:
            self._available += frames
            self._cond.notify_all()

    def read_into(self, array: np.ndarray[Any, Any]) -> bool:
        """Blocks until the frames are there (a blocking ``Pa_ReadStream``)."""
        with self._cond:
            if self.fail_on_read == len(self.reads):
                raise OSError("device lost")
            assert self._cond.wait_for(lambda: self._available >= len(array), timeout=60), "no frames came"
            self._available -= len(array)
            array[:, 0] = np.arange(self._next, self._next + len(array))
            self._next += len(array)
            self.reads.append(len(array))
            return len(self.reads) - 1 in self.overflow_on_read


Delivered = list[tuple[np.ndarray[Any, Any], float, bool]]


def reader_on(stream: ScriptedStream, now: float = 50.0) -> tuple[PacedReader, Delivered]:
    got: Delivered = []
    reader = PacedReader(stream, stream.read_into, BLOCK, lambda s, at, over: got.append((s.copy(), at, over)),
                         lambda: now, RATE)  # fmt: skip
    return reader, got


def finish(reader: PacedReader, stream: ScriptedStream) -> None:
    """Stop the reader the way it stops on a device: the read it is in returns with the next block."""
    reader.stop()
    stream.arrive(BLOCK)
    reader.join()
    assert not reader.running


def all_read_and_delivered(stream: ScriptedStream, got: Delivered, frames: int) -> bool:
    return sum(stream.reads) == frames and len(got) == len(stream.reads)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mic_paced, "IDLE_READ_S", 0.05)


def test_idle_reads_every_whole_block_waiting_in_one_read_stamped_back_from_now() -> None:
    stream = ScriptedStream()
    reader, got = reader_on(stream)
    stream.arrive(3 * BLOCK + 1)  # three whole blocks and one frame of the next
    reader.start()
    try:
        wait_for(lambda: len(got) >= 1)
    finally:
        reader.join()
    samples, at, overflowed = got[0]
    assert stream.started and stream.reads[0] == 3 * BLOCK  # the partial block stays for the next read
    assert samples[:, 0].tolist() == list(range(3 * BLOCK)) and not overflowed
    assert at == pytest.approx(50.0 - 3 * BLOCK / RATE)  # the read's last sample is "now"
    assert not reader.running and reader.error is None


def test_a_visit_reads_block_by_block_and_continues_where_idle_stopped() -> None:
    stream = ScriptedStream()
    reader, got = reader_on(stream)
    stream.arrive(2 * BLOCK)
    reader.start()
    try:
        wait_for(lambda: len(got) >= 1)
        reader.set_idle(False)  # what is waiting when the reader wakes goes out in one read, then block by block
        stream.arrive(3 * BLOCK)
        wait_for(lambda: sum(stream.reads) == 5 * BLOCK)
        for blocks in (6, 7):
            stream.arrive(BLOCK)
            wait_for(functools.partial(all_read_and_delivered, stream, got, blocks * BLOCK))
    finally:
        finish(reader, stream)
    assert stream.reads[-2:] == [BLOCK, BLOCK]
    frames = np.concatenate([samples[:, 0] for samples, _, _ in got])
    assert frames[: 7 * BLOCK].tolist() == list(range(7 * BLOCK))  # nothing lost or repeated at the switch


def test_an_overflow_reported_by_a_read_reaches_the_owner_with_that_read() -> None:
    stream = ScriptedStream()
    stream.overflow_on_read = {1}
    reader, got = reader_on(stream)
    reader.set_idle(False)
    stream.arrive(3 * BLOCK)
    reader.start()
    try:
        wait_for(lambda: len(got) >= 3)
    finally:
        finish(reader, stream)
    assert [over for _, _, over in got[:3]] == [False, True, False]


def test_a_failing_read_ends_the_reader_and_is_kept_for_the_owner() -> None:
    stream = ScriptedStream()
    stream.fail_on_read = 1
    reader, got = reader_on(stream)
    reader.set_idle(False)
    stream.arrive(2 * BLOCK)
    reader.start()
    wait_for(lambda: not reader.running)
    assert len(got) == 1 and isinstance(reader.error, OSError) and "device lost" in str(reader.error)


def test_stop_ends_an_idle_reader_without_reading() -> None:
    stream = ScriptedStream()
    reader, got = reader_on(stream)
    mic_paced.IDLE_READ_S = 60.0  # the fixture restores it: the reader would wait a minute
    reader.start()
    reader.join()  # wakes the idle wait; returns long before the minute
    assert not reader.running and stream.reads == [] and got == []
