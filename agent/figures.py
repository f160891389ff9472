"""The figures one visit's parts count, copied once into a frozen value: the one snapshot every reader shares.

:class:`VisitFigures` is what ``status`` and the metrics show of the visit in progress (:mod:`agent.telemetry`),
what the end-of-visit summary of ``run`` and ``demo`` prints (:class:`VisitSummary`, :mod:`agent.terminal`) and what
the benchmarks record: all of them read the same copy, taken by :meth:`agent.visit.Visit.figures`, so they cannot
disagree. The counts stay the components' own (the recorder's gaps, the stream's :class:`StreamStats`, the
archive's :class:`ArchiveHealth`); nothing here counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import SAMPLE_RATE
from agent.archive.resilient import ArchiveHealth
from agent.stream.stats import StreamStats

if TYPE_CHECKING:  # the summary's parts: not imported by ``status``, which reads only the figures
    from agent.archive.resilient import MissingStretch
    from agent.archive.upload_item import UploadItem
    from agent.recorder import RecordSummary
    from agent.visit_pause import PausedStretch


@dataclass(frozen=True, slots=True)
class StreamFigures:
    """A copy of one stream's :class:`~agent.stream.stats.StreamStats` (the counts stay the stream's own)."""

    state: str = "-"
    """The speech socket's state (``connecting``, ``streaming``, ``backoff`` ... ``done``)."""
    mode: str = ""
    """``resume`` or ``basic`` once picked."""
    held_samples: int = 0
    """Samples (16 kHz) held for sending that the server has not confirmed."""
    reconnects: int = 0
    ack_lag_s: float = 0.0
    """Seconds between the newest audio sent and the newest acknowledged."""
    bytes_sent: int = 0
    sent_messages: int = 0
    acked_messages: int = 0
    resent_messages: int = 0
    """Messages sent again after a reconnect."""
    paced_messages: int = 0
    """Messages replayed under pacing after an outage."""
    gap_samples: int = 0
    """Samples (16 kHz) announced to the server as lost (resume mode)."""
    dropped_samples: int = 0
    """Samples (16 kHz) pushed out of a full ring before the server confirmed them."""
    protocol_errors: int = 0

    @classmethod
    def of(cls, stats: StreamStats) -> StreamFigures:
        return cls(state=stats.state.value, mode=stats.mode or "", held_samples=stats.held_samples,
                   reconnects=stats.reconnects, ack_lag_s=stats.ack_lag_s, bytes_sent=stats.bytes_sent,
                   sent_messages=stats.sent_messages, acked_messages=stats.acked_messages,
                   resent_messages=stats.resent_messages, paced_messages=stats.paced_messages,
                   gap_samples=stats.gap_samples, dropped_samples=stats.dropped_samples,
                   protocol_errors=stats.protocol_errors)  # fmt: skip


@dataclass(frozen=True, slots=True)
class VisitFigures:
    """One visit's figures: the visit in progress (``status``, metrics) or, taken at its end, its summary."""

    appointment_id: str
    session_id: str
    samples: int
    """Timeline samples (16 kHz) so far."""
    gated_samples: int
    """Timeline samples (16 kHz) the voice gate passed to the stream."""
    lost_samples: int
    """Timeline samples (16 kHz) the source lost, archived as silence."""
    archive: ArchiveHealth
    stream: StreamFigures | None
    """None when streaming is off (no subscription, or turned off)."""
    paused: bool = False
    """Paused for privacy now (agent.visit_pause)."""
    paused_seconds: float = 0.0
    """Seconds this visit has been paused so far."""


@dataclass(frozen=True, slots=True)
class VisitSummary:
    """The end of one visit: its recording, its upload item, and its figures (the snapshot ``status`` read)."""

    record: RecordSummary
    figures: VisitFigures
    """Taken once the visit (and, with ``run(finish_stream=True)``, its stream) ended."""
    stream_confirmed: bool
    """The server confirmed every gated sample (resume mode ``closed``, basic mode all chunks done); False also
    while the stream still drains in the background (``run(finish_stream=False)``)."""
    upload: UploadItem
    paused: tuple[PausedStretch, ...] = ()
    """Privacy pauses on the timeline (silence in the archive, nothing on the wire)."""
    mic_problems: tuple[str, ...] | None = None
    """Microphone problems (:mod:`agent.mic_problems` names) the detector raised during the visit, sorted; None
    when no detector watched the source (files, generated audio). The daemon's telemetry shows those of now."""

    @property
    def appointment_id(self) -> str:
        return self.figures.appointment_id

    @property
    def session_id(self) -> str:
        return self.figures.session_id

    @property
    def stream(self) -> StreamFigures | None:
        return self.figures.stream

    @property
    def gated_samples(self) -> int:
        return self.figures.gated_samples

    @property
    def lost_samples(self) -> int:
        return self.figures.lost_samples

    @property
    def seconds_captured(self) -> float:
        return self.figures.samples / SAMPLE_RATE

    @property
    def seconds_gated(self) -> float:
        return self.figures.gated_samples / SAMPLE_RATE

    @property
    def archive_missing(self) -> tuple[MissingStretch, ...]:
        """Stretches of the visit the recording lacks (disk full, I/O error); empty when it is complete."""
        return self.record.archive_missing
