"""DSP: block-size invariance, resampling quality, framing, tail and gaps."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.dsp import Dsp, Gap, to_int16
from agent.audio.types import Block, Frame
from agent.settings import AudioSettings

RATES = [44100, 48000]


def run_dsp(
    x: npt.NDArray[np.float32], rate: int, sizes: list[int] | None = None, settings: AudioSettings | None = None
) -> tuple[list[Frame], Dsp]:
    dsp = Dsp(rate, settings or AudioSettings())
    frames: list[Frame] = []
    i = 0
    for size in sizes or [len(x)]:
        if i >= len(x):
            break
        frames += dsp.process(Block(x[i : i + size], capture_time=100.0 + i / rate))
        i += size
    assert i >= len(x)
    frames += dsp.flush()
    return frames, dsp


def pcm(frames: list[Frame]) -> npt.NDArray[np.int16]:
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")


def tone(hz: float, rate: int, seconds: float, amp: float, channels: int = 1) -> npt.NDArray[np.float32]:
    t = np.arange(round(rate * seconds)) / rate
    mono = (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


def peak_hz_and_level(y: npt.NDArray[np.int16]) -> tuple[float, float]:
    x = y.astype(np.float64) / 32768.0
    x = x[len(x) // 4 : 3 * len(x) // 4]  # away from the resampler's start-up and tail
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum))
    return k * 16000 / len(x), float(np.sqrt(np.mean(x**2)) * np.sqrt(2))


@pytest.mark.parametrize("rate", [*RATES, 16000, 22050])
def test_output_does_not_depend_on_block_sizes(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal((rate * 3, 2))).astype(np.float32)
    x[:, 1] += tone(440, rate, 3, 0.2)[:, 0]
    whole, _ = run_dsp(x, rate)
    for seed in range(3):
        sizes = list(np.random.default_rng(seed).integers(1, 5000, size=10_000))
        pieces, _ = run_dsp(x, rate, sizes)
        assert np.array_equal(pcm(pieces), pcm(whole))
        assert [f.start for f in pieces] == [f.start for f in whole]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Prescott is an x86-64 OpenBLAS kernel")
def test_block_size_invariance_holds_with_another_blas_kernel() -> None:
    """The same invariance with OpenBLAS forced onto its oldest x86-64 kernel (SSE3, which every x86-64 CPU has), which
    orders its sums differently: with float32 products the 44.1 and 22.05 kHz outputs moved with the split into
    blocks there (also under Haswell and Zen, and on arm64)."""
    test = f"{__file__}::test_output_does_not_depend_on_block_sizes"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Prescott"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("hz", [440.0, 1000.0, 3000.0])
def test_sine_keeps_frequency_and_level(rate: int, hz: float) -> None:
    frames, _ = run_dsp(tone(hz, rate, 2.0, 0.5, channels=2), rate)
    peak, level = peak_hz_and_level(pcm(frames))
    assert abs(peak - hz) <= 1.0
    assert level == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("rate", RATES)
def test_tone_above_nyquist_is_suppressed_60db(rate: int) -> None:
    frames, _ = run_dsp(tone(12000, rate, 2.0, 0.9), rate)
    out = pcm(frames).astype(np.float64) / 32768.0
    rms = np.sqrt(np.mean(out[len(out) // 4 : 3 * len(out) // 4] ** 2))
    assert 20 * np.log10(max(rms, 1e-12) / (0.9 / np.sqrt(2))) <= -60


@pytest.mark.parametrize("rate", [*RATES, 22050, 8000])
def test_output_length_matches_input_duration(rate: int) -> None:
    x = tone(440, rate, 1.2345, 0.5)
    frames, dsp = run_dsp(x, rate)
    assert abs(sum(f.samples for f in frames) - 1.2345 * 16000) <= 320
    assert dsp.timeline_position == sum(f.samples for f in frames)


def test_frames_are_contiguous_fixed_size_and_the_tail_is_short() -> None:
    frames, _ = run_dsp(tone(440, 48000, 1.01, 0.5), 48000, settings=AudioSettings(frame_ms=30))
    assert frames[0].start == 0
    assert all(a.end == b.start for a, b in itertools.pairwise(frames))
    assert all(f.samples == 480 for f in frames[:-1])
    assert 0 < frames[-1].samples < 480  # 16160 samples = 33 frames of 480 + 320


def test_16k_int16_input_passes_bit_exact() -> None:
    ints = np.random.default_rng(3).integers(-32768, 32768, size=16000 * 2).astype(np.int16)
    frames, _ = run_dsp((ints / 32768.0).astype(np.float32)[:, None], 16000, sizes=[333] * 200)
    assert np.array_equal(pcm(frames), ints)


def test_to_int16_rounds_and_clips() -> None:
    x = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5 / 32768, 1.6 / 32768], dtype=np.float32)
    assert list(to_int16(x)) == [0, 32767, -32768, 32767, -32768, 0, 2]


def test_capture_time_follows_the_blocks() -> None:
    frames, _ = run_dsp(tone(440, 16000, 1.0, 0.5), 16000, sizes=[1600] * 10)
    for f in frames:
        assert f.capture_time == pytest.approx(100.0 + f.start / 16000)


def test_missed_samples_become_silence_and_a_gap() -> None:
    rate = 48000
    dsp = Dsp(rate, AudioSettings(resampler="fir"))
    x = tone(1000, rate, 1.0, 0.5)
    frames = dsp.process(Block(x, capture_time=10.0))
    frames += dsp.process(Block(x, capture_time=11.5, missed=rate // 2))  # half a second lost
    frames += dsp.flush()
    assert dsp.gaps == [Gap(16000, 24000)]
    y = pcm(frames).astype(np.float64)
    assert len(y) == 40000
    assert np.max(np.abs(y[16400:23600])) < 50  # silence, apart from the resampler's ringing at the edges
    assert np.max(np.abs(y[25000:39000])) > 15000  # the tone continues after the gap, where wall time says
    gap_frame = next(f for f in frames if f.start == 20160)
    assert gap_frame.capture_time == pytest.approx(11.0 + 4160 / 16000 - dsp.delay_s)
    after_gap = next(f for f in frames if f.start == 24000)
    assert after_gap.capture_time == pytest.approx(11.5 - dsp.delay_s)


@pytest.mark.parametrize(("rate", "block_ms"), [(48000, 20), (48000, 40), (48000, 100), (32000, 20)])
def test_fir_hands_out_every_block_whole_frames_at_once(rate: int, block_ms: int) -> None:
    """The low-latency path: no sample of a block waits for the next block (soxr held 8-30 ms of each)."""
    dsp = Dsp(rate, AudioSettings(resampler="fir"))
    x = tone(440.0, rate, 1.0, 0.5)
    n = rate * block_ms // 1000
    emitted = [sum(f.samples for f in dsp.process(Block(x[i : i + n], capture_time=i / rate)))
               for i in range(0, len(x), n)]  # fmt: skip
    assert emitted == [16 * block_ms] * len(emitted)
    assert 0 < dsp.delay_s < 0.002


def test_soxr_resampler_can_still_be_chosen() -> None:
    x = tone(440.0, 48000, 1.0, 0.5)
    dsp = Dsp(48000, AudioSettings(resampler="soxr"))
    emitted = [sum(f.samples for f in dsp.process(Block(x[i : i + 960], capture_time=0.0)))
               for i in range(0, 48000, 960)]  # fmt: skip
    assert emitted[0] == 0 and sum(emitted) < 16000 and dsp.delay_s == 0.0  # soxr keeps part of each block
