"""The demo summary's transcript rows: which transcriber ran, and how close its words came to the dialogue's script.

The script is the bundled ground truth (``agent/data/dialogue.json``). The transcript measured is the one the local
server made from the live stream and keeps for the appointment (``GET transcriptions``, source ``live``), in
timeline order: every span the stream delivered, including one transcribed after the stream closed. Repeats are
also looked for in the lines the server sent on the stream (a line sent twice would show only there). Word error
rate and repeated utterances are computed by :mod:`agent.wer` (normalisation described there).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.wer import repeated_utterances, word_errors

if TYPE_CHECKING:
    from agent.server import ServerThread

SCRIPT = Path(__file__).resolve().parent.parent / "data" / "dialogue.json"
WER_TARGET = 0.20
"""The demo's bar for the recogniser on the bundled dialogue (issue 13): at most 20 % word error rate."""
WER_ROW = "word error rate vs script"
REPEATED_ROW = "utterances heard twice"
SETTLE_TIMEOUT_S = 120.0
"""Longest wait after the visit for the server's recogniser to finish the stream's last spans."""


def script_utterances(path: Path = SCRIPT) -> list[str]:
    return [str(u["text"]) for u in json.loads(path.read_text())["utterances"]]


@dataclass(frozen=True)
class TranscriptCheck:
    rows: dict[str, str]
    repeated: int
    """Script utterances whose words the kept transcript, or the lines sent live, hold more than once (0 when
    there are no words to check)."""
    late_lines: tuple[str, ...] = ()
    """Kept lines the stream did not carry (transcribed after it closed), to show after the live ones."""


def words_of_line(line: str) -> str:
    """The words of a ``[SPEAKER_0 | 0.500 --> 2.800]: words`` line."""
    return line.split("]: ", 1)[1] if line.startswith("[") and "]: " in line else line


def check_transcript(transcriber: str, kept: list[str], sent: list[str], script: list[str]) -> TranscriptCheck:
    """Rows for the summary. ``kept``: the words of the server's live transcript segments in timeline order;
    ``sent``: the words of the transcription lines the server sent on the stream (the last may come after the
    stream closed, so it is kept but not sent)."""
    rows = {"server's transcriber": transcriber,
            "transcript lines sent live / kept": f"{len(sent)} / {len(kept)}"}  # fmt: skip
    if transcriber == "placeholder":
        rows[WER_ROW] = "n/a (placeholder transcriber: time spans, no words; install the [server] extra)"
        return TranscriptCheck(rows, 0)
    heard = " ".join(kept)
    errors = word_errors(" ".join(script), heard)
    verdict = "within" if errors.rate <= WER_TARGET else "ABOVE"
    rows[WER_ROW] = (f"{100 * errors.rate:.1f} % ({errors.errors} errors in {errors.reference_words} words; "
                     f"{verdict} the {100 * WER_TARGET:.0f} % target)")  # fmt: skip
    repeated = max(repeated_utterances(script, heard), repeated_utterances(script, " ".join(sent)))
    rows[REPEATED_ROW] = str(repeated)
    return TranscriptCheck(rows, repeated)


async def transcript_check(server: ServerThread, session_id: str, appointment_id: str) -> TranscriptCheck:
    """Wait for the in-process server to finish transcribing the stream, then score what it kept and sent."""
    try:
        await asyncio.to_thread(server.call, server.server.speech.settled(session_id), SETTLE_TIMEOUT_S)
    except TimeoutError:
        print(f"transcription still running after {SETTLE_TIMEOUT_S:g} s: scoring what is done", file=sys.stderr)
    kept = [s for s in server.server.store.segments(appointment_id) if s.source == "live"]
    sent = [words_of_line(m["text"]) for m in server.server.sent_transcriptions.get(session_id, [])]
    check = check_transcript(server.server.transcription.name, [s.text for s in kept], sent, script_utterances())
    unsent = list(sent)
    late = []
    for seg in kept:
        if seg.text in unsent:
            unsent.remove(seg.text)
        else:
            late.append(f"after the stream closed: [{seg.speaker} | {seg.start_s:.3f} --> {seg.end_s:.3f}]: {seg.text}")
    return TranscriptCheck(check.rows, check.repeated, tuple(late))
