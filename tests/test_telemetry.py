"""The one telemetry snapshot: ``status`` and the metrics are pure projections of it, so each figure is counted in
one place and both read the same value. Pure: built by hand, no daemon."""

from __future__ import annotations

import threading

import numpy as np

from agent import SAMPLE_RATE
from agent.archive.resilient import ArchiveHealth
from agent.audio.handoff import Handoff
from agent.audio.types import Block, BlockSink
from agent.control import DaemonStatus
from agent.daemon_state import DaemonState
from agent.daemon_uploads import COUNTER, WORKER, QueueCounts, UploadTotals
from agent.device_watch import Capture
from agent.draining import EndedTotals
from agent.figures import StreamFigures, VisitFigures
from agent.metrics import AgentStats
from agent.supervise import WorkerHealth
from agent.telemetry import (
    CaptureFigures,
    Telemetry,
    WorkerFigures,
    capture_figures,
    worker_figures,
)
from tests.plugins.capture import capture_running
from tests.plugins.daemon import poll

STREAM = StreamFigures(state="streaming", mode="resume", held_samples=24_000, reconnects=2, ack_lag_s=0.3,
                       bytes_sent=64_000)  # fmt: skip
DRAINING = StreamFigures(state="backoff", mode="basic", held_samples=8_000, reconnects=5, bytes_sent=1_000)


def recording() -> Telemetry:
    capture = CaptureFigures(description="mic 'USB' 48000 Hz x1", state="open", level_dbfs=-31.5, blocks=900,
                             samples=48_000 * 90, lost_samples=48_000 * 2, sample_rate=48_000)  # fmt: skip
    archive = ArchiveHealth(writable=False, missing_samples=SAMPLE_RATE * 3, reason="disk full")
    visit = VisitFigures(appointment_id="a1b2", session_id="s-1", samples=SAMPLE_RATE * 60,
                         gated_samples=SAMPLE_RATE * 15, lost_samples=SAMPLE_RATE * 2, archive=archive,
                         stream=STREAM, paused_seconds=3.0)  # fmt: skip  (paused earlier, resumed)
    workers = {WORKER: WorkerFigures(False, "restarting (OSError: disk)", 2), COUNTER: WorkerFigures(True, "up", 1)}
    return Telemetry(
        state=DaemonState.RECORDING,
        capture=capture,
        visit=visit,
        draining=(DRAINING,),
        ended=EndedTotals(reconnects=7, bytes_sent=10_000, archive_samples_lost=500, handoff_samples_dropped=48_000,
                          paused_seconds=12.0, visits_declined=1),
        queue=QueueCounts(pending=3, needs_appointment=1, quarantined=4, disk_free_bytes=10**9, disk_free_ratio=0.4),
        uploads=UploadTotals(completed=6, failures=2),
        workers=workers,
        pending_reload=True,
        frame_ms=20,
        mic_problems=frozenset({"clipping", "no_speech"}),
        mic_level_dbfs=-2.5,
    )


def test_status_returns_every_figure_it_promises() -> None:
    status = recording().status()
    unset = [name for name in DaemonStatus.__struct_fields__ if getattr(status, name) == getattr(DaemonStatus(), name)]
    assert unset == []  # every field of DaemonStatus is filled from the snapshot
    assert status.state == "recording"
    assert (status.visit_seconds, status.gap_seconds, status.archive_missing_s) == (60.0, 2.0, 3.0)
    assert (status.vad_share, status.ring_fill_s, status.reconnects) == (0.25, 1.5, 2)
    assert (status.draining_streams, status.draining_seconds) == (1, 0.5)
    assert (status.upload_worker, status.worker_restarts) == ("restarting (OSError: disk)", 3)


def test_metrics_fill_every_figure_of_the_snapshot_and_count_since_start() -> None:
    stats = recording().agent_stats()
    # Not raised in this snapshot (the visit records, unpaused; the detector's other problems are off):
    owned_elsewhere = {"visit_paused", "mic_silent", "mic_no_data"}
    unset = [name for name in AgentStats.__struct_fields__
             if name not in owned_elsewhere and getattr(stats, name) == getattr(AgentStats(), name)]  # fmt: skip
    assert unset == []
    assert stats.frames_captured == 90 * 50  # 48 kHz counted as 20 ms frames
    assert stats.frames_dropped == (2 + 1) * 50  # the capture's count and ended visits' hand-off drops
    assert stats.reconnects == 7 + 5 + 2  # ended visits + the draining stream + the current one
    assert stats.bytes_sent == 10_000 + 1_000 + 64_000
    assert stats.archive_samples_lost == 500 + SAMPLE_RATE * 3
    assert (stats.uploads_completed, stats.upload_failures, stats.upload_worker_up) == (6, 2, False)
    assert (stats.mic_clipping, stats.mic_no_speech, stats.mic_silent, stats.mic_no_data) == (True, True, False, False)
    assert stats.mic_level_dbfs == -2.5
    assert (stats.paused_seconds, stats.visits_declined) == (12.0 + 3.0, 1)


def test_status_and_metrics_read_the_same_values() -> None:
    telemetry = recording()
    status, stats = telemetry.status(), telemetry.agent_stats()
    assert stats.ring_fill_seconds == status.ring_fill_s
    assert stats.vad_speech_ratio == status.vad_share
    assert stats.upload_queue_length == status.upload_queue
    assert stats.worker_restarts == status.worker_restarts
    assert (stats.uploads_unassigned, stats.uploads_quarantined) == (status.needs_appointment, status.quarantined)
    assert stats.archive_writable is status.archive_writable is False


def test_idle_shows_no_visit_and_keeps_the_totals() -> None:
    idle = Telemetry(ended=EndedTotals(reconnects=3, bytes_sent=9, archive_samples_lost=1), draining=(DRAINING,))
    status, stats = idle.status(), idle.agent_stats()
    assert (status.state, status.connection, status.visit_seconds, status.vad_share) == ("idle", "-", 0.0, None)
    assert (status.appointment_id, status.session_id, status.archive_writable) == ("", "", True)
    assert status.draining_streams == 1
    assert (stats.visit_active, stats.stream_connected) == (False, False)
    assert (stats.reconnects, stats.bytes_sent, stats.archive_samples_lost) == (3 + 5, 9 + 1_000, 1)


def test_without_a_capture_the_figures_say_opening() -> None:
    assert capture_figures(None) == CaptureFigures()
    assert Telemetry().status().device_state == "opening"


def test_worker_figures_copy_the_health() -> None:
    health = {WORKER: WorkerHealth(WORKER, running=False, reason="OSError: disk", restarts=4)}
    assert worker_figures(health) == {WORKER: WorkerFigures(False, "restarting (OSError: disk)", 4)}


class OverflowingSource:
    """A source that reports samples it lost itself (``Block.missed``: an input overflow) to the capture's sink,
    from a thread of its own like PortAudio's callback, then stays open until stopped."""

    description = "test source 16000 Hz x1"
    sample_rate = 16_000
    channels = 1

    def __init__(self, blocks: list[Block], sink: BlockSink) -> None:
        self._blocks = blocks
        self._sink = sink
        self.handoff = Handoff(16_000)
        self._producer = threading.Thread(target=self._produce)

    def _produce(self) -> None:
        for block in self._blocks:
            self._sink(block.samples, block.capture_time, block.missed)

    def __enter__(self) -> OverflowingSource:
        self._producer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._producer.join()

    def check_alive(self) -> None:
        pass

    def stop(self) -> None:
        self.handoff.close()


def test_the_capture_owns_the_count_of_audio_lost_before_the_dsp() -> None:
    silence = np.zeros((1600, 1), dtype=np.float32)
    blocks = [Block(silence, 0.0), Block(silence, 0.1 + 0.05, missed=800), Block(silence, 0.25)]
    capture = Capture(lambda pin, sink: OverflowingSource(list(blocks), sink), retry_cap_s=1.0)
    with capture_running(capture, 30.0):
        poll(lambda: capture.blocks >= 3, "three blocks captured")
        figures = capture_figures(capture)
    assert (figures.blocks, figures.samples, figures.lost_samples) == (3, 3 * 1600, 800)
    assert Telemetry(capture=figures).agent_stats().frames_dropped == 800 // 320


def test_a_privacy_pause_shows_in_status_and_metrics() -> None:
    import dataclasses

    base = recording()
    assert base.visit is not None
    paused = dataclasses.replace(base, visit=dataclasses.replace(base.visit, paused=True, paused_seconds=4.5),
                                 ended=EndedTotals(paused_seconds=10.0, visits_declined=2))  # fmt: skip
    status, stats = paused.status(), paused.agent_stats()
    assert (status.state, status.paused_seconds) == ("paused", 4.5)
    assert (stats.visit_paused, stats.paused_seconds, stats.visits_declined) == (True, 14.5, 2)
    assert stats.visit_active  # a paused visit is still a visit (the fleet's microphone alerts look at both)
    from agent.event_hub import facts_of
    from agent.events import derive_state

    calm = Telemetry(state=DaemonState.RECORDING, visit=VisitFigures(
        appointment_id="a1", session_id="s-1", samples=SAMPLE_RATE, gated_samples=0, lost_samples=0,
        archive=ArchiveHealth(), stream=STREAM, paused=True))  # fmt: skip
    assert derive_state(facts_of(calm.status(), visit_failed=False, uploads_unreachable=False)) == (
        "paused", "privacy pause")  # what the event stream and the LED hook show
    stopping = dataclasses.replace(paused, state=DaemonState.STOPPING)
    assert stopping.status().state == "stopping" and not stopping.agent_stats().visit_paused
    idle = dataclasses.replace(paused, state=DaemonState.IDLE, visit=None)
    assert (idle.status().state, idle.agent_stats().paused_seconds, idle.agent_stats().visit_paused) == (
        "idle", 10.0, False)
