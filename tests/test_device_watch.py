"""The daemon's device watch (:class:`agent.device_watch.Capture`) without PortAudio: a source that ends is reopened
by the watch task, the blocks reach a visit's tap through the one hand-off (no capture thread), and the time the
source was away arrives as ``Block.missed`` on the first block after the reopen, counted once. The level meter and
the ``on_blocks`` hook (the microphone health detector) see every block once, in order, on the event loop, not on
the producer's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import agent.device_watch
from agent.audio.synth import SynthSource, parse_recipe
from agent.audio.types import Block, BlockSink, Source
from agent.device_watch import Capture, CaptureTap, level_dbfs
from agent.errors import DeviceError

RATE = 16000


def test_a_source_that_ends_is_reopened_and_the_tap_gets_the_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.device_watch, "CHECK_S", 0.02)
    opened: list[tuple[int, int] | None] = []

    def open_source(pin: tuple[int, int] | None, sink: BlockSink) -> Source:
        opened.append(pin)  # 0.4 s of tone in real time, 20 ms blocks, then the "device" is gone
        return SynthSource(parse_recipe(f"{RATE}:tone=440/0.4/-20"), pace="realtime", sink=sink)

    async def main() -> tuple[Capture, list[Block]]:
        capture = Capture(open_source, retry_cap_s=0.5)
        await capture.start(10.0)
        tap = capture.tap(5.0)
        blocks: list[Block] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while capture.reopens < 1 or not any(b.missed for b in blocks):
            assert loop.time() < deadline, "no reopen with a gap"
            while (block := tap.handoff.get_nowait()) is not None:
                blocks.append(block)
            await asyncio.sleep(0.01)
        tap.stop()
        await capture.stop()
        return capture, blocks

    capture, blocks = asyncio.run(main())
    assert opened[0] is None and opened[1] == (RATE, 1)  # reopened by name, pinned to the first rate and channels
    [gap] = [b.missed for b in blocks if b.missed]
    assert gap == capture.lost_samples >= 0.45 * RATE  # the 0.5 s reopen delay, as silence for the visit
    assert all(b.samples.shape == (320, 1) for b in blocks)


def test_a_source_that_cannot_open_at_start_is_reported() -> None:
    def open_source(pin: tuple[int, int] | None, sink: BlockSink) -> Source:
        raise DeviceError("no input device matching 'usb'")

    async def main() -> None:
        capture = Capture(open_source, retry_cap_s=0.5)
        try:
            await capture.start(10.0)
        finally:
            await capture.stop()

    with pytest.raises(DeviceError, match="no input device"):
        asyncio.run(main())


def test_the_level_and_the_hook_see_every_block_once_in_order_on_the_event_loop() -> None:
    def open_source(pin: tuple[int, int] | None, sink: BlockSink) -> Source:  # a -20 dBFS (peak) tone, 20 ms blocks
        return SynthSource(parse_recipe(f"{RATE}:tone=440/30/-20"), pace="realtime", sink=sink)

    seen: list[Block] = []
    threads: set[str] = set()

    def hook(blocks: Sequence[Block], rate: int) -> None:
        assert rate == RATE
        threads.add(threading.current_thread().name)
        seen.extend(blocks)

    async def main() -> tuple[Capture, list[Block], float | None]:
        threading.current_thread().name = "the-loop"
        capture = Capture(open_source, retry_cap_s=0.5)
        capture.on_blocks = hook
        await capture.start(10.0)
        tap = capture.tap(5.0)
        got: list[Block] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(got) < 100 or not seen:  # 2 s through the tap: the level meter (0.3 s time constant) settles
            assert loop.time() < deadline, f"{len(got)} blocks through the tap, {len(seen)} looked at"
            got.extend(iter(tap.handoff.get_nowait, None))
            await asyncio.sleep(0.01)
        capture.look()
        level = capture.level_dbfs
        tap.stop()
        await capture.stop()
        return capture, got, level

    capture, got, level = asyncio.run(main())
    assert threads == {"the-loop"}  # never the source's producer thread
    assert len(seen) == capture.blocks and sum(len(b.samples) for b in seen) == capture.samples
    starts = [b.capture_time for b in seen]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # in order, none twice
    first = next(i for i, b in enumerate(seen) if b.samples is got[0].samples)  # the very arrays the tap got
    assert all(a.samples is b.samples for a, b in zip(seen[first:], got, strict=False))
    assert level is not None and abs(level - (-20 - 3.01)) < 0.5  # a sine's RMS is 3.01 dB below its peak
    assert level_dbfs(0.0) is None


class PacedSynth(SynthSource):
    """A synthetic source that records what the capture tells it about the pace (the microphone's ``set_idle``)."""

    def __init__(self, sink: BlockSink, paces: list[bool]) -> None:
        super().__init__(parse_recipe(f"{RATE}:tone=440/30/-20"), pace="realtime", sink=sink)
        self.paces = paces

    def set_idle(self, idle: bool) -> None:
        self.paces.append(idle)


def test_a_paced_source_is_idle_except_while_a_tap_is_attached() -> None:
    paces: list[bool] = []

    async def main() -> None:
        capture = Capture(lambda pin, sink: PacedSynth(sink, paces), retry_cap_s=0.5)
        await capture.start(10.0)
        assert paces == [True]  # opened idle: no visit
        tap = capture.tap(5.0)
        assert paces == [True, False]  # a visit's tap: block by block from now on
        tap.stop()
        assert paces == [True, False, True]
        await capture.stop()

    asyncio.run(main())


class StubCapture:
    """What a CaptureTap reads of its capture: format, clock (fixed at 100.0 s) and detach."""

    sample_rate = RATE
    channels = 1
    description = "stub"

    def now(self) -> float:
        return 100.0

    def detach(self, tap: object) -> None:
        pass


def test_a_tap_takes_no_block_that_ended_before_it_was_attached() -> None:
    tap = CaptureTap(StubCapture(), 5.0)  # type: ignore[arg-type]
    # A paced source hands on what waited since its last read, blocks from before the visit began among them.
    for start in (99.0, 99.5, 99.97, 99.99, 100.01):  # 20 ms blocks: the first three end before 100.0
        tap.put(np.zeros((320, 1), np.float32), start, 0)
    blocks = []
    while (block := tap.handoff.get_nowait()) is not None:
        blocks.append(block.capture_time)
    assert blocks == [99.99, 100.01]


class DyingSynth(SynthSource):
    """A synthetic tone whose device dies (``check_alive`` raises) once ``dead`` is set."""

    def __init__(self, sink: BlockSink, dead: threading.Event) -> None:
        super().__init__(parse_recipe(f"{RATE}:tone=440/30/-20"), pace="realtime", sink=sink)
        self.dead = dead

    def check_alive(self) -> None:
        if self.dead.is_set():
            raise DeviceError("the device is gone")


@pytest.mark.parametrize("loss", ["ended", "dead"])
def test_a_driven_capture_reopens_a_lost_source_only_when_its_owner_checks(loss: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's capture has no timer of its own (one wake-up a second less): its tick calls ``check``."""
    monkeypatch.setattr(agent.device_watch, "CHECK_S", 0.005)  # a timer of its own would reopen within the wait below
    dead = threading.Event()
    opened: list[Source] = []

    def open_source(pin: tuple[int, int] | None, sink: BlockSink) -> Source:
        recipe = parse_recipe(f"{RATE}:tone=440/0.2/-20")  # the first one ends after 0.2 s, or dies when told
        source = SynthSource(recipe, pace="realtime", sink=sink) if loss == "ended" else DyingSynth(sink, dead)
        opened.append(source if not opened else SynthSource(recipe, pace="realtime", sink=sink))
        return opened[-1]

    async def until(done: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while not done():
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.01)

    async def main() -> Capture:
        capture = Capture(open_source, retry_cap_s=0.5, driven=True)
        await capture.start(10.0)
        await until(lambda: capture.blocks > 0, "no block")
        dead.set()
        await until(lambda: opened[0].handoff.closed if loss == "ended" else True, "the source did not end")
        for _ in range(10):  # the lost source stays until the owner looks: no timer of the capture's own
            await asyncio.sleep(0.005)
        assert (len(opened), capture.state) == (1, "open")
        capture.check()
        await until(lambda: capture.reopens == 1 and capture.state == "open", "not reopened after the check")
        await capture.stop()
        return capture

    capture = asyncio.run(main())
    assert len(opened) == 2 and capture.reopens == 1
