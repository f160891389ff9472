"""Measure the voice gate against ground truth (used by the VAD tests and to choose the VadSettings defaults).

Ground truth is the bundled ``agent/data/dialogue.json``: utterance extents in seconds. The gate's segments are
compared on the 16 kHz timeline:

- coverage: share of utterances lying entirely inside one segment (onset and end kept);
- recall: share of ground-truth speech samples the gate passed;
- precision: share of passed samples that are ground-truth speech (the rest is pause passed as pre-roll,
  hangover or false alarm);
- passed: share of all samples passed.

Run ``python -m agent.audio.vad_eval`` for a sweep over a few settings.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent import SAMPLE_RATE
from agent.audio.pipeline import AudioPipeline
from agent.audio.types import Block
from agent.audio.vad import SegmentEnd, SegmentStart
from agent.audio.wavfile import read_wav
from agent.settings import AudioSettings, VadSettings

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DIALOGUE_WAV = DATA_DIR / "dialogue.wav"
DIALOGUE_JSON = DATA_DIR / "dialogue.json"


@dataclass(frozen=True, slots=True)
class GateScore:
    coverage: float
    recall: float
    precision: float
    passed: float
    segments: list[tuple[int, int]]
    """(start, end) timeline indices of the gate's segments."""
    truth: list[tuple[int, int]]
    """(start, end) timeline indices of the ground-truth utterances."""


def load_truth(path: Path = DIALOGUE_JSON) -> list[tuple[int, int]]:
    meta = json.loads(path.read_text())
    return [(round(u["start"] * SAMPLE_RATE), round(u["end"] * SAMPLE_RATE)) for u in meta["utterances"]]


def gate_segments(
    wav: Path, audio: AudioSettings, vad: VadSettings, noise_dbfs: float | None = None
) -> tuple[list[tuple[int, int]], int]:
    """Segments the real pipeline (webrtcvad) finds in ``wav`` (optionally with seeded white noise of the given
    RMS level added, like a room's background), and the total timeline length."""
    samples, rate = read_wav(str(wav))
    if noise_dbfs is not None:
        noise = np.random.default_rng(1).standard_normal(samples.shape) * 10.0 ** (noise_dbfs / 20.0)
        samples = np.clip(samples + noise, -1.0, 1.0).astype(np.float32)
    segments: list[tuple[int, int]] = []
    start = total = 0
    pipeline = AudioPipeline(rate, audio, vad)
    step = rate // 50
    blocks = (Block(samples[i : i + step], capture_time=i / rate) for i in range(0, len(samples), step))
    for out in [*(pipeline.process(b) for b in blocks), pipeline.finish()]:
        total += sum(f.samples for f in out.frames)
        for event in out.events:
            if isinstance(event, SegmentStart):
                start = event.start
            elif isinstance(event, SegmentEnd):
                segments.append((start, event.end))
    return segments, total


def score(segments: list[tuple[int, int]], truth: list[tuple[int, int]], total: int) -> GateScore:
    passed = np.zeros(total, dtype=bool)
    speech = np.zeros(total, dtype=bool)
    for a, b in segments:
        passed[a:b] = True
    for a, b in truth:
        speech[a:b] = True
    covered = sum(any(s <= a and b <= e for s, e in segments) for a, b in truth)
    hits = int(np.count_nonzero(passed & speech))
    return GateScore(
        coverage=covered / len(truth),
        recall=hits / max(1, int(np.count_nonzero(speech))),
        precision=hits / max(1, int(np.count_nonzero(passed))),
        passed=float(np.count_nonzero(passed)) / max(1, total),
        segments=segments,
        truth=truth,
    )


def evaluate(
    vad: VadSettings, audio: AudioSettings | None = None, wav: Path = DIALOGUE_WAV, noise_dbfs: float | None = None
) -> GateScore:
    segments, total = gate_segments(wav, audio or AudioSettings(), vad, noise_dbfs)
    return score(segments, load_truth(wav.with_suffix(".json")), total)


def main() -> None:
    print("noise aggr onset preroll hangover  coverage recall precision passed segments")
    grid = itertools.product((None, -50.0, -40.0), (1, 2, 3), (20, 60, 100), (300,), (300, 600, 900))
    for noise, aggr, onset, preroll, hangover in grid:
        vad = VadSettings(aggressiveness=aggr, onset_ms=onset, preroll_ms=preroll, hangover_ms=hangover)  # type: ignore[arg-type]
        s = evaluate(vad, noise_dbfs=noise)
        print(
            f"{noise or 'none':>5} {aggr:4} {onset:5} {preroll:7} {hangover:8}  {s.coverage:8.2f} {s.recall:6.3f}"
            f" {s.precision:9.3f} {s.passed:6.3f} {len(s.segments):8}"
        )


if __name__ == "__main__":
    main()
