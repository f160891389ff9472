"""The capture path's cheaper per-block code gives exactly what a plain reference gives (issue 11).

The event loop runs DSP, voice gate, microphone health and archive write for every 100 ms block; their faster forms
(the VAD straight into webrtcvad's C call, the 16 kHz pass-through without a concatenate, the health window's totals
as plain sums, the archive's one-pass run of contiguous frames) are compared here, sample for sample and decision for
decision, with straightforward references written independently of them.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import webrtcvad

from agent.archive.resilient import ResilientArchiveWriter
from agent.audio.dsp import Dsp, to_int16
from agent.audio.mic_health import FLOOR_DBFS, MicHealthDetector
from agent.audio.types import Block, Frame
from agent.audio.vad import WebRtcVad
from agent.settings import ArchiveSettings, AudioSettings, MicSettings
from tests.plugins.archive import DIALOGUE, wav_pcm

RATE = 16000


def dialogue_16k(seconds: float = 20.0) -> npt.NDArray[np.int16]:
    """The bundled dialogue, first channel, taken to 16 kHz by linear interpolation (any speech-like s16 will do)."""
    with wave.open(str(DIALOGUE)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        raw = np.frombuffer(w.readframes(round(seconds * rate)), dtype="<i2").reshape(-1, channels)[:, 0]
    at = np.arange(0, len(raw) - 1, rate / RATE)
    return np.round(np.interp(at, np.arange(len(raw)), raw)).astype("<i2")


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_the_vad_adapter_decides_every_frame_like_webrtcvad(mode: int, frame_ms: int) -> None:
    pcm = dialogue_16k().tobytes()
    step = 2 * RATE * frame_ms // 1000
    ours, theirs = WebRtcVad(mode), webrtcvad.Vad(mode)  # stateful: each sees the same sequence
    decisions = [(ours(pcm[i : i + step]), theirs.is_speech(pcm[i : i + step], RATE))
                 for i in range(0, len(pcm) - step + 1, step)]  # fmt: skip
    assert all(a == b and type(a) is bool for a, b in decisions)
    assert 0 < sum(a for a, _ in decisions) < len(decisions)  # both speech and silence were judged


def test_to_int16_equals_the_float64_reference_for_halves_extremes_and_overs() -> None:
    rng = np.random.default_rng(11)
    halves = (np.arange(-32770, 32770) + 0.5) / 32768.0
    x = np.concatenate([rng.uniform(-1.5, 1.5, 200_000), halves, [0.0, -0.0, 1.0, -1.0, 1e-9, -1e-9, 3.0, -3.0]])
    x32 = x.astype(np.float32)
    reference = np.clip(np.rint(x32.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    assert np.array_equal(to_int16(x32), reference)


@pytest.mark.parametrize("sizes", [[1600], [320], [1000], [1600, 7, 333, 1600, 4000, 1]], ids=str)
def test_16k_mono_blocks_pass_through_as_the_reference_frames(sizes: list[int]) -> None:
    ints = dialogue_16k(6.0)
    x = (ints / 32768.0).astype(np.float32)[:, None]
    dsp = Dsp(RATE, AudioSettings())
    frames: list[Frame] = []
    anchors: list[tuple[int, float]] = []  # (input position, capture time) of each block
    i, k = 0, 0
    while i < len(x):
        block = x[i : i + sizes[k % len(sizes)]].copy()
        anchors.append((i, 50.0 + 0.37 * k))
        frames += dsp.process(Block(block, capture_time=anchors[-1][1]))
        block[:] = 0.5  # the source may reuse its buffer: what was handed out must not change
        i, k = i + len(block), k + 1
    frames += dsp.flush()
    assert b"".join(f.pcm for f in frames) == ints.tobytes()
    expected_start = 0
    for f in frames:
        assert f.start == expected_start
        expected_start += len(f.pcm) // 2
        anchor_pos, anchor_time = max(a for a in anchors if a[0] <= f.start)
        assert f.capture_time == anchor_time + (f.start - anchor_pos) / RATE
    assert [len(f.pcm) for f in frames[:-1]] == [640] * (len(frames) - 1)


def test_the_health_window_level_is_the_recount_of_its_blocks() -> None:
    settings = MicSettings()
    detector = MicHealthDetector(settings, 0.0)
    rng = np.random.default_rng(5)
    fed: list[tuple[float, npt.NDArray[np.float32]]] = []
    for i in range(200):
        level = [0.0, 1e-4, 0.05, 0.3][i // 17 % 4]
        block = (rng.standard_normal(1600) * level).astype(np.float32)
        end = (i + 1) * 0.1
        detector.block(block, i * 0.1, end)
        fed.append((end, block))
        window = [b for t, b in fed if t > end - settings.window_s]
        power = sum(float(np.dot(b, b)) for b in window) / sum(b.size for b in window)
        expected = FLOOR_DBFS if power <= 1e-12 else max(FLOOR_DBFS, 10.0 * math.log10(power))
        assert detector.level_dbfs == expected


def test_the_visit_archive_fills_a_late_frame_with_silence_and_refuses_an_overlap(tmp_path: Path) -> None:
    writer = ResilientArchiveWriter.create(tmp_path / "visit.wav", ArchiveSettings())
    a, b, c = (bytes([n]) * 640 for n in (1, 2, 3))
    writer.write_frames([Frame(0, a), Frame(320, b), Frame(1000, c)])  # 360 samples of silence before c
    with pytest.raises(ValueError, match="overlaps"):
        writer.write_frames([Frame(1200, a)])
    assert writer.position == 1320
    path = writer.finish()
    assert wav_pcm(path) == a + b + bytes(720) + c
