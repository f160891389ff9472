"""The microphone source through real PortAudio: play the bundled speech into a PulseAudio null sink and capture
its monitor with ``mic:pulse`` (ALSA pulse plugin), then check the captured audio IS that speech."""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.dsp import Dsp
from agent.audio.mic import MicSource, parse_mic_spec
from agent.audio.sources import open_source
from agent.audio.types import Block
from agent.audio.vad_eval import DIALOGUE_WAV
from agent.audio.wavfile import read_wav
from agent.settings import AudioSettings
from tests.plugins.pulse import NullSink

pytestmark = [pytest.mark.pulse, pytest.mark.slow]
EXCERPT_S = 6.0


def to_16k(samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float64]:
    dsp = Dsp(rate, AudioSettings())
    frames = dsp.process(Block(samples, capture_time=0.0)) + dsp.flush()
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").astype(np.float64)


def excerpt(tmp_path: Path) -> tuple[Path, npt.NDArray[np.float64]]:
    samples, rate = read_wav(str(DIALOGUE_WAV))
    cut = samples[: round(EXCERPT_S * rate)]
    path = tmp_path / "excerpt.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(cut[:, 0] * 32768).astype("<i2").tobytes())
    return path, to_16k(cut, rate)


def correlation_peak(captured: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> tuple[float, int]:
    """Max over lags of the normalized cross-correlation of ``reference`` inside ``captured``, and that lag.

    The monitor of an idle null sink delivers nothing, so the capture may start a little after the playback did:
    one second of zeros in front lets the lag be negative."""
    lead = 16000
    captured = np.concatenate([np.zeros(lead), captured])
    n = len(captured) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.arange(len(captured) - len(reference) + 1)
    energy = np.concatenate([[0.0], np.cumsum(captured**2)])
    window_energy = energy[lags + len(reference)] - energy[lags]
    ref_energy = float(reference @ reference)
    # Windows of (near) silence cannot match speech; skipping them avoids dividing rounding noise by ~0.
    audible = window_energy > 0.01 * ref_energy
    normalized = np.where(audible, corr[lags] / np.sqrt(np.maximum(window_energy, 1e-9) * ref_energy), 0.0)
    best = int(np.argmax(normalized))
    return float(normalized[best]), best - lead


def capture_while_playing(source: MicSource, sink: NullSink, wav: Path) -> npt.NDArray[np.float32]:
    blocks: list[npt.NDArray[np.float32]] = []
    wanted = round((EXCERPT_S + 2.0) * source.sample_rate)
    deadline = time.monotonic() + 60
    with source:
        player = sink.play(str(wav))
        try:
            while sum(len(b) for b in blocks) < wanted and time.monotonic() < deadline:
                block = source.handoff.get(timeout=1.0)
                if block is not None:
                    blocks.append(block.samples)
        finally:
            player.wait(timeout=30)
    assert player.returncode == 0
    return np.concatenate(blocks)


@pytest.mark.parametrize(
    ("sink_rate", "sink_channels", "spec", "server_16k", "opened"),
    [
        (44100, 2, "mic:pulse", False, (44100, 2)),  # PortAudio's default for pulse: the 44.1 kHz FIR, a downmix
        (48000, 1, "mic:pulse@48000x1", True, (48000, 1)),  # the 48 kHz FIR
        (48000, 2, "mic:pulse", True, (16000, 1)),  # a sound server's device: the server resamples, 16 kHz mono
    ],
)
def test_captured_speech_correlates_with_the_source(
    null_sink: Callable[[int, int], NullSink],
    tmp_path: Path,
    sink_rate: int,
    sink_channels: int,
    spec: str,
    server_16k: bool,
    opened: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = null_sink(sink_rate, sink_channels)
    wav, reference = excerpt(tmp_path)
    source = open_source(spec, AudioSettings(server_mic_16k=server_16k))
    assert isinstance(source, MicSource)
    assert (source.sample_rate, source.channels) == opened
    captured = capture_while_playing(source, sink, wav)
    assert captured.shape[1] == opened[1]
    y = to_16k(captured, source.sample_rate)
    # Window by window (0.5 s of speech each): PulseAudio's own resampling and scheduling jitter make one global
    # alignment imperfect, but every piece of the speech must be found, in order, at nearly the same lag.
    starts = [a for a in range(0, len(reference) - 8000, 8000) if np.sqrt(np.mean(reference[a : a + 8000] ** 2)) > 300]
    results = [correlation_peak(y, reference[a : a + 8000]) for a in starts]
    peaks = [p for p, _ in results]
    lags = [lag - a for (_, lag), a in zip(results, starts, strict=True)]
    with capsys.disabled():
        print(f"\n{source.description}: window correlation peaks {np.round(peaks, 3).tolist()},"
              f" lags {lags} samples, stats {source.stats}")
    seen = f"peaks {np.round(peaks, 3).tolist()}, lags {lags}, {source.stats}, {source.handoff.stats}"
    assert len(peaks) >= 6, seen
    assert float(np.median(peaks)) > 0.9 and min(peaks) > 0.7, seen
    modal = max(set(lags), key=lags.count)
    # Nearly all windows at the same alignment (within 50 ms); PulseAudio may now and then repeat a buffer.
    assert sum(abs(lag - modal) <= 800 for lag in lags) >= 0.75 * len(lags)
    assert source.stats.blocks > 0 and source.handoff.stats.blocks_dropped == 0


def test_unknown_device_lists_available_ones(pulse_server: None) -> None:
    from agent.errors import DeviceError

    with pytest.raises(
        DeviceError, match=r"no input device matching 'no-such-mic'; available input devices: .*'pulse'"
    ):
        open_source("mic:no-such-mic", AudioSettings())


def test_the_callback_copies_once_stamps_and_counts_an_overflow(null_sink: Callable[[int, int], NullSink]) -> None:
    """The callback as PortAudio calls it (its own status flags type), on a clock the test sets: each block is
    copied (PortAudio reuses its buffer) and stamped at its first sample; an input overflow's lost samples are
    estimated from where the previous block ended and counted once."""
    import sounddevice

    null_sink(48000, 1)
    now = [100.0]
    got: list[tuple[npt.NDArray[np.float32], float, int]] = []
    source = MicSource(parse_mic_spec("mic:pulse@48000x1"), handoff_seconds=1.0, clock=lambda: now[0],
                       sink=lambda samples, at, missed: got.append((samples, at, missed)))  # fmt: skip
    buffer = np.zeros((4800, 1), dtype=np.float32)  # PortAudio's one buffer, refilled for every callback
    overflow = sounddevice.CallbackFlags()
    overflow.input_overflow = True
    for i, (at, flags) in enumerate(((100.1, sounddevice.CallbackFlags()), (100.2, sounddevice.CallbackFlags()),
                                     (100.55, overflow))):  # fmt: skip
        now[0] = at
        buffer[:] = i / 4
        source._callback(buffer, 4800, None, flags)
    assert [round(at, 6) for _, at, _ in got] == [100.0, 100.1, 100.45]  # the block's first sample
    assert [missed for _, _, missed in got] == [0, 0, 12000]  # 0.25 s between 100.2 and 100.45 at 48 kHz
    copies = [(float(samples.min()), float(samples.max()), samples.shape) for samples, _, _ in got]
    assert copies == [(i / 4, i / 4, (4800, 1)) for i in range(3)]
    assert (source.stats.blocks, source.stats.status_flags, source.stats.input_overflows) == (3, 1, 1)
    assert source.stats.estimated_lost == 12000 and source.stats.flags_seen == {"input_overflow"}
