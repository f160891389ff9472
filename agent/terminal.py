"""What a person sees in the terminal during a visit: the live transcript and the end-of-visit summary."""

from __future__ import annotations

from typing import TextIO

from agent import SAMPLE_RATE
from agent.archive.upload_policy import ItemState
from agent.figures import VisitSummary
from agent.safe_text import clean_line
from agent.stream.wire import TranscriptEvent


def format_transcript(event: TranscriptEvent) -> str:
    """``[SPEAKER_0 | 12.340 --> 15.020]: words`` on the visit timeline (the documented MediSync format).

    Speaker and words come from the server: one clean line, without escape sequences or control characters.
    """
    speaker, words = clean_line(event.speaker or "") or "SPEAKER_?", clean_line(event.words)
    if event.start is None or event.end is None:
        return f"[{speaker}]: {words}"
    return f"[{speaker} | {event.start:.3f} --> {event.end:.3f}]: {words}"


class TranscriptPrinter:
    """Prints transcript lines as they arrive (called on the event loop)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines = 0

    def __call__(self, event: TranscriptEvent) -> None:
        self.lines += 1
        print(format_transcript(event), file=self.out, flush=True)


def upload_outcome(summary: VisitSummary, state: ItemState) -> str:
    if state is ItemState.DONE:
        return "uploaded and confirmed"
    if state is ItemState.BLOCKED:
        return "queued: MediSync says the subscription is inactive; it will be retried"
    if state is ItemState.DEAD:
        return "NOT uploaded: moved to the dead-letter folder (audio kept); see `medisync-agent uploads list`"
    return "queued: will be retried by the daemon or `medisync-agent uploads retry`"


def _archive_rows(summary: VisitSummary) -> list[tuple[str, str]]:
    """The stretches missing from the recording (disk full, I/O error), one row each; none when complete; then the
    privacy pauses (silence in the recording, on the same timeline)."""
    rows = [("MISSING from the recording", m.describe()) for m in summary.archive_missing]
    rows += [("privacy pause (silence)", f"{p.start / SAMPLE_RATE:.2f}-{p.end / SAMPLE_RATE:.2f} s")
             for p in summary.paused]  # fmt: skip
    return rows


def format_summary(summary: VisitSummary, upload_state: ItemState, extra: dict[str, str] | None = None) -> str:
    """The counts come from ``summary.figures``: the snapshot ``status`` and the metrics read (agent.figures)."""
    stream = summary.stream
    rows: list[tuple[str, str]] = [
        ("recording", summary.record.path.name),
        ("seconds captured", f"{summary.seconds_captured:.1f}"),
        ("samples lost by the source (silence)", str(summary.lost_samples)),
        *_archive_rows(summary),
        ("seconds gated (speech passed)", f"{summary.seconds_gated:.1f}"),
        ("VAD segments", str(len(summary.record.segments))),
    ]
    if stream is None:
        rows.append(("live stream", "off"))
    else:
        rows += [
            ("live stream", f"{stream.mode or 'never connected'}, {stream.state}"),
            ("messages sent / acknowledged", f"{stream.sent_messages} / {stream.acked_messages}"),
            ("messages resent after reconnects", str(stream.resent_messages)),
            ("messages replayed after an outage", str(stream.paced_messages)),
            ("reconnects", str(stream.reconnects)),
            ("gap announced (samples)", str(stream.gap_samples)),
            ("stream confirmed by server", "yes" if summary.stream_confirmed else "no"),
        ]
        if stream.protocol_errors:
            rows.append(("server protocol errors caught", str(stream.protocol_errors)))
    if summary.mic_problems is not None:
        rows.append(("microphone health (problems raised)", ", ".join(summary.mic_problems) or "ok"))
    rows += list((extra or {}).items())
    rows.append(("upload", upload_outcome(summary, upload_state)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
