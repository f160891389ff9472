"""Measure a recogniser on the bundled dialogue: word error rate and speed (used to choose the local server's one).

The dialogue (``agent/data/dialogue.wav``) is resampled to 16 kHz with soxr like the agent does, then transcribed
three ways and scored against its script (``dialogue.json``) with :mod:`agent.wer`:

- ``per utterance``: each utterance alone, cut at its ground-truth extent (mean of the utterances' WERs, and
  pooled: all errors over all words);
- ``server spans``: the stretches the local server's span detector closes (what the demo's transcript is made of);
- ``whole file``: the whole dialogue in one call.

Speed is seconds of processing per second of audio (× real time), wall clock and CPU (all threads). Run
``python -m agent.server.recognizer_eval [--engine whisper|pocketsphinx] [--threads N]``; pocketsphinx is not a
dependency of the project (``pip install pocketsphinx`` into the venv first).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

from agent import SAMPLE_RATE
from agent.audio.dsp import to_int16
from agent.audio.wavfile import read_wav
from agent.server.recognizer import WhisperTranscriber, bundled_model_dir
from agent.server.transcriber import Span, SpanDetector
from agent.wer import WordErrors, word_errors

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
Recognise = Callable[[bytes], str]
"""16 kHz s16le PCM in, words out."""


def dialogue_pcm(wav: Path = DATA_DIR / "dialogue.wav") -> bytes:
    samples, rate = read_wav(str(wav))
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    return to_int16(soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)).tobytes()


def whisper(threads: int) -> Recognise:
    transcriber = WhisperTranscriber(bundled_model_dir(), threads=threads)
    return lambda pcm: " ".join(s.text for s in transcriber.transcribe(Span(0, pcm)))


def pocketsphinx() -> Recognise:
    from pocketsphinx import Decoder  # type: ignore[import-not-found,unused-ignore]

    decoder = Decoder(samprate=SAMPLE_RATE)

    def recognise(pcm: bytes) -> str:
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return str(hyp.hypstr) if hyp is not None else ""

    return recognise


def timed(recognise: Recognise, pieces: list[bytes]) -> tuple[list[str], float, float]:
    """Words of each piece, and wall and CPU seconds per second of audio."""
    wall, cpu = time.perf_counter(), time.process_time()
    words = [recognise(p) for p in pieces]
    seconds = sum(len(p) for p in pieces) / 2 / SAMPLE_RATE
    return words, (time.perf_counter() - wall) / seconds, (time.process_time() - cpu) / seconds


def evaluate(recognise: Recognise) -> list[str]:
    pcm = dialogue_pcm()
    script = [u for u in json.loads((DATA_DIR / "dialogue.json").read_text())["utterances"]]
    reference = " ".join(u["text"] for u in script)
    rows = []
    cuts = [pcm[2 * round(u["start"] * SAMPLE_RATE):2 * round(u["end"] * SAMPLE_RATE)] for u in script]
    heard, wall, cpu = timed(recognise, cuts)
    each = [word_errors(u["text"], h) for u, h in zip(script, heard, strict=True)]
    pooled = sum(each, WordErrors(0, 0, 0, 0))
    rows.append(f"per utterance  mean {100 * np.mean([e.rate for e in each]):5.1f} %  pooled "
                f"{100 * pooled.rate:5.1f} %  {wall:.3f} x rt wall  {cpu:.3f} x rt cpu")  # fmt: skip
    detector = SpanDetector()
    spans = [s.pcm for s in detector.feed(0, pcm) + detector.flush()]
    heard, wall, cpu = timed(recognise, spans)
    errors = word_errors(reference, " ".join(heard))
    rows.append(f"server spans   {len(spans)} spans   {100 * errors.rate:5.1f} %  {wall:.3f} x rt wall  "
                f"{cpu:.3f} x rt cpu  {errors}")  # fmt: skip
    heard, wall, cpu = timed(recognise, [pcm])
    errors = word_errors(reference, heard[0])
    rows.append(f"whole file               {100 * errors.rate:5.1f} %  {wall:.3f} x rt wall  {cpu:.3f} x rt cpu  "
                f"{errors}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.server.recognizer_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["whisper", "pocketsphinx"], default="whisper")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for whisper (default 2)")
    args = parser.parse_args()
    recognise = whisper(args.threads) if args.engine == "whisper" else pocketsphinx()
    for row in evaluate(recognise):
        print(f"{args.engine}: {row}")


if __name__ == "__main__":
    main()
