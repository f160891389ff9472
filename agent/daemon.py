"""The long-running service: continuous capture, one visit at a time through the control socket, uploads.

:class:`Daemon` wires the parts (each documented in its own module):

- :class:`~agent.device_watch.Capture` keeps the configured source open for the daemon's lifetime and reopens a
  lost device; ``READY=1`` goes out when it delivers its first block, ``WATCHDOG=1`` only while its block counter
  keeps advancing (:class:`~agent.sdnotify.WatchdogPolicy`), so a stalled or unplugged microphone gets the
  service restarted by systemd.
- The control socket (:mod:`agent.control`) starts and stops a :class:`~agent.visit.Visit` that reads a
  :class:`~agent.device_watch.CaptureTap`; device gaps in a visit are fed to its stream as ``gap`` announcements.
- :func:`agent.archive.upload_runner.run` drains the upload queue between visits, woken when a visit is queued
  (or another process queues an item); :func:`~agent.archive.recovery.recover` queues visits a crash cut short,
  at start, and finds recordings that need an appointment.
- Background tasks (upload worker, tick, queue count) run under :func:`agent.supervise.supervise`: one that dies
  is logged and restarted with backoff; ``status`` and the metrics show the upload worker's health.
- A stopped visit's live stream keeps replaying its backlog in the background (``Visit.finish_stream``, bounded
  by ``stream.drain_max_s``) while the next visit starts at once; ``status`` lists streams still draining.
- SIGTERM/SIGINT: stop the visit (archive finished, upload queued), give draining streams what is left of
  ``stop_timeout_s``, then end them (one log line says how much audio only the upload holds) and exit.
  SIGHUP: reload the configuration now when idle, after the visit otherwise.

Logs carry no appointment ids, patient data or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent import SAMPLE_RATE
from agent.account import prepare_visit, token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import load_credentials
from agent.archive import upload_runner
from agent.archive.keys import load_archive_keys
from agent.archive.recovery import find_orphans, quarantined, recover
from agent.archive.resilient import ArchiveHealth
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.audio.pipeline import PipelineOutput
from agent.control import (
    MAX_LINE_BYTES,
    DaemonStatus,
    GetStatus,
    ProtocolViolation,
    Request,
    Response,
    StartVisit,
    StopVisit,
    failure,
    ok,
    parse_request,
)
from agent.control_socket import bind_control_socket, serve_connection
from agent.device_watch import Capture, source_opener
from agent.errors import AgentError
from agent.metrics import AgentStats, Metrics, MetricsServer, serve_metrics
from agent.sdnotify import Notifier, WatchdogPolicy
from agent.settings import AgentSettings, AudioSettings
from agent.supervise import WorkerHealth, supervise
from agent.visit import Visit, VisitSummary, refuse_second_recording

log = logging.getLogger(__name__)

TICK_S = 0.25
"""Seconds between looks at the capture counter (watchdog, READY, STATUS, metrics)."""
QUEUE_POLL_S = 2.0
"""Seconds between counts of the upload queue (a directory listing)."""
STOP_MARGIN_S = 2.5
"""Seconds of ``stop_timeout_s`` kept for closing the device, the client and the sockets after the streams end."""
FIRST_OPEN_WAIT_S = 10.0
"""Seconds the start waits for the first open of the source before going on (it keeps retrying)."""


class Daemon:
    def __init__(self, settings: AgentSettings, *, reload: Callable[[], AgentSettings],
                 notifier: Notifier, watchdog_s: float | None) -> None:  # fmt: skip
        self.settings = settings
        self._reload = reload
        self._notifier = notifier
        self._watchdog = None if watchdog_s is None else WatchdogPolicy(watchdog_s, time.monotonic())
        self._capture: Capture | None = None
        self._client: MediSyncClient | None = None
        self._queue = UploadQueue(settings.upload)
        self._upload_wake = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._visit: Visit | None = None
        self._visit_task: asyncio.Task[VisitSummary | None] | None = None
        self._draining: dict[asyncio.Task[None], Visit] = {}
        """Streams of ended visits still replaying their backlog, by the task that waits for them."""
        self._state = "idle"
        self._gap_samples = 0
        self._reload_pending = False
        self._queue_length = 0
        self._needs_appointment = 0
        self._quarantined = 0
        self._known_items: set[str] = set()
        self._workers = {name: WorkerHealth(name) for name in ("tick", "upload_worker", "queue_count")}
        self._visit_error = ""
        self._ready = False
        self._stalled_logged = False
        self._status_text = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        self._uploads_done = 0
        self._upload_failures = 0
        self._ended_visits_reconnects = 0
        self._ended_visits_bytes_sent = 0
        self._ended_visits_archive_lost = 0

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        credentials = load_credentials(self.settings.api)  # a missing credential is a config error: exit 78
        self._queue.keys = load_archive_keys(self.settings.archive, identity=True)  # the device key too
        sock = bind_control_socket(Path(self.settings.daemon.control_socket))
        server: asyncio.Server | None = None
        try:
            recovery = await asyncio.to_thread(recover, Path(self.settings.archive.directory), self._queue)
            for item in recovery.queued:
                log.warning("queued the upload of an interrupted earlier visit (%s)", item.item_id[:8])
            if recovery.orphans or recovery.quarantined:
                log.warning("%d recording(s) need an appointment, %d file(s) quarantined: see 'medisync-agent "
                            "uploads list'", len(recovery.orphans), len(recovery.quarantined))  # fmt: skip
            self._client = MediSyncClient(self.settings.api, credentials,
                                          max_upload_bytes=self.settings.upload.max_bytes)  # fmt: skip
            self._capture = await self._start_capture(self.settings.audio)
            self._start_metrics()
            server = await asyncio.start_unix_server(self._serve_client, sock=sock, limit=MAX_LINE_BYTES)
            log.info("control socket ready at %s", self.settings.daemon.control_socket)
            for sig, handler in ((signal.SIGTERM, self._shutdown.set), (signal.SIGINT, self._shutdown.set),
                                 (signal.SIGHUP, self._on_sighup)):  # fmt: skip
                loop.add_signal_handler(sig, handler)
            self._tasks = [self._supervised("tick", self._tick), self._supervised("upload_worker", self._uploads),
                           self._supervised("queue_count", self._count_queue)]  # fmt: skip
            await self._shutdown.wait()
            await self._stop(server)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if server is not None:
                server.close()
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.daemon.control_socket)
            await self._close_parts()
        return 0

    def _supervised(self, name: str, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(supervise(work, self._workers[name]), name=name)

    async def _start_capture(self, audio: AudioSettings) -> Capture:
        capture = Capture(source_opener(audio), retry_cap_s=self.settings.daemon.device_retry_cap_s)
        try:
            await capture.start(FIRST_OPEN_WAIT_S)
        except AgentError as exc:
            # Keep running and retrying: the watchdog gets no pings, so systemd restarts us if it stays away.
            log.error("cannot open the audio source (%s); retrying", exc)
        return capture

    def _start_metrics(self) -> None:
        address = self.settings.daemon.metrics_address
        if address and self._metrics_server is None:
            self._metrics = Metrics()
            self._metrics_server = serve_metrics(self._metrics, address)
            log.info("metrics on http://%s:%d/metrics", self._metrics_server.host, self._metrics_server.port)

    async def _stop(self, server: asyncio.Server) -> None:
        started = time.monotonic()
        budget = self.settings.daemon.stop_timeout_s
        in_visit = self._state != "idle"
        self._notifier.stopping("stopping: finishing the visit" if in_visit else "stopping")
        server.close()
        task, visit = self._visit_task, self._visit
        if in_visit and task is not None and visit is not None:
            log.info("stopping: ending the visit, finishing its archive and queueing its upload")
            visit.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.5, budget - 2.0))
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                log.error("the visit did not end in time; its recording is queued at the next start")
        await self._end_draining(budget - (time.monotonic() - started) - STOP_MARGIN_S)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("stopped in %.1f s", time.monotonic() - started)

    async def _close_parts(self) -> None:
        if self._capture is not None:
            await self._capture.stop()
        if self._client is not None:
            await self._client.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._notifier.close()

    # --- control socket ---------------------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, self._answer)

    async def _answer(self, line: bytes) -> Response:
        try:
            request = parse_request(line)
        except ProtocolViolation as exc:
            return failure(str(exc))
        return await self.handle(request)

    async def handle(self, request: Request) -> Response:
        if isinstance(request, StartVisit):
            return await self._start_visit(request.appointment_id)
        if isinstance(request, StopVisit):
            return await self._stop_visit()
        assert isinstance(request, GetStatus)
        return ok(self.status())

    async def _start_visit(self, appointment_id: str) -> Response:
        if self._shutdown.is_set():
            return failure("the daemon is shutting down")
        if self._state != "idle":
            return failure(f"a visit is already {self._state}; stop it first (medisync-agent visit stop)")
        capture, client = self._capture, self._client
        assert capture is not None and client is not None
        self._state = "starting"
        try:
            await asyncio.to_thread(refuse_second_recording, self._queue, appointment_id)
            access = await prepare_visit(client, appointment_id)
            tap = capture.tap(self.settings.audio.handoff_seconds)
        except AgentError as exc:
            self._state = "idle"
            log.warning("visit not started: %s", type(exc).__name__)
            return failure(str(exc))
        except BaseException:
            self._state = "idle"
            raise
        self._gap_samples = 0
        self._visit_error = ""
        visit = Visit(self.settings, appointment_id=appointment_id, source=tap, queue=self._queue,
                      token=token_provider(client) if access.stream_allowed else None,
                      on_output=self._on_visit_output)  # fmt: skip
        self._visit = visit
        self._visit_task = asyncio.create_task(self._run_visit(visit), name="visit")
        self._state = "recording"
        log.info("visit started (%s)", "streaming" if visit.stream is not None else "recording only, no stream")
        return ok(self.status(), "recording" + ("" if access.online else " (MediSync did not confirm it: see the log)"))

    def _on_visit_output(self, out: PipelineOutput) -> None:
        """Count device gaps for ``status`` (the visit archives them as silence and announces them itself)."""
        if out.gaps:
            self._gap_samples += sum(g.end - g.start for g in out.gaps)

    async def _run_visit(self, visit: Visit) -> VisitSummary | None:
        try:
            summary = await visit.run(finish_stream=False)
        except BaseException as exc:
            self._count_ended_stream(visit)  # the visit closed its stream
            if not isinstance(exc, AgentError):
                raise
            log.error("visit failed: %s", exc)
            self._visit_error = str(exc)
            return None
        finally:
            self._ended_visits_archive_lost += visit.archive_health.missing_samples
            self._state = "idle"
            self._upload_wake.set()
        if visit.stream is not None:
            self._drain_in_background(visit)
        if self._gap_samples:
            log.warning("the visit lost %.1f s of audio to the device (archived as silence)",
                        self._gap_samples / SAMPLE_RATE)  # fmt: skip
        if self._reload_pending:
            await self._apply_reload()
        return summary

    def _drain_in_background(self, visit: Visit) -> None:
        """The ended visit's stream confirms its backlog while the daemon is free for the next visit."""
        task = asyncio.create_task(self._drain_stream(visit), name="stream-drain")
        self._draining[task] = visit
        task.add_done_callback(lambda t: self._draining.pop(t, None))

    async def _drain_stream(self, visit: Visit) -> None:
        try:
            confirmed = await visit.finish_stream()
        finally:
            self._count_ended_stream(visit)
        log.info("live stream of the ended visit %s", "confirmed by the server" if confirmed
                 else "not confirmed completely (the queued upload holds the whole visit)")  # fmt: skip

    async def _end_draining(self, wait_s: float) -> None:
        """At shutdown: let the draining streams finish within ``wait_s`` seconds, then end the rest."""
        tasks = list(self._draining)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, wait_s))
        if not pending:
            return
        left_s = sum(self._unconfirmed_s(self._draining[t]) for t in pending if t in self._draining)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        log.warning("stopping: ended %d live stream(s) with %.1f s of audio the speech server had not confirmed; "
                    "the queued uploads hold it", len(pending), left_s)  # fmt: skip

    def _count_ended_stream(self, visit: Visit) -> None:
        if visit.stream is not None:  # metrics counters run across visits
            self._ended_visits_reconnects += visit.stream.stats.reconnects
            self._ended_visits_bytes_sent += visit.stream.stats.bytes_sent

    @staticmethod
    def _unconfirmed_s(visit: Visit) -> float:
        return visit.stream.stats.held_samples / SAMPLE_RATE if visit.stream is not None else 0.0

    async def _stop_visit(self) -> Response:
        task = self._visit_task
        if self._state not in ("recording", "stopping") or task is None or self._visit is None:
            return failure("no visit is running")
        self._state = "stopping"
        self._visit.stop()
        summary = await asyncio.shield(task)
        if summary is None:
            return failure(self._visit_error or "the visit ended with an error; see the daemon's log")
        message = f"visit ended: {summary.seconds_captured:.1f} s recorded, upload queued"
        message += "".join(f"; missing from the recording: {m.describe()}" for m in summary.archive_missing)
        if any(v is self._visit for v in self._draining.values()):
            message += f"; live stream still confirming {self._unconfirmed_s(self._visit):.1f} s of audio"
        return ok(self.status(), message)

    # --- status, watchdog, metrics ----------------------------------------------------------------------------

    def status(self) -> DaemonStatus:
        capture, visit = self._capture, self._visit
        active = visit is not None and self._state != "idle"
        stream = visit.stream.stats if active and visit is not None and visit.stream is not None else None
        captured = visit.samples_captured if active and visit is not None else 0
        archive = visit.archive_health if active and visit is not None else ArchiveHealth()
        return DaemonStatus(
            state=self._state,
            device=capture.description if capture else "",
            device_state=capture.state if capture else "opening",
            input_level_dbfs=capture.level_dbfs if capture else None,
            vad_share=(visit.gated_samples / captured) if active and visit is not None and captured else None,
            connection=stream.state.value if stream else "-",
            stream_mode=(stream.mode or "") if stream else "",
            ring_fill_s=stream.held_samples / SAMPLE_RATE if stream else 0.0,
            reconnects=stream.reconnects if stream else 0,
            upload_queue=self._queue_length,
            visit_seconds=captured / SAMPLE_RATE,
            gap_seconds=self._gap_samples / SAMPLE_RATE if active else 0.0,
            archive_writable=archive.writable,
            archive_missing_s=archive.missing_samples / SAMPLE_RATE,
            archive_problem=archive.reason,
            blocks_captured=capture.blocks if capture else 0,
            appointment_id=visit.appointment_id if active and visit is not None else "",
            session_id=visit.session_id if active and visit is not None else "",
            pending_reload=self._reload_pending,
            upload_worker=self._workers["upload_worker"].describe(),
            worker_restarts=sum(w.restarts for w in self._workers.values()),
            needs_appointment=self._needs_appointment,
            quarantined=self._quarantined,
            draining_streams=len(self._draining),
            draining_seconds=sum(self._unconfirmed_s(v) for v in self._draining.values()),
        )

    async def _tick(self) -> None:
        while True:
            self._observe_capture(time.monotonic())
            await asyncio.sleep(TICK_S)

    def _observe_capture(self, now: float) -> None:
        capture = self._capture
        if capture is None:
            return
        if not self._ready and capture.blocks > 0:
            self._ready = True
            self._notifier.ready(f"ready: capturing from {capture.description}")
            log.info("ready: %s delivers audio", capture.description)
        if self._ready and self._watchdog is not None:
            if self._watchdog.observe(now, capture.blocks, expect_frames=True):
                self._notifier.watchdog()
                self._stalled_logged = False
            elif self._watchdog.stalled_for(now) > self._watchdog.interval_s and not self._stalled_logged:
                self._stalled_logged = True
                log.error("no audio from %s for %.1f s: watchdog pings stopped, systemd will restart the service "
                          "(check the microphone connection)", capture.description, self._watchdog.stalled_for(now))
        self._update_status_text()
        if self._metrics is not None:
            self._metrics.update(self._agent_stats())

    def _update_status_text(self) -> None:
        s = self.status()
        text = f"{s.state}; device {s.device_state}; uploads waiting {s.upload_queue}"
        if s.state != "idle":
            text += f"; stream {s.connection}"
        if not s.archive_writable:
            text += f"; archive stopped ({s.archive_problem})"
        if text != self._status_text:
            self._status_text = text
            self._notifier.status(text)

    def _agent_stats(self) -> AgentStats:
        s = self.status()
        capture = self._capture
        frame_samples = SAMPLE_RATE * self.settings.audio.frame_ms // 1000
        rate = capture.sample_rate if capture and capture.sample_rate else SAMPLE_RATE
        visit = self._visit
        stream = visit.stream.stats if visit is not None and visit.stream is not None and s.state != "idle" else None
        draining = [v.stream.stats for v in self._draining.values() if v.stream is not None]
        return AgentStats(
            frames_captured=round((capture.samples if capture else 0) * SAMPLE_RATE / rate) // frame_samples,
            frames_dropped=round((capture.lost_samples if capture else 0) * SAMPLE_RATE / rate) // frame_samples,
            vad_speech_ratio=s.vad_share or 0.0,
            ring_fill_seconds=s.ring_fill_s,
            reconnects=self._ended_visits_reconnects + sum(d.reconnects for d in draining)
            + (stream.reconnects if stream else 0),
            ack_lag_seconds=stream.ack_lag_s if stream else 0.0,
            bytes_sent=self._ended_visits_bytes_sent + sum(d.bytes_sent for d in draining)
            + (stream.bytes_sent if stream else 0),
            stream_connected=s.connection == "streaming",
            visit_active=s.state != "idle",
            upload_queue_length=s.upload_queue,
            uploads_completed=self._uploads_done,
            upload_failures=self._upload_failures,
            archive_writable=s.archive_writable,
            archive_samples_lost=self._ended_visits_archive_lost
            + (round(s.archive_missing_s * SAMPLE_RATE) if s.state != "idle" else 0),
            upload_worker_up=self._workers["upload_worker"].running,
            worker_restarts=s.worker_restarts,
            uploads_unassigned=s.needs_appointment,
            uploads_quarantined=s.quarantined,
        )

    # --- uploads ----------------------------------------------------------------------------------------------

    async def _uploads(self) -> None:
        """The upload worker (supervised: if it dies, it is logged and started again with backoff)."""
        client = self._client
        assert client is not None
        await upload_runner.run(self._queue, client, wake=self._upload_wake, on_report=self._count_report)

    def _count_report(self, report: upload_runner.DrainReport) -> None:
        self._uploads_done += len(report.uploaded)
        self._upload_failures += len(report.failed) + len(report.blocked) + len(report.dead)

    async def _count_queue(self) -> None:
        while True:
            if await asyncio.to_thread(self._look_at_queue):
                self._upload_wake.set()  # another process queued an item (uploads add/assign): upload it now
            await asyncio.sleep(QUEUE_POLL_S)

    def _look_at_queue(self) -> bool:
        """Counts for ``status`` (in a worker thread); True when a pending item appeared since the last look."""
        archive_dir, queue = Path(self.settings.archive.directory), self._queue
        pending = {i.item_id for i in queue.items() if i.state is ItemState.PENDING}
        new = bool(pending - self._known_items)
        self._queue_length, self._known_items = len(pending), pending
        self._needs_appointment = len(find_orphans(archive_dir, queue))
        self._quarantined = len(quarantined(archive_dir, queue))
        return new

    # --- configuration reload ---------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._reload_pending = True
        if self._state == "idle":
            asyncio.get_running_loop().create_task(self._apply_reload())
        else:
            log.info("SIGHUP: the configuration will be reloaded when the current visit ends")

    async def _apply_reload(self) -> None:
        self._reload_pending = False
        try:
            new = await asyncio.to_thread(self._reload)
        except AgentError as exc:
            log.error("configuration reload failed, keeping the current configuration: %s", exc)
            return
        old, self.settings = self.settings, new
        changed = [name for name in AgentSettings.__struct_fields__ if getattr(old, name) != getattr(new, name)]
        if old.audio != new.audio and self._capture is not None:
            await self._capture.stop()
            self._capture = await self._start_capture(new.audio)
        if old.api != new.api or old.upload != new.upload:
            await self._restart_uploads(new)
        if old.daemon.control_socket != new.daemon.control_socket or (
                old.daemon.metrics_address != new.daemon.metrics_address):  # fmt: skip
            log.warning("daemon.control_socket and daemon.metrics_address take effect after a restart")
        log.info("configuration reloaded (%s)", ", ".join(changed) + " changed" if changed else "no changes")

    async def _restart_uploads(self, settings: AgentSettings) -> None:
        try:
            credentials = load_credentials(settings.api)
        except AgentError as exc:
            log.error("cannot use the new MediSync settings, uploads keep the old ones: %s", exc)
            return
        for t in self._tasks[1:2]:
            t.cancel()
        await asyncio.gather(*self._tasks[1:2], return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        self._client = MediSyncClient(settings.api, credentials, max_upload_bytes=settings.upload.max_bytes)
        self._queue = UploadQueue(settings.upload)
        self._tasks[1] = self._supervised("upload_worker", self._uploads)
