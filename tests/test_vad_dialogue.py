"""The real gate (webrtcvad) on the bundled dialogue against its ground truth."""

from __future__ import annotations

import itertools
import json
import wave

import pytest

from agent import SAMPLE_RATE
from agent.audio.vad_eval import DIALOGUE_JSON, DIALOGUE_WAV, evaluate
from agent.settings import AudioSettings, VadSettings


def long_pauses() -> list[tuple[int, int]]:
    utterances = json.loads(DIALOGUE_JSON.read_text())["utterances"]
    return [
        (round(a["end"] * SAMPLE_RATE), round(b["start"] * SAMPLE_RATE))
        for a, b in itertools.pairwise(utterances)
        if b["start"] - a["end"] >= 3.0
    ]


def test_bundled_dialogue_matches_its_description() -> None:
    meta = json.loads(DIALOGUE_JSON.read_text())
    assert 30 <= meta["duration"] <= 60 and meta["sample_rate"] == 22050
    assert {u["speaker"] for u in meta["utterances"]} == {"doctor", "patient"}
    assert len(long_pauses()) >= 3
    with wave.open(str(DIALOGUE_WAV)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2)
        assert abs(w.getnframes() / 22050 - meta["duration"]) < 0.001


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("noise_dbfs", [None, -45.0])
def test_every_utterance_is_covered_and_long_pauses_are_gated_out(
    frame_ms: int, noise_dbfs: float | None, capsys: pytest.CaptureFixture[str]
) -> None:
    score = evaluate(VadSettings(), AudioSettings(frame_ms=frame_ms), noise_dbfs=noise_dbfs)  # type: ignore[arg-type]
    with capsys.disabled():
        print(
            f"\nVAD defaults, {frame_ms} ms frames, noise {noise_dbfs or 'none'} dBFS: coverage {score.coverage:.2f}"
            f" recall {score.recall:.3f} precision {score.precision:.3f} passed {score.passed:.3f}"
            f" segments {len(score.segments)}"
        )
    assert score.coverage == 1.0  # every utterance inside one segment: pre-roll kept the onset, hangover the end
    assert score.recall == 1.0
    assert score.precision >= 0.75
    for a, b in long_pauses():
        passed = sum(max(0, min(b, e) - max(a, s)) for s, e in score.segments)
        assert passed <= 0.5 * (b - a), "a long pause should be mostly gated out"
