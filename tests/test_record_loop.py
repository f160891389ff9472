"""``Recorder.run_on_loop``: the event-loop-driven recording of a hand-off source (the microphone's path in a
visit) gives the same archive, sample for sample, as the pipeline run by hand on the same blocks; it stops,
honours the duration limit, reports a stalled device and always leaves a finished WAV."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import agent.recorder
from agent.audio.handoff import Handoff
from agent.audio.pipeline import AudioPipeline, PipelineOutput
from agent.audio.types import Block
from agent.audio.vad import SegmentEnd
from agent.audio.wavfile import read_wav
from agent.errors import DeviceError
from agent.recorder import Recorder
from agent.settings import AgentSettings
from tests.plugins.archive import DIALOGUE, wav_pcm
from tests.plugins.keys import TEST_RECIPIENT

BLOCK_S = 0.1


def dialogue_blocks(seconds: float) -> tuple[list[npt.NDArray[np.float32]], int]:
    samples, rate = read_wav(str(DIALOGUE))
    n = round(rate * BLOCK_S)
    samples = samples[: round(rate * seconds)]
    return [samples[i : i + n].copy() for i in range(0, len(samples), n)], rate


class HandoffSource:
    """Puts the blocks into a Handoff from its own thread (like PortAudio's callback); ``close_at_end`` closes it
    after the last block (end of stream), otherwise it stays open (a live device) until stop()."""

    description = "handoff"
    channels = 1

    def __init__(self, blocks: list[npt.NDArray[np.float32]], rate: int, *, close_at_end: bool = True) -> None:
        self.sample_rate = rate
        self.handoff = Handoff(rate * 600)
        self._blocks = blocks
        self._close_at_end = close_at_end
        self.alive = True
        self.checks = 0
        self.on_check: Callable[[], None] = lambda: None
        self.producer = threading.Thread(target=self._produce)

    def _produce(self) -> None:
        for i, samples in enumerate(self._blocks):
            self.handoff.put(samples, (i + 1) * BLOCK_S)
        if self._close_at_end:
            self.handoff.close()

    def __enter__(self) -> HandoffSource:
        self.producer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.producer.join()

    def check_alive(self) -> None:
        self.checks += 1
        self.on_check()
        if not self.alive:
            raise DeviceError("handoff stopped delivering audio (device lost?)")

    def stop(self) -> None:
        self.handoff.close()


def reference(blocks: list[npt.NDArray[np.float32]], rate: int, settings: AgentSettings) -> tuple[bytes, int]:
    """The pipeline run by hand over the same blocks: every frame's pcm, and the number of segments."""
    pipeline = AudioPipeline(rate, settings.audio, settings.vad)
    outs = [pipeline.process(Block(b, (i + 1) * BLOCK_S)) for i, b in enumerate(blocks)] + [pipeline.finish()]
    pcm = b"".join(f.pcm for out in outs for f in out.frames)
    return pcm, sum(isinstance(e, SegmentEnd) for out in outs for e in out.events)


def test_loop_driven_archive_equals_the_pipeline_by_hand(tmp_path: Path) -> None:
    blocks, rate = dialogue_blocks(12.0)
    settings = AgentSettings()
    pcm, segment_count = reference(blocks, rate, settings)
    outputs_on: set[int] = set()
    segments: list[object] = []

    def on_output(out: PipelineOutput) -> None:
        outputs_on.add(threading.get_ident())

    async def main() -> agent.recorder.RecordSummary:
        recorder = Recorder(HandoffSource(blocks, rate), tmp_path / "loop.wav", settings, on_output=on_output,
                            recipient=TEST_RECIPIENT,
                            on_segment=segments.append)  # fmt: skip
        return await recorder.run_on_loop()

    summary = asyncio.run(main())
    assert summary.stopped_by == "end"
    assert wav_pcm(summary.path) == pcm
    assert summary.samples == len(pcm) // 2
    assert tuple(segments) == summary.segments and len(segments) == segment_count > 0
    assert len(outputs_on) >= 1  # the loop thread, and the finishing worker thread for the tail
    assert not (tmp_path / "loop.wav.partial").exists()


def test_loop_driven_stop_and_duration(tmp_path: Path) -> None:
    blocks, rate = dialogue_blocks(6.0)
    settings = AgentSettings()

    async def stopped() -> agent.recorder.RecordSummary:
        source = HandoffSource(blocks, rate, close_at_end=False)
        archived = ArchivedAtLeast(16000 * 5)
        recorder = Recorder(source, tmp_path / "stopped.wav", settings, on_output=archived.on_output,
                            recipient=TEST_RECIPIENT)
        task = asyncio.create_task(recorder.run_on_loop())
        await archived.event.wait()
        recorder.stop()
        return await task

    summary = asyncio.run(stopped())
    assert summary.stopped_by == "stop"
    assert abs(summary.samples - 6 * 16000) <= 1  # every block put before stop() is archived, tail included

    async def limited() -> agent.recorder.RecordSummary:
        source = HandoffSource(blocks, rate, close_at_end=False)
        recorder = Recorder(source, tmp_path / "limited.wav", settings, duration_s=2.5, recipient=TEST_RECIPIENT)
        return await recorder.run_on_loop()

    summary = asyncio.run(limited())
    assert summary.stopped_by == "duration" and summary.samples == 40000
    assert len(wav_pcm(summary.path)) == 80000


class ArchivedAtLeast:
    """An asyncio.Event set once the recorder's outputs reach ``samples`` (outputs come on the loop thread)."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def on_output(self, out: PipelineOutput) -> None:
        if out.frames and out.frames[-1].end >= self.samples:
            self.loop.call_soon_threadsafe(self.event.set)  # the tail comes from the finishing worker thread


def test_loop_driven_stall_raises_device_error_and_keeps_the_wav(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(agent.recorder, "STALL_CHECK_S", 0.05)
    blocks, rate = dialogue_blocks(1.0)
    source = HandoffSource(blocks, rate, close_at_end=False)

    async def main() -> None:
        archived = ArchivedAtLeast(round(16000 * 0.8))
        checked = asyncio.Event()
        source.on_check = lambda: checked.set() if source.checks >= 2 else None
        recorder = Recorder(source, tmp_path / "lost.wav", AgentSettings(), on_output=archived.on_output,
                            recipient=TEST_RECIPIENT)
        task = asyncio.create_task(recorder.run_on_loop())
        await archived.event.wait()
        await checked.wait()
        assert not task.done()  # a device that is alive is left alone
        source.alive = False
        await task

    with pytest.raises(DeviceError, match="stopped delivering"):
        asyncio.run(main())
    assert (tmp_path / "lost.wav").exists() and not (tmp_path / "lost.wav.partial").exists()
    assert len(wav_pcm(tmp_path / "lost.wav")) >= 2 * 16000 * 0.8
