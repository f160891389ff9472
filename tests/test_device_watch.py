"""The daemon's device watch (:class:`agent.device_watch.Capture`) without PortAudio: a source that ends is reopened
by the watch task, the blocks reach a visit's tap through the one hand-off (no capture thread), and the time the
source was away arrives as ``Block.missed`` on the first block after the reopen, counted once."""

from __future__ import annotations

import asyncio

import pytest

import agent.device_watch
from agent.audio.synth import SynthSource, parse_recipe
from agent.audio.types import Block, BlockSink, Source
from agent.device_watch import Capture
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
