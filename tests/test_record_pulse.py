"""``record`` from a real microphone path: PulseAudio null sink -> monitor -> ALSA pulse plugin -> PortAudio.

The bundled speech is played into the sink with ``paplay`` while ``record`` captures the monitor; the archive must
CONTAIN that speech (normalized cross-correlation with the pipeline's rendering of the same file), not merely be
non-silent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.plugins.archive import DIALOGUE, REPO, agent_command, poll, run_agent, soxi_samples, wav_pcm
from tests.plugins.pulse import NullSink

pytestmark = pytest.mark.pulse
EXCERPT_S = 5.0


def excerpt_of_dialogue(path: Path) -> None:
    with wave.open(str(DIALOGUE), "rb") as src:
        params = src.getparams()
        frames = src.readframes(round(EXCERPT_S * src.getframerate()))
    with wave.open(str(path), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)


def correlation_peak(captured: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> float:
    """Max over lags of the normalized cross-correlation of ``reference`` inside ``captured``."""
    n = len(captured) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.arange(len(captured) - len(reference) + 1)
    energy = np.concatenate([[0.0], np.cumsum(captured**2)])
    window = np.sqrt(energy[lags + len(reference)] - energy[lags]) * np.linalg.norm(reference)
    return float(np.max(corr[lags] / np.maximum(window, 1e-9)))


def as_float(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1)], ids=["44k1-stereo", "48k-mono"])
def test_record_from_the_monitor_archives_the_played_speech(
    null_sink: Callable[[int, int], NullSink], tmp_path: Path, dialogue_pcm: bytes, rate: int, channels: int
) -> None:
    sink = null_sink(rate, channels)
    clip = tmp_path / "clip.wav"
    excerpt_of_dialogue(clip)
    out = tmp_path / "visit.wav"
    partial = tmp_path / "visit.wav.partial"
    spec = f"mic:{sink.mic_device}@{rate}x{channels}"
    proc = subprocess.Popen(
        agent_command("record", "--source", spec, "--out", str(out)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PULSE_SOURCE": sink.monitor},  # this sink's monitor, whatever the global default
    )  # fmt: skip
    try:
        poll(lambda: partial.exists() and partial.stat().st_size > 44 + 3200, "capture to start")
        player = sink.play(str(clip))
        assert player.wait(timeout=60) == 0
        played_until = partial.stat().st_size
        poll(lambda: partial.stat().st_size > played_until + 16000, "the tail to be captured")
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"recording mic '{sink.mic_device}' {rate} Hz x{channels} to {out}" in stderr
    captured = wav_pcm(out)
    assert soxi_samples(out) == len(captured) // 2
    # From 0.25 s on: PulseAudio suspends the idle sink, so capture may begin a few ms into the clip (which starts
    # with silence); the archive must hold the speech that follows, contiguous.
    reference = as_float(dialogue_pcm[4000 * 2 : round((EXCERPT_S - 0.5) * 16000) * 2])
    assert correlation_peak(as_float(captured), reference) > 0.9
    assert stdout.splitlines()[-1].endswith("; stopped")
    assert any(line.startswith("speech ") for line in stdout.splitlines())


def test_unknown_device_lists_the_available_ones(pulse_server: None, tmp_path: Path) -> None:
    code = "from agent.audio.mic import list_input_devices as l; print(repr([d.name for d in l()]))"
    names = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    available = ", ".join(repr(n) for n in eval(names))  # the list PortAudio reports, as a separate process sees it
    assert "'pulse'" in available
    result = run_agent("record", "--source", "mic:no such mic", "--out", str(tmp_path / "out.wav"))
    assert (result.returncode, result.stdout) == (69, "")
    assert result.stderr == (
        f"medisync-agent: error: no input device matching 'no such mic'; available input devices: {available}\n"
    )
    assert list(tmp_path.iterdir()) == []
