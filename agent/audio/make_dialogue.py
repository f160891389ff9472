"""Generate the bundled test speech: a short, fictional doctor/patient dialogue spoken by espeak-ng.

Writes ``dialogue.wav`` (espeak-ng's native 22050 Hz mono 16-bit, so the agent's resampler is exercised) and
``dialogue.json`` (ground truth: each utterance's speaker, text and its start/end in seconds, measured from the
actual non-silent extent of the synthesised audio). Two clearly different voices; pauses between turns are short
(0.3-0.8 s) and a few long ones (>= 3 s) give the voice gate something to cut. No real names or real patient data.

Run ``python -m agent.audio.make_dialogue`` from the repository root (needs ``espeak-ng`` on PATH).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.errors import AgentError, InputError

RATE = 22050
VOICES = {"doctor": ("en-us+m3", 165, 45), "patient": ("en-gb+f4", 150, 65)}
"""speaker -> (espeak-ng voice, words per minute, pitch 0-99)."""
SILENCE_THRESHOLD = 0.01
"""Amplitude (fraction of full scale, about -40 dBFS) above which a sample counts as sound for the ground truth."""

# (speaker, text, pause in seconds after the utterance)
SCRIPT: list[tuple[str, str, float]] = [
    ("doctor", "Good morning. What brings you in today?", 0.6),
    ("patient", "I have had a dry cough for about two weeks, and it gets worse at night.", 0.8),
    ("doctor", "Any fever or shortness of breath?", 0.4),
    ("patient", "A little fever last weekend, but none since then.", 3.2),
    ("doctor", "Let me listen to your lungs. Please take a deep breath.", 4.0),
    ("doctor", "And once more, slowly.", 0.5),
    ("patient", "Is it anything serious?", 0.7),
    ("doctor", "Your lungs sound clear. It is most likely a lingering viral cough.", 3.5),
    ("doctor", "I suggest honey in warm water, rest, and plenty of fluids.", 0.3),
    ("patient", "Should I come back if it does not improve?", 0.6),
    ("doctor", "Yes. If it lasts another two weeks, or you get a high fever, call us.", 0.5),
]
LEAD_IN_SECONDS = 0.5


def synthesize(text: str, voice: str, speed: int, pitch: int) -> npt.NDArray[np.int16]:
    """espeak-ng's output for ``text`` as int16 samples at 22050 Hz."""
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    )
    with wave.open(io.BytesIO(result.stdout)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise InputError(f"unexpected espeak-ng output format {w.getframerate()} Hz x{w.getnchannels()}")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def sounding_extent(samples: npt.NDArray[np.int16]) -> tuple[int, int]:
    """(first, one past last) sample index whose amplitude exceeds the silence threshold."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE_THRESHOLD * 32768)
    if len(loud) == 0:
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


def build() -> tuple[npt.NDArray[np.int16], list[dict[str, object]]]:
    pieces = [np.zeros(round(LEAD_IN_SECONDS * RATE), dtype=np.int16)]
    position = len(pieces[0])
    truth: list[dict[str, object]] = []
    for speaker, text, pause in SCRIPT:
        voice, speed, pitch = VOICES[speaker]
        audio = synthesize(text, voice, speed, pitch)
        first, last = sounding_extent(audio)
        # Trim espeak's own leading/trailing silence so the scripted pause is the pause; the ground truth is
        # then exactly the non-silent extent.
        pieces.append(audio[first:last])
        start, end = position / RATE, (position + last - first) / RATE
        truth.append({"speaker": speaker, "text": text, "start": round(start, 4), "end": round(end, 4)})
        position += last - first
        silence = np.zeros(round(pause * RATE), dtype=np.int16)
        pieces.append(silence)
        position += len(silence)
    return np.concatenate(pieces), truth


def write(out_dir: Path) -> tuple[Path, Path]:
    samples, truth = build()
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path, json_path = out_dir / "dialogue.wav", out_dir / "dialogue.json"
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    meta = {
        "sample_rate": RATE,
        "duration": round(len(samples) / RATE, 4),
        "generator": "python -m agent.audio.make_dialogue (espeak-ng)",
        "utterances": truth,
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return wav_path, json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.audio.make_dialogue",
        description="Generate the bundled fictional doctor/patient dialogue (dialogue.wav + dialogue.json ground "
        "truth) with espeak-ng: 22050 Hz mono 16-bit, two voices, short and long (>= 3 s) pauses.",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "data",
        help="folder to write dialogue.wav and dialogue.json into (default: agent/data)",
    )
    args = parser.parse_args(argv)
    try:
        if shutil.which("espeak-ng") is None:
            raise InputError("espeak-ng not found: install it (apt-get install espeak-ng)")
        wav_path, json_path = write(args.out_dir)
    except AgentError as exc:
        print(f"make_dialogue: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"make_dialogue: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {wav_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
