"""The long-running service: continuous capture, one visit at a time through the control socket, uploads.

:class:`Daemon` wires the parts (each documented in its own module):

- :class:`~agent.device_watch.Capture` keeps the configured source open for the daemon's lifetime and reopens a
  lost device; :class:`~agent.heartbeat.Heartbeat` sends ``READY=1`` at its first block and ``WATCHDOG=1`` only
  while its block counter advances, so a stalled or unplugged microphone gets the service restarted by systemd.
- The control socket (:mod:`agent.control`) starts and stops a :class:`~agent.visit.Visit` that reads a
  :class:`~agent.device_watch.CaptureTap`; device gaps in a visit are fed to its stream as ``gap`` announcements.
- :class:`~agent.daemon_uploads.Uploads` drains the upload queue between visits, woken when a visit is queued
  (or another process queues an item); :func:`~agent.archive.recovery.recover` queues visits a crash cut short,
  at start, and finds recordings that need an appointment.
- Background tasks (``tick``, ``upload_worker``, ``queue_count``: counts when the tick asks) are held by name in
  :class:`agent.supervise.SupervisedTasks`: one that dies is logged and restarted with backoff.
- The visit slot is a :class:`~agent.daemon_state.VisitSlot` (idle, starting, recording, stopping), moved only
  along its transition table.
- A stopped visit's live stream keeps replaying its backlog in the background
  (:class:`~agent.draining.DrainingStreams`) while the next visit starts at once; ``status`` lists them.
- ``status``, the metrics and the systemd STATUS line read one :class:`~agent.telemetry.Telemetry` snapshot.
- SIGTERM/SIGINT: stop the visit (archive finished, upload queued), give draining streams what is left of
  ``stop_timeout_s``, then end them (one log line says how much audio only the upload holds) and exit.
  SIGHUP: reload the configuration now when idle, after the visit otherwise.
- The device state for ``status --follow`` and the state hook: :class:`~agent.device_state.StateView`.

Logs carry no appointment ids, patient data or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import SAMPLE_RATE
from agent.account import prepare_visit, token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import load_credentials
from agent.archive.keys import load_archive_keys
from agent.archive.upload_queue import UploadQueue
from agent.audio.mic_monitor import MicHealth
from agent.audio.pipeline import PipelineOutput
from agent.audio.sources import source_opener
from agent.audio.types import Block
from agent.control import (
    MAX_LINE_BYTES,
    DaemonStatus,
    Follow,
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
from agent.control_socket import Streamer, bind_control_socket, serve_connection
from agent.daemon_privacy import Privacy
from agent.daemon_state import DaemonState, VisitSlot
from agent.daemon_uploads import COUNTER, WORKER, Uploads
from agent.device_state import HOOK, StateView
from agent.device_watch import Capture, CaptureTap
from agent.draining import DrainingStreams, EndedTotals, unconfirmed_s
from agent.errors import AgentError
from agent.event_hub import facts_of
from agent.events import Facts
from agent.figures import StreamFigures, VisitSummary
from agent.heartbeat import Heartbeat
from agent.metrics import Metrics, MetricsServer, serve_metrics
from agent.sdnotify import Notifier, WatchdogPolicy
from agent.settings import AgentSettings, AudioSettings
from agent.supervise import SupervisedTasks
from agent.telemetry import Telemetry, capture_figures, visit_figures, worker_figures
from agent.visit import Visit, refuse_second_recording

log = logging.getLogger(__name__)

TICK = "tick"  # the background task that looks at the capture counter (Heartbeat.sleep)
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
        watchdog = None if watchdog_s is None else WatchdogPolicy(watchdog_s, time.monotonic())
        self._heartbeat = Heartbeat(notifier, watchdog)
        self._capture: Capture | None = None
        self._uploads = Uploads(UploadQueue(settings.upload), Path(settings.archive.directory))
        self.mic_health = MicHealth(settings.mic)
        """The microphone's problems, idle and in visits: ``problems()``, ``add_listener(fn)`` (mic_monitor)."""
        self._shutdown = asyncio.Event()
        self._shown = StateView(self._facts, lambda: self.settings.device)
        self._slot = VisitSlot(on_change=self._shown.refresh)
        self._visit: Visit | None = None
        self._tap: CaptureTap | None = None
        self._visit_task: asyncio.Task[VisitSummary | None] | None = None
        self._ended = EndedTotals()
        self._draining = DrainingStreams(self._ended)
        self._privacy = Privacy(settings, self._ended, self.status, self.mic_health.watch_speech, self._uploads.queue)
        self._reload_pending = False
        self._tasks = SupervisedTasks((TICK, WORKER, COUNTER, HOOK))
        self._visit_error = ""
        self._metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None

    @property
    def state(self) -> DaemonState:
        return self._slot.state

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        credentials = load_credentials(self.settings.api)  # a missing credential is a config error: exit 78
        self._uploads.queue.keys = load_archive_keys(self.settings.archive, identity=True)  # the device key too
        sock = bind_control_socket(Path(self.settings.daemon.control_socket))
        server: asyncio.Server | None = None
        try:
            await self._uploads.recover()
            self._uploads.client = MediSyncClient(self.settings.api, credentials,
                                                  max_upload_bytes=self.settings.upload.max_bytes)  # fmt: skip
            self.mic_health.reset()  # "no data" counts from the device's opening, not from the recovery before it
            self.mic_health.add_listener(lambda _: loop.call_soon_threadsafe(self._shown.refresh))  # shown at once
            self._capture = await self._start_capture(self.settings.audio)
            self._start_metrics()
            server = await asyncio.start_unix_server(self._serve_client, sock=sock, limit=MAX_LINE_BYTES)
            log.info("control socket ready at %s", self.settings.daemon.control_socket)
            for sig, handler in ((signal.SIGTERM, self._shutdown.set), (signal.SIGINT, self._shutdown.set),
                                 (signal.SIGHUP, self._on_sighup)):  # fmt: skip
                loop.add_signal_handler(sig, handler)
            self._tasks.start(TICK, self._tick)
            self._tasks.start(WORKER, self._uploads.work)
            self._tasks.start(COUNTER, self._uploads.count)
            self._tasks.start(HOOK, self._shown.hook.run)
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

    async def _start_capture(self, audio: AudioSettings) -> Capture:
        capture = Capture(source_opener(audio), retry_cap_s=self.settings.daemon.device_retry_cap_s, driven=True)
        capture.on_blocks = self._feed_mic
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
        started, budget = time.monotonic(), self.settings.daemon.stop_timeout_s
        in_visit = self.state.in_visit
        self._notifier.stopping("stopping: finishing the visit" if in_visit else "stopping")
        server.close()
        task, visit = self._visit_task, self._visit
        if in_visit and task is not None and visit is not None:
            log.info("stopping: ending the visit, finishing its archive and queueing its upload")
            visit.stop()
            try:
                async with asyncio.timeout(max(0.5, budget - 2.0)):  # not wait_for: it can lose a cancel on 3.11
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                log.error("the visit did not end in time; its recording is queued at the next start")
        await self._draining.end(budget - (time.monotonic() - started) - STOP_MARGIN_S)
        await self._shown.close(budget - (time.monotonic() - started))
        await self._tasks.stop()
        log.info("stopped in %.1f s", time.monotonic() - started)

    async def _close_parts(self) -> None:
        if self._capture is not None:
            await self._capture.stop()
        await self._uploads.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._notifier.close()

    # --- control socket ---------------------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, self._answer)

    async def _answer(self, line: bytes) -> Response | Streamer:
        try:
            request = parse_request(line)
        except ProtocolViolation as exc:
            return failure(str(exc))
        if isinstance(request, Follow):
            return self._shown.hub.follow  # the connection becomes the event stream
        return await self.handle(request)

    async def handle(self, request: Request) -> Response:
        if isinstance(request, StartVisit):
            return await self._start_visit(request.appointment_id, request.consent)
        if self._privacy.handles(request):  # visit_pause, visit_resume
            return await self._privacy.pause(request, self._visit if self.state is DaemonState.RECORDING else None)
        if isinstance(request, StopVisit):
            return await self._stop_visit()
        assert isinstance(request, GetStatus)
        return ok(self.status())

    async def _start_visit(self, appointment_id: str, answer: str | None) -> Response:
        if self._shutdown.is_set():
            return failure("the daemon is shutting down")
        if self.state.in_visit:
            return failure(f"a visit is already {self.state.value}; stop it first (medisync-agent visit stop)")
        if isinstance(consent := await self._privacy.consent(appointment_id, answer), Response):
            return consent  # declined (nothing recorded) or refused
        capture, client, queue = self._capture, self._uploads.client, self._uploads.queue
        assert capture is not None and client is not None
        self._slot.move(DaemonState.STARTING)
        try:
            await asyncio.to_thread(refuse_second_recording, queue, appointment_id)
            access = await prepare_visit(client, appointment_id)
            tap = capture.tap(self.settings.audio.handoff_seconds)
        except BaseException as exc:
            self._slot.end()
            if not isinstance(exc, AgentError):
                raise
            log.warning("visit not started: %s", type(exc).__name__)
            return failure(str(exc))
        self._visit_error = ""
        visit = Visit(self.settings, appointment_id=appointment_id, source=tap, queue=queue,
                      token=token_provider(client) if access.stream_allowed else None,
                      on_output=self._on_visit_output, consent=consent, audit=self._privacy.audit)  # fmt: skip
        self._visit, self._tap = visit, tap
        self._visit_task = asyncio.create_task(self._run_visit(visit, tap), name="visit")
        self.mic_health.watch_speech(True)
        self._slot.move(DaemonState.RECORDING)
        log.info("visit started (%s)", "streaming" if visit.stream is not None else "recording only, no stream")
        return ok(self.status(), "recording" + ("" if access.online else " (MediSync did not confirm it: see the log)"))

    def _feed_mic(self, blocks: Sequence[Block], rate: int) -> None:  # the capture's look (loop), idle or in a visit
        self.mic_health.feed_blocks(blocks, rate)
        if not self._heartbeat.ready:  # READY at the first block (the capture looks at once), not at the next tick
            self._observe_capture(time.monotonic())

    def _on_visit_output(self, out: PipelineOutput) -> None:  # the voice gate's decisions: the "no speech" rule
        self.mic_health.feed_output(out, level=False)
        self._heartbeat.nudge()  # the tick rides a block's wake-up during a visit (no timer wake-up of its own)

    async def _run_visit(self, visit: Visit, tap: CaptureTap) -> VisitSummary | None:
        try:
            summary = await visit.run(finish_stream=False)
        except BaseException as exc:
            self._ended.add_stream(visit)  # the visit closed its stream
            if not isinstance(exc, AgentError):
                raise
            log.error("visit failed: %s", exc)
            self._visit_error = str(exc)
            return None
        finally:
            self.mic_health.watch_speech(False)
            self._ended.add_archive(visit)
            self._ended.handoff_samples_dropped += tap.handoff.stats.samples_dropped
            self._tap = None
            self._uploads.wake()  # first: the slot's move shows "uploading", not a moment of "idle"
            self._slot.end()
        if visit.stream is not None:
            self._draining.add(visit)
        if visit.lost_samples:
            log.warning("the visit lost %.1f s of audio to the device (archived as silence)",
                        visit.lost_samples / SAMPLE_RATE)  # fmt: skip
        if self._reload_pending:
            await self._apply_reload()
        return summary

    async def _stop_visit(self) -> Response:
        task, visit = self._visit_task, self._visit
        if self.state not in (DaemonState.RECORDING, DaemonState.STOPPING) or task is None or visit is None:
            return failure("no visit is running")
        if self.state is DaemonState.RECORDING:
            self._slot.move(DaemonState.STOPPING)
        visit.stop()
        summary = await asyncio.shield(task)
        if summary is None:
            return failure(self._visit_error or "the visit ended with an error; see the daemon's log")
        ended = summary.figures  # the snapshot status showed while it ran, taken once more at its end
        message = f"visit ended: {summary.seconds_captured:.1f} s recorded, upload queued"
        if ended.lost_samples:
            message += f"; {ended.lost_samples / SAMPLE_RATE:.1f} s lost to device gaps (silence in the recording)"
        message += "".join(f"; missing from the recording: {m.describe()}" for m in summary.archive_missing)
        if self._draining.holds(visit):
            message += f"; live stream still confirming {unconfirmed_s(visit):.1f} s of audio"
        return ok(dataclasses.replace(self.telemetry(), visit=ended).status(), message)

    # --- status, watchdog, metrics ----------------------------------------------------------------------------

    def telemetry(self) -> Telemetry:
        """The one snapshot ``status``, the metrics and the systemd STATUS line read (see :mod:`agent.telemetry`)."""
        return Telemetry(
            state=self.state,
            capture=capture_figures(self._capture, self._tap),
            visit=visit_figures(self._visit) if self.state.in_visit and self._visit is not None else None,
            draining=tuple(StreamFigures.of(v.stream.stats) for v in self._draining.visits if v.stream is not None),
            ended=dataclasses.replace(self._ended),
            queue=self._uploads.counts,
            uploads=dataclasses.replace(self._uploads.totals),
            workers=worker_figures(self._tasks.health),
            pending_reload=self._reload_pending, frame_ms=self.settings.audio.frame_ms,
            mic_problems=self.mic_health.problems(),
            mic_level_dbfs=self.mic_health.level_dbfs(),
        )

    def status(self) -> DaemonStatus:
        return self.telemetry().status()

    def _facts(self, status: DaemonStatus | None = None) -> Facts:
        return facts_of(status or self.status(), visit_failed=bool(self._visit_error), upload_due=self._uploads.due,
                        uploads_unreachable=self._uploads.unreachable)  # fmt: skip

    async def _tick(self) -> None:
        while True:
            self._observe_capture(now := time.monotonic())
            self._uploads.tick(now, recording=self.state.in_visit)  # the queue count's timer too (issue 11)
            await self._heartbeat.sleep(self.settings.mic.no_data_s)

    def _observe_capture(self, now: float) -> None:  # one snapshot a look, for the event stream and the heartbeat
        if self._capture is not None:
            self._capture.check()  # the blocks up to now before "no data" is judged; the device (driven: no timer)
        self.mic_health.tick()
        capture, telemetry = self._capture, self.telemetry()
        self._shown.refresh(self._facts(status := telemetry.status()))
        if capture is None:
            return
        self._heartbeat.observe(now, capture.blocks, capture.description, status)
        if self._metrics is not None:
            self._metrics.update(telemetry.agent_stats())

    # --- configuration reload ---------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._reload_pending = True
        if not self.state.in_visit:
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
        if old.api != new.api or old.upload != new.upload or old.archive.directory != new.archive.directory:
            await self._restart_uploads(new)
        if old.daemon.control_socket != new.daemon.control_socket or (
                old.daemon.metrics_address != new.daemon.metrics_address):  # fmt: skip
            log.warning("daemon.control_socket and daemon.metrics_address take effect after a restart")
        if old.mic != new.mic:
            self.mic_health.reset(new.mic)
        self._privacy.reload(new, self._uploads.queue)
        log.info("configuration reloaded (%s)", ", ".join(changed) + " changed" if changed else "no changes")

    async def _restart_uploads(self, settings: AgentSettings) -> None:
        try:
            replacement = await self._uploads.replaced(settings)
        except AgentError as exc:
            log.error("cannot use the new MediSync settings, uploads keep the old ones: %s", exc)
            return
        await self._tasks.stop(WORKER, COUNTER)
        await self._uploads.aclose()
        self._uploads = replacement
        self._tasks.start(WORKER, self._uploads.work)
        self._tasks.start(COUNTER, self._uploads.count)
