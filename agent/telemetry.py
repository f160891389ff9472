"""One telemetry snapshot of the daemon, read from the components' own counters; ``status`` and metrics read it.

Each figure has one owner that counts it, and everything else reads it from there:

==========================  ==========================================================================
figure                      owner
==========================  ==========================================================================
blocks, samples captured    :class:`agent.device_watch.Capture` (since the daemon started)
audio lost before the DSP   ``Capture.lost_samples`` (what the source reported missing, device loss) and
                            the visit tap's hand-off (``HandoffStats.samples_dropped``)
visit timeline, gated       :class:`agent.visit.Visit` (``samples_captured``, ``gated_samples``)
visit gaps (silence)        the visit's DSP (``Visit.lost_samples``: gaps filled with silence)
archive missing             the visit's archive writer (``ArchiveHealth.missing_samples``)
stream figures              the visit's :class:`agent.stream.stats.StreamStats`
ended visits' totals        :class:`agent.draining.EndedTotals` (added once when a visit/stream ends)
uploads, archive disk free  :class:`agent.daemon_uploads.Uploads` (``counts``, ``totals``)
background tasks            :class:`agent.supervise.SupervisedTasks` (``health``)
==========================  ==========================================================================

:class:`Telemetry` is a frozen value built in one place (``Daemon.telemetry()``); :meth:`Telemetry.status` and
:meth:`Telemetry.agent_stats` are pure projections of it, unit-tested without a daemon. The visit's part,
:class:`~agent.figures.VisitFigures`, is also what the end-of-visit summary of ``run``/``demo`` prints and what the
benchmarks record (:class:`agent.figures.VisitSummary` holds the copy taken at the visit's end), so ``status``, the
metrics, the summary and the benchmark reports read one copy of each count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent import SAMPLE_RATE
from agent.control import DaemonStatus
from agent.daemon_state import DaemonState
from agent.daemon_uploads import WORKER, QueueCounts, UploadTotals
from agent.draining import EndedTotals
from agent.figures import StreamFigures, VisitFigures
from agent.metrics import AgentStats
from agent.mic_problems import CLIPPING, NO_DATA, NO_SPEECH, SILENT

if TYPE_CHECKING:
    from agent.device_watch import Capture, CaptureTap
    from agent.supervise import WorkerHealth
    from agent.visit import Visit


@dataclass(frozen=True, slots=True)
class CaptureFigures:
    description: str = ""
    state: str = "opening"
    """``opening``, ``open`` or ``lost``."""
    level_dbfs: float | None = None
    blocks: int = 0
    samples: int = 0
    """Source-rate sample frames captured since start."""
    lost_samples: int = 0
    """Source-rate sample frames lost before the DSP since start (device loss, source overflow), and what the
    current visit's tap dropped (ended visits' taps: ``EndedTotals.handoff_samples_dropped``)."""
    sample_rate: int = 0


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    running: bool = False
    description: str = "starting"
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Telemetry:
    state: DaemonState = DaemonState.IDLE
    capture: CaptureFigures = CaptureFigures()
    visit: VisitFigures | None = None
    """The visit in progress; None when idle."""
    draining: tuple[StreamFigures, ...] = ()
    """Streams of ended visits still replaying their backlog."""
    ended: EndedTotals = field(default_factory=EndedTotals)
    """A copy of the totals of ended visits and streams."""
    queue: QueueCounts = field(default_factory=QueueCounts)
    uploads: UploadTotals = field(default_factory=UploadTotals)
    workers: dict[str, WorkerFigures] = field(default_factory=dict)
    pending_reload: bool = False
    frame_ms: int = 20
    mic_problems: frozenset[str] = frozenset()
    """The microphone detector's problems now (agent.mic_problems names)."""
    mic_level_dbfs: float = -120.0
    """The detector's recent level in dBFS."""

    def _stream(self) -> StreamFigures | None:
        return self.visit.stream if self.visit is not None else None

    def status(self) -> DaemonStatus:
        visit, stream, capture = self.visit, self._stream(), self.capture
        upload_worker = self.workers.get(WORKER, WorkerFigures())
        return DaemonStatus(
            state="paused" if self.state is DaemonState.RECORDING and visit is not None and visit.paused
            else self.state.value,
            paused_seconds=visit.paused_seconds if visit is not None else 0.0,
            device=capture.description,
            device_state=capture.state,
            input_level_dbfs=capture.level_dbfs,
            vad_share=visit.gated_samples / visit.samples if visit is not None and visit.samples else None,
            connection=stream.state if stream else "-",
            stream_mode=stream.mode if stream else "",
            ring_fill_s=stream.held_samples / SAMPLE_RATE if stream else 0.0,
            reconnects=stream.reconnects if stream else 0,
            upload_queue=self.queue.pending,
            visit_seconds=visit.samples / SAMPLE_RATE if visit else 0.0,
            gap_seconds=visit.lost_samples / SAMPLE_RATE if visit else 0.0,
            archive_writable=visit.archive.writable if visit else True,
            archive_missing_s=visit.archive.missing_samples / SAMPLE_RATE if visit else 0.0,
            archive_problem=visit.archive.reason if visit else "",
            blocks_captured=capture.blocks,
            appointment_id=visit.appointment_id if visit else "",
            session_id=visit.session_id if visit else "",
            pending_reload=self.pending_reload,
            upload_worker=upload_worker.description,
            worker_restarts=sum(w.restarts for w in self.workers.values()),
            needs_appointment=self.queue.needs_appointment,
            quarantined=self.queue.quarantined,
            draining_streams=len(self.draining),
            draining_seconds=sum(d.held_samples for d in self.draining) / SAMPLE_RATE,
            mic_problems=sorted(self.mic_problems),
        )

    def _frames(self, source_samples: int) -> int:
        """Source-rate sample frames as 16 kHz frames of ``frame_ms``."""
        rate = self.capture.sample_rate or SAMPLE_RATE
        return round(source_samples * SAMPLE_RATE / rate) // (SAMPLE_RATE * self.frame_ms // 1000)

    def agent_stats(self) -> AgentStats:
        """The metrics: counters are totals since the daemon started (ended visits + draining + current)."""
        visit, stream = self.visit, self._stream()
        live = [*self.draining, *([stream] if stream else [])]
        return AgentStats(
            frames_captured=self._frames(self.capture.samples),
            frames_dropped=self._frames(self.capture.lost_samples + self.ended.handoff_samples_dropped),
            vad_speech_ratio=visit.gated_samples / visit.samples if visit is not None and visit.samples else 0.0,
            ring_fill_seconds=stream.held_samples / SAMPLE_RATE if stream else 0.0,
            reconnects=self.ended.reconnects + sum(s.reconnects for s in live),
            ack_lag_seconds=stream.ack_lag_s if stream else 0.0,
            bytes_sent=self.ended.bytes_sent + sum(s.bytes_sent for s in live),
            stream_connected=stream is not None and stream.state == "streaming",
            visit_active=self.state.in_visit,
            upload_queue_length=self.queue.pending,
            uploads_completed=self.uploads.completed,
            upload_failures=self.uploads.failures,
            archive_writable=visit.archive.writable if visit else True,
            archive_samples_lost=self.ended.archive_samples_lost + (visit.archive.missing_samples if visit else 0),
            upload_worker_up=self.workers.get(WORKER, WorkerFigures()).running,
            worker_restarts=sum(w.restarts for w in self.workers.values()),
            uploads_unassigned=self.queue.needs_appointment,
            uploads_quarantined=self.queue.quarantined,
            archive_disk_free_bytes=self.queue.disk_free_bytes,
            archive_disk_free_ratio=self.queue.disk_free_ratio,
            mic_silent=SILENT in self.mic_problems,
            mic_clipping=CLIPPING in self.mic_problems,
            mic_no_data=NO_DATA in self.mic_problems,
            mic_no_speech=NO_SPEECH in self.mic_problems,
            mic_level_dbfs=self.mic_level_dbfs,
            visit_paused=self.state is DaemonState.RECORDING and visit is not None and visit.paused,
            paused_seconds=self.ended.paused_seconds + (visit.paused_seconds if visit is not None else 0.0),
            visits_declined=self.ended.visits_declined,
        )


def capture_figures(capture: Capture | None, tap: CaptureTap | None = None) -> CaptureFigures:
    """The capture's own counters; audio lost before the DSP adds what the visit's tap dropped so far."""
    if capture is None:
        return CaptureFigures()
    dropped = tap.handoff.stats.samples_dropped if tap is not None else 0
    return CaptureFigures(description=capture.description, state=capture.state, level_dbfs=capture.level_dbfs,
                          blocks=capture.blocks, samples=capture.samples, lost_samples=capture.lost_samples + dropped,
                          sample_rate=capture.sample_rate)  # fmt: skip


def visit_figures(visit: Visit) -> VisitFigures:
    """The visit's figures now: the same copy its end-of-visit summary holds (:meth:`agent.visit.Visit.figures`)."""
    return visit.figures()


def worker_figures(health: dict[str, WorkerHealth]) -> dict[str, WorkerFigures]:
    return {name: WorkerFigures(h.running, h.describe(), h.restarts) for name, h in health.items()}
