"""A sound server's microphone opens at 16 kHz mono (issue 11, ``agent/audio/mic_format.py``), through real PortAudio
and PulseAudio: the null sink runs at 48 kHz, as PulseAudio's sources do, so the server resamples once.

The signal: band-limited noise made at 16 kHz, played at 48 kHz. Every quarter second of it must be found in the
capture, nearly unchanged (PulseAudio's resampler is not ours), all at ONE lag: a sample lost or repeated anywhere
between the first window and the last would move the later windows' lag (a lost block by 1600 samples)."""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from agent.audio.dsp import Dsp
from agent.audio.mic import MicSource
from agent.audio.sources import open_source
from agent.audio.types import Block
from agent.settings import AudioSettings
from tests.plugins.pulse import NullSink

pytestmark = [pytest.mark.pulse, pytest.mark.slow]
SINK_RATE = 48000
SIGNAL_S = 5.0
LEAD_S = 0.5
WINDOW = 4000
"""Samples (16 kHz) per correlation window: 0.25 s."""


def noise_16k(seconds: float) -> npt.NDArray[np.float64]:
    """Noise at 16 kHz with nothing above 6 kHz (both resamplers' pass band), peak 0.5."""
    x = np.random.default_rng(11).standard_normal(round(seconds * 16000))
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / 16000) > 6000] = 0
    y = np.fft.irfft(spectrum, len(x))
    result: npt.NDArray[np.float64] = 0.5 * y / np.abs(y).max()
    return result


def wav_48k(path: Path, x16: npt.NDArray[np.float64]) -> Path:
    """``x16`` at 48 kHz after :data:`LEAD_S` of silence (PulseAudio may drop the first 100 ms that a fresh
    playback stream plays into an idle null sink: tests/test_mic_paced_pulse.py)."""
    lead = np.zeros(round(LEAD_S * SINK_RATE))
    played = np.concatenate([lead, soxr.resample(x16, 16000, SINK_RATE, quality="VHQ")])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SINK_RATE)
        w.writeframes(np.round(np.clip(played, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
    return path


def best_lag(captured: npt.NDArray[np.float64], window: npt.NDArray[np.float64]) -> tuple[float, int]:
    """(normalized correlation, lag) of ``window``'s best match in ``captured``."""
    n = len(captured) + len(window)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(window, size)), size)
    lags = np.arange(len(captured) - len(window) + 1)
    energy = np.concatenate([[0.0], np.cumsum(captured**2)])
    local = np.maximum(energy[lags + len(window)] - energy[lags], 1e-12)
    normalized = corr[lags] / np.sqrt(local * float(window @ window))
    best = int(np.argmax(normalized))
    return float(normalized[best]), best


@pytest.mark.parametrize("block_ms", [100, 20])  # the daemon's paced reader (40 ms and up), the callback stream
def test_the_server_resamples_once_and_nothing_is_lost(
    null_sink: Callable[[int, int], NullSink], tmp_path: Path, block_ms: int
) -> None:
    null = null_sink(SINK_RATE, 2)
    reference = noise_16k(SIGNAL_S)
    wav = wav_48k(tmp_path / "noise.wav", reference)
    blocks: list[tuple[npt.NDArray[np.float32], float]] = []
    source = open_source("mic:pulse", AudioSettings(capture_block_ms=block_ms),
                         sink=lambda samples, at, missed: blocks.append((samples.copy(), at)))  # fmt: skip
    assert isinstance(source, MicSource) and source.paced == (block_ms >= 40)
    assert (source.sample_rate, source.channels) == (16000, 1)
    assert source.description == "mic 'pulse' 16000 Hz x1"  # what check, record, status and the log show
    wanted = round((LEAD_S + SIGNAL_S + 1.5) * 16000)
    with source:
        source.set_idle(False)
        player = null.play(str(wav))
        deadline = time.monotonic() + 60
        while sum(len(b) for b, _ in blocks) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert player.wait(timeout=30) == 0
    assert {len(b) for b, _ in blocks} == {16 * block_ms} and {b.shape[1] for b, _ in blocks} == {1}
    dsp = Dsp(16000, AudioSettings())  # the visit's path: 16 kHz passes through
    frames = [f for b, t in blocks for f in dsp.process(Block(b, t))] + dsp.flush()
    captured = np.frombuffer(b"".join(f.pcm for f in frames), "<i2").astype(np.float64) / 32768
    results = [best_lag(captured, reference[a : a + WINDOW]) for a in range(0, len(reference) - WINDOW + 1, WINDOW)]
    peaks = [round(p, 4) for p, _ in results]
    offsets = [lag - a for (_, lag), a in zip(results, range(0, len(reference), WINDOW), strict=False)]
    seen = f"peaks {peaks}, offsets {offsets}, {source.stats}"
    assert len(results) == SIGNAL_S * 16000 // WINDOW
    assert min(peaks) > 0.95, seen  # the content: every window found, nearly unchanged
    assert max(offsets) - min(offsets) <= 1, seen  # one alignment: no sample lost or repeated in between
    assert source.stats.input_overflows == 0 and dsp.lost_samples == 0, seen


def test_explicit_formats_and_the_setting_are_honoured(null_sink: Callable[[int, int], NullSink]) -> None:
    """The spec's rate and channels win, each on its own; ``server_mic_16k = false`` keeps PortAudio's default
    (44.1 kHz, 2 channels for ``pulse``); ``mic`` (ALSA's ``default``, routed to PulseAudio by the pulse plugin's
    hook while the server runs) is the server's device too. Each opens and delivers blocks of its format."""
    null_sink(SINK_RATE, 2)
    cases = [("mic:pulse@44100x2", AudioSettings(), (44100, 2)), ("mic:pulse@48000", AudioSettings(), (48000, 1)),
             ("mic:pulse", AudioSettings(server_mic_16k=False), (44100, 2)), ("mic", AudioSettings(), (16000, 1))]
    for spec, settings, (rate, channels) in cases:
        source = open_source(spec, settings)
        assert isinstance(source, MicSource)
        assert (source.sample_rate, source.channels) == (rate, channels), spec
        with source:
            block = source.handoff.get(timeout=10)
        assert block is not None, spec
        assert block.samples.shape == (rate * settings.capture_block_ms // 1000, channels), spec
