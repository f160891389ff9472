"""The audio path's latency by design: a capture block's samples leave the pipeline with that block.

The microphone through PulseAudio opens at 44.1 kHz, where soxr HQ held 20-40 ms of every block until the next
one (the low-latency profile's median capture-to-wire latency was 44 ms, 40 of them that wait). The fixed-delay
FIR (:class:`agent.audio.decimate.RationalFir`, the default ``audio.resampler``) hands every output out as soon as
its newest input arrived; these tests pin that down without a clock: counts of samples per block.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.decimate import RationalFir, design, ratio_of, supports_rational
from agent.audio.dsp import Dsp
from agent.audio.pipeline import AudioPipeline
from agent.audio.types import Block
from agent.audio.vad import SegmentFrame
from agent.settings import AudioSettings, VadSettings


def noise(rate: int, seconds: float, seed: int = 0) -> npt.NDArray[np.float32]:
    return (0.3 * np.random.default_rng(seed).standard_normal(round(rate * seconds))).astype(np.float32)


@pytest.mark.parametrize(("rate", "block_ms"), [(44100, 10), (44100, 20), (44100, 100), (22050, 20), (88200, 20)])
def test_rational_fir_hands_out_every_block_whole(rate: int, block_ms: int) -> None:
    fir = RationalFir(rate)
    x = noise(rate, 1.0)
    n = rate * block_ms // 1000
    emitted = [len(fir.process(x[i : i + n])) for i in range(0, len(x), n)]
    assert emitted == [16 * block_ms] * len(emitted)
    assert 0 < fir.delay_samples / rate < 0.002


def test_rational_fir_output_is_due_as_soon_as_its_newest_input_arrived() -> None:
    """Any split: after E input samples exactly ceil(E * up / down) outputs are out (none waits for a later block)."""
    rate = 44100
    up, down = ratio_of(rate)
    fir, x, received, out = RationalFir(rate), noise(rate, 2.0, 1), 0, 0
    for size in np.random.default_rng(2).integers(0, 1500, size=200):
        out += len(fir.process(x[received : received + size]))
        received += len(x[received : received + size])
        assert out == -(-received * up // down)


def test_rational_fir_is_the_filter_it_claims() -> None:
    """Output n = sum over k of x[k] * h[n * down - k * up], h designed at up * rate (checked against float64)."""
    rate = 22050
    up, down = ratio_of(rate)
    h = design(rate, up).astype(np.float64)
    x = noise(rate, 0.5, 3)
    y = RationalFir(rate).process(x)
    for n in range(0, len(y), 97):
        k = np.arange(max(0, -(-(n * down - len(h) + 1) // up)), n * down // up + 1)
        assert y[n] == pytest.approx(float(np.dot(x[k].astype(np.float64), h[n * down - k * up])), abs=1e-5)


def test_rates_the_fir_takes() -> None:
    assert [r for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000) if supports_rational(r)] == [
        22050,
        44100,
        88200,
    ]  # 32, 48, 96 kHz: the integer decimator; 24 kHz: soxr (its branches are longer than a period)
    with pytest.raises(ValueError, match="24000"):
        RationalFir(24000)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_pipeline_passes_each_block_with_its_own_block(rate: int) -> None:
    """Default settings, 20 ms blocks, every frame speech: once the gate is open each block's output reaches the
    timeline position of the block's end, archive frames and gate events alike, in the call of that block."""
    pipeline = AudioPipeline(rate, AudioSettings(), VadSettings(), is_speech=lambda _pcm: True)
    n = rate // 50
    x = noise(rate, 1.0, 4)
    opened = False
    for i, start in enumerate(range(0, len(x), n)):
        out = pipeline.process(Block(x[start : start + n], capture_time=10.0 + start / rate))
        assert out.frames and out.frames[-1].end == 320 * (i + 1)
        passed = [e.frame for e in out.events if isinstance(e, SegmentFrame)]
        opened = opened or bool(passed)
        if opened:
            assert passed[-1].end == 320 * (i + 1)
        # the block's first frame carries the block's capture time, less the filter's constant delay
        assert out.frames[0].capture_time == pytest.approx(10.0 + start / rate - pipeline.dsp.delay_s)
    assert opened


def test_soxr_still_holds_back_at_44k1() -> None:
    """What the FIR replaced, kept choosable: soxr HQ emits nothing for the first 20 ms blocks at 44.1 kHz."""
    dsp = Dsp(44100, AudioSettings(resampler="soxr"))
    x = noise(44100, 0.2, 5)
    emitted = [
        sum(f.samples for f in dsp.process(Block(x[i : i + 882], capture_time=0.0))) for i in range(0, 8820, 882)
    ]
    assert emitted[0] == 0 and sum(emitted) < 3200 and dsp.delay_s == 0.0
