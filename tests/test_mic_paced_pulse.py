"""The daemon's paced microphone (issue 11, ``agent/audio/mic_paced.py``) through real PortAudio and PulseAudio.

A counter ramp (each 16-bit sample one above the one before) is played into a null sink at its own rate and
format, so its monitor hands PortAudio the very samples played: any sample lost or repeated anywhere -- in
particular where the reader switches between its idle pace (batched reads) and a visit's (block by block) -- breaks
the +1 steps. The stream's opened parameters are checked too: one blocking stream (no callback), the host buffer,
and PulseAudio's fragment size still one block (so a visit's blocks arrive as often as with a callback). Run at the
efficient profile's 100 ms blocks and the low-latency profile's 40 ms (100 ALSA periods), at 48 kHz and 16 kHz."""

from __future__ import annotations

import re
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent import SAMPLE_RATE
from agent.audio import mic_paced
from agent.audio.dsp import Dsp
from agent.audio.mic import MicSource
from agent.audio.sources import open_source
from agent.audio.types import Block
from agent.settings import AudioSettings
from tests.plugins.pulse import NullSink

pytestmark = [pytest.mark.pulse, pytest.mark.slow]
RATE = 48000
RAMP_S = 8.0


PERIOD = 65534
"""The ramp counts through every 16-bit value but 0 and -32768: zeros mark the silence around it."""


def ramp_values(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    r = positions % PERIOD
    return np.where(r < 32767, r - 32767, r - 32766)


def ramp_positions(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.where(values < 0, values + 32767, values + 32766)


def ramp_wav(path: Path, rate: int = RATE) -> Path:
    ramp = ramp_values(np.arange(round(RAMP_S * rate), dtype=np.int64)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(ramp.tobytes())
    return path


def requested_fragment_ms() -> float:
    """PulseAudio's requested latency of our record stream (= the ALSA plugin's fragsize, one period)."""
    out = subprocess.run(["pacmd", "list-source-outputs"], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"requested latency: ([\d.]+) ms", out)
    assert len(found) == 1, out
    return float(found[0])


def ramp_defects(samples: npt.NDArray[np.int64]) -> tuple[int, int, int]:
    """(samples captured of the ramp, its first position, steps within it that are not +1: a sample lost or
    repeated) -- the silence around it cut off."""
    inside = np.flatnonzero(samples)
    positions = ramp_positions(samples[inside[0] : inside[-1] + 1])
    steps = np.diff(positions) % PERIOD
    return len(positions), int(positions[0]), int(np.count_nonzero(steps != 1))


EXPLICIT_48K = "mic:pulse@48000x1"


@pytest.mark.parametrize(("rate", "spec", "block_ms"), [(RATE, EXPLICIT_48K, 100), (RATE, EXPLICIT_48K, 40),
                                                  (16000, "mic:pulse", 100), (16000, "mic:pulse", 40)])  # fmt: skip
def test_idle_and_visit_paces_lose_and_repeat_no_sample(
    null_sink: Callable[[int, int], NullSink], tmp_path: Path, rate: int, spec: str, block_ms: int
) -> None:
    """At 48 kHz (the spec's) and at 16 kHz mono, the rate a sound server's device opens at by default (a 16 kHz
    sink: the server passes the samples through, so the ramp arrives exact); the efficient profile's 100 ms blocks
    and the low-latency profile's 40 ms."""
    null = null_sink(rate, 1)
    block = rate * block_ms // 1000
    blocks: list[tuple[npt.NDArray[np.float32], float]] = []
    delivered: list[tuple[float, bool]] = []  # (when the block reached the sink, the pace then was a visit's)
    pace = {"visit": False}

    def sink(samples: npt.NDArray[np.float32], capture_time: float, _missed: int) -> None:
        blocks.append((samples, capture_time))
        delivered.append((time.monotonic(), pace["visit"]))

    source = open_source(spec, AudioSettings(capture_block_ms=block_ms), sink=sink)
    assert isinstance(source, MicSource) and source.paced
    assert (source.sample_rate, source.channels) == (rate, 1)
    wav = ramp_wav(tmp_path / "ramp.wav", rate)
    switches = 0
    with source:
        stream = source._stream
        assert stream.latency >= mic_paced.HOST_BUFFER_S and stream.blocksize == block
        assert requested_fragment_ms() == block_ms  # the period is one block: visit blocks come as often as before
        player = null.play(str(wav))
        deadline = time.monotonic() + 60
        idle = True
        while player.poll() is None and time.monotonic() < deadline:
            # Switch pace after ~0.7 s of audio (not a multiple of the idle period), waiting on delivered audio.
            target = len(blocks) + round(0.7 * rate / block)
            while len(blocks) < target and time.monotonic() < deadline:
                time.sleep(0.05)
            idle = not idle
            pace["visit"] = not idle
            source.set_idle(idle)
            switches += 1
        assert player.wait(timeout=30) == 0
        pace["visit"] = True
        source.set_idle(False)
        end = len(blocks) + round(rate / block)  # 1 s of the silence after the ramp
        while len(blocks) < end and time.monotonic() < deadline:
            time.sleep(0.05)
    # Each switch waits for 0.7 s of delivered audio, which an idle batch can overshoot by up to a second: 8 s of
    # ramp give at least four switches (two each way) however the batches fall.
    assert switches >= 4, switches
    samples = np.round(np.concatenate([b for b, _ in blocks])[:, 0] * 32768).astype(np.int64)
    got, first, defects = ramp_defects(samples)
    assert defects == 0, f"{source.stats}"
    # PulseAudio itself may drop the first 100 ms a fresh stream plays into an idle null sink (the callback
    # stream measured the same); none of the rest.
    assert first + got == round(RAMP_S * rate) and first <= rate // 10, (first, got)
    assert {len(b) for b, _ in blocks} == {block}
    # Capture times: never after the block reached the sink (the last sample read is "now"), and in order while a
    # visit takes the blocks (an idle batch after a visit block may be stamped before it: both are upper bounds).
    ends = np.array([t + len(b) / rate for b, t in blocks])
    assert np.all(ends <= np.array([d for d, _ in delivered])), "a capture time in the future"
    visit = np.array([v for _, v in delivered])
    steps = np.diff(np.array([t for _, t in blocks]))
    assert np.all(steps[visit[1:] & visit[:-1]] > 0), np.sort(steps)[:5]
    assert source.stats.input_overflows == 0
    if rate == SAMPLE_RATE:  # the visit's DSP passes 16 kHz through: its frames are the samples read, bit for bit
        dsp = Dsp(rate, AudioSettings())
        frames = [f for b, t in blocks for f in dsp.process(Block(b, t))] + dsp.flush()
        assert np.array_equal(np.frombuffer(b"".join(f.pcm for f in frames), "<i2"), samples)


def test_short_blocks_keep_the_callback_stream(null_sink: Callable[[int, int], NullSink]) -> None:
    null_sink(RATE, 1)
    source = open_source("mic:pulse@48000x1", AudioSettings(capture_block_ms=20), sink=lambda s, t, m: None)
    assert isinstance(source, MicSource) and not source.paced
    direct = open_source("mic:pulse@48000x1", AudioSettings())
    assert isinstance(direct, MicSource) and not direct.paced  # `record` and `check` read the callback stream


def test_periods_keep_one_block_per_period() -> None:
    assert mic_paced.periods_for(0.1) == round(2 * mic_paced.HOST_BUFFER_S / 0.1)
    assert mic_paced.periods_for(0.2) == round(2 * mic_paced.HOST_BUFFER_S / 0.2)
    assert mic_paced.periods_for(10.0) == mic_paced.DEFAULT_PERIODS
    # The low-latency profile's 40 ms blocks at any rate (block = round(rate * 0.04) frames) are read paced.
    for rate in (8000, 16000, 22050, 44100, 48000):
        assert mic_paced.periods_for(round(rate * 0.04) / rate) == mic_paced.MAX_PACED_PERIODS == 100
        assert mic_paced.paced_fits(round(rate * 0.04) / rate)
    assert not mic_paced.paced_fits(0.02) and not mic_paced.paced_fits(0.039)
