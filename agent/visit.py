"""One visit: source -> DSP -> VAD -> archive and live stream concurrently; at the end, the upload is queued.

The audio path (capture, DSP, gate, WAV archive) runs in :class:`~agent.recorder.Recorder` on the event loop, woken
by the source's hand-off for every source (see ``Recorder.run_on_loop``), and never waits on the network: each
pipeline output is handed to :meth:`SpeechStream.feed`, which only appends to an inbox. When the visit stops
(``stop()``, the source ends, or ``duration_s``), the WAV is finished and put on the on-disk upload queue first;
then the stream is ended, with a wait bounded by what its unconfirmed backlog needs (``run``), or in the background
(the daemon, which starts the next visit at once: :meth:`Visit.run` with ``finish_stream=False``, then
:meth:`Visit.finish_stream`).

A full disk (or a failing card) does not end the visit: the archive stops (see :mod:`agent.archive.resilient`),
capture and the live stream go on, and the part already on disk is queued at once as an item *held* until the
recording ends (:meth:`~agent.archive.upload_queue.UploadQueue.enqueue_held`), so even a power cut after that
cannot leave it unqueued. The visit's end releases the item with the final file; the upload runner releases it
itself if the recording process died (no lock on the file any more).

A small journal file (``<wav stem>.visit.json`` beside the archive, :mod:`agent.archive.journal`) names the
appointment while a visit is recording, so a visit cut short by kill -9 or power loss is repaired and queued on the
next start (:mod:`agent.archive.recovery`): the recording is the complete record of a visit and must not be lost.
A visit that captured no audio at all is not queued: its empty file is removed and the appointment stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.archive.journal import OpenJournal, VisitJournal
from agent.archive.resilient import ArchiveHealth
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.audio.pipeline import PipelineOutput
from agent.audio.types import Source
from agent.audio.vad import IsSpeech, SegmentFrame
from agent.audit_log import AuditLog, EventName
from agent.consent import Consent
from agent.errors import ArchiveError, InputError, NoAudioError
from agent.figures import StreamFigures, VisitFigures, VisitSummary
from agent.ids import appointment_id_problem
from agent.recorder import Recorder, RecordSummary
from agent.settings import AgentSettings
from agent.stream import wire
from agent.stream.client import ProgressCallback, SpeechStream, TokenProvider
from agent.visit_pause import PauseGate

log = logging.getLogger(__name__)


def archive_name(now: float) -> str:
    """``visit-20261121T193000Z-1a2b3c4d.wav``: sortable, unique, and free of patient data."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"visit-{stamp}-{uuid.uuid4().hex[:8]}.wav"


class Visit:
    """Records, streams and queues one visit. :meth:`run` once; :meth:`stop` from any thread."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        appointment_id: str,
        source: Source,
        queue: UploadQueue,
        token: TokenProvider | None,
        on_transcript: Callable[[wire.TranscriptEvent], None] | None = None,
        on_output: Callable[[PipelineOutput], None] | None = None,
        duration_s: float | None = None,
        is_speech: IsSpeech | None = None,
        on_stream_progress: ProgressCallback | None = None,
        clock: Callable[[], float] = time.time,
        consent: Consent = "not-asked",
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self.consent: Consent = consent
        self._audit = audit
        self.pause_gate = PauseGate()
        """The privacy pause (:mod:`agent.visit_pause`): :meth:`pause` and :meth:`resume` drive it."""
        self.appointment_id = appointment_id
        self._queue = queue
        self._on_output = on_output
        self._on_stream_progress = on_stream_progress
        self._clock = clock
        self._final_sample: int | None = None
        self.session_id = str(uuid.uuid4())
        archive_dir = Path(settings.archive.directory)
        self.archive_path = archive_dir / archive_name(clock())
        self._journal: OpenJournal | None = None
        self._recorder = Recorder(source, self.archive_path, settings, duration_s=duration_s,
                                  is_speech=is_speech, on_output=self._handle_output, resilient_archive=True,
                                  on_archive=self._on_archive, pause=self.pause_gate,
                                  recipient=queue.keys.recipient if queue.keys is not None else None)  # fmt: skip
        self.stream: SpeechStream | None = None
        if token is not None and settings.stream.enabled:
            self.stream = SpeechStream(settings.stream, speech_url=settings.api.speech_url,
                                       appointment_id=appointment_id, token=token,
                                       on_transcript=on_transcript, session_id=self.session_id)  # fmt: skip
        self.frames_captured = 0
        """Frames produced so far (read by the daemon's watchdog from another thread)."""
        self.samples_captured = 0
        self.gated_samples = 0
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hold: asyncio.Task[None] | None = None
        self._recording_over = asyncio.Event()

    @property
    def archive_health(self) -> ArchiveHealth:
        """Whether the archive is being written now and how much of the visit it lacks (any thread)."""
        return self._recorder.archive_health

    @property
    def lost_samples(self) -> int:
        """Timeline samples of this visit the source lost (device loss, overflow), archived as silence."""
        return self._recorder.lost_samples

    @property
    def recording(self) -> bool:
        """True from the visit's first captured frame until its recording is finished (the stream may go on)."""
        return self.frames_captured > 0 and self._final_sample is None

    @property
    def visit_id(self) -> str:
        """The visit's id in the audit trail: its speech session id (no patient data)."""
        return self.session_id

    @property
    def paused(self) -> bool:
        return self.pause_gate.paused

    def pause(self) -> bool:
        """Privacy pause (any thread): from the next frame on nothing is archived (silence), gated or sent. False if
        already paused. Audited (fsynced) before it returns; a failing audit trail is logged, the pause holds."""
        if not self.pause_gate.request(True):
            return False
        self._audit_event("paused")
        return True

    def resume(self) -> bool:
        """End the privacy pause (any thread); False if the visit was not paused."""
        before = self.pause_gate.paused_seconds
        if not self.pause_gate.request(False):
            return False
        self._audit_event("resumed", seconds=round(self.pause_gate.paused_seconds - before, 3))
        return True

    def _audit_event(self, event: EventName, **fields: str | int | float | None) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(event, visit=self.visit_id, **fields)
        except ArchiveError as exc:
            log.error("audit trail: %s (%s not recorded)", exc, event)

    def _audit_end(self, record: RecordSummary | None, item: UploadItem | None) -> None:
        """On a worker thread: the visit's end in the audit trail (stretches on the timeline, the upload item)."""
        for gap in record.gaps if record is not None else ():
            self._audit_event("gap", start=gap.start, end=gap.end, reason="lost")
        for stretch in self.pause_gate.stretches:
            self._audit_event("gap", start=stretch.start, end=stretch.end, reason="paused")
        paused = sum(p.seconds for p in self.pause_gate.stretches)
        self._audit_event("stopped", end=record.samples if record else None, seconds=round(paused, 3),
                          reason=record.stopped_by if record else "error")  # fmt: skip
        if item is not None:
            self._audit_event("archived", item=item.item_id, appointment=self.appointment_id)

    def stop(self) -> None:
        """End the visit soon: the recorder finishes its WAV and :meth:`run` goes on to end the stream."""
        self._stopped.set()
        self._recorder.stop()

    def interrupt(self) -> None:
        """A person's stop (Ctrl-C): end the visit; once it is recorded and queued, stop waiting for the stream."""
        self.stop()
        if self._final_sample is not None and self.stream is not None:
            self.stream.give_up()

    async def run(self, *, finish_stream: bool = True) -> VisitSummary:
        """Record until stopped, queue the upload, then (``finish_stream``) wait for the stream's confirmation.

        With ``finish_stream=False`` the stream keeps running: call :meth:`finish_stream` (the daemon does, in the
        background, so that the next visit need not wait for an outage's backlog)."""
        self._loop = asyncio.get_running_loop()
        if self._audit is not None:  # before anything is on disk: a visit without its audit lines does not record
            await asyncio.to_thread(self._audit.append, "consent", visit=self.visit_id, consent=self.consent,
                                    appointment=self.appointment_id)  # fmt: skip
            await asyncio.to_thread(self._audit.append, "started", visit=self.visit_id,
                                    appointment=self.appointment_id)  # fmt: skip
        try:
            self._write_journal()
        except ArchiveError:
            await asyncio.to_thread(self._audit_end, None, None)
            raise
        if self.stream is not None:
            await self.stream.start()
        try:
            record = await self._record()
        except BaseException:
            await self._end_hold()
            if self._journal is not None:
                self._journal.release()  # kept on disk: the next start recovers the visit
            await asyncio.to_thread(self._audit_end, None, None)
            if self.stream is not None:
                await self.stream.close()
            raise
        self._final_sample = record.samples
        try:  # the recording is safe on the upload queue before anything waits on the network
            item = await self._queue_upload(record)
        except BaseException:
            if self.stream is not None:
                await self.stream.close()
            raise
        await asyncio.to_thread(self._audit_end, record, item)
        if item is None:
            if self.stream is not None:
                await self.stream.close()
            raise NoAudioError("the visit captured no audio: nothing was queued, the appointment stays free "
                               "for the real visit")  # fmt: skip
        missing = "".join(f"; missing from the recording: {m.describe()}" for m in record.archive_missing)
        log.info("visit ended: %.1f s captured, upload queued%s", record.samples / SAMPLE_RATE, missing)
        confirmed = await self.finish_stream() if finish_stream and self.stream is not None else False
        return VisitSummary(record=record, figures=self.figures(), stream_confirmed=confirmed, upload=item,
                            paused=tuple(self.pause_gate.stretches))  # fmt: skip

    def figures(self) -> VisitFigures:
        """The visit's figures now (any thread): what ``status`` and the metrics show and, taken at the end, what the
        visit summary prints and the benchmarks record (:mod:`agent.figures`)."""
        stream = StreamFigures.of(self.stream.stats) if self.stream is not None else None
        return VisitFigures(appointment_id=self.appointment_id, session_id=self.session_id,
                            samples=self.samples_captured, gated_samples=self.gated_samples,
                            lost_samples=self.lost_samples, archive=self.archive_health, stream=stream,
                            paused=self.paused, paused_seconds=self.pause_gate.paused_seconds)  # fmt: skip

    async def finish_stream(self) -> bool:
        """Send the rest and ``end``; wait, bounded by what the backlog needs, for the server's confirmation.

        True if the server confirmed the whole visit. The stream is stopped either way (also when cancelled)."""
        if self.stream is None:
            return False
        return await self.stream.finish(final_sample=self._final_sample, progress=self._on_stream_progress)

    async def _record(self) -> RecordSummary:
        """Run the recorder on the loop; on cancellation stop it and still finish the WAV first."""
        done = asyncio.ensure_future(self._recorder.run_on_loop())
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self._recorder.stop()
            record = await done
            await self._queue_upload(record)
            raise

    def _on_archive(self, health: ArchiveHealth) -> None:
        """On the loop: the archive stopped (or resumed). Queue what is on disk now."""
        loop = self._loop
        if not health.writable and loop is not None:
            loop.call_soon_threadsafe(self._start_hold)

    def _start_hold(self) -> None:
        if self._hold is None and not self._recording_over.is_set():
            self._hold = asyncio.create_task(self._queue_saved_part(), name="queue-saved-part")

    async def _queue_saved_part(self) -> None:
        """Put the visit on the upload queue now, held until the recording ends; retried each second while the
        queue cannot be written (its folder may be on the full disk: the journal covers a power cut meanwhile)."""
        warned = False
        while not self._recording_over.is_set():
            try:
                item = await asyncio.to_thread(self._queue.enqueue_held, self.appointment_id, self.archive_path)
            except ArchiveError as exc:
                if not warned:
                    log.warning("cannot queue the saved part of the visit yet (%s); trying again every second", exc)
                    warned = True
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: 3.11's wait_for can lose a cancellation
                    async with asyncio.timeout(1.0):
                        await self._recording_over.wait()
                continue
            log.info("saved part of the visit queued as upload item %s, held until the recording ends",
                     item.item_id[:8])  # fmt: skip
            return

    async def _end_hold(self) -> None:
        """The recording is over: let a running attempt to queue the saved part finish (the end queues it too)."""
        self._recording_over.set()
        if self._hold is not None:
            await self._hold

    async def _queue_upload(self, record: RecordSummary) -> UploadItem | None:
        """Put the finished WAV on the upload queue (releasing a held item); only then is the crash journal no
        longer needed.

        A recording without a single sample is removed instead (None): it is not the appointment's recording.
        """
        await self._end_hold()
        if record.samples == 0:
            await asyncio.to_thread(record.path.unlink, True)
            item = None
        else:
            item = await asyncio.to_thread(functools.partial(self._queue.enqueue, self.appointment_id, record.path,
                                                             digest=record.digest))  # fmt: skip
        if self._journal is not None:
            self._journal.remove()
        return item

    def _handle_output(self, out: PipelineOutput) -> None:
        """On the loop: count, hand the gate events to the stream (never blocks)."""
        self.frames_captured += len(out.frames)
        if out.frames:
            self.samples_captured = out.frames[-1].end
        gated = 0
        for event in out.events:
            if type(event) is SegmentFrame:
                gated += len(event.frame.pcm)
        self.gated_samples += gated // BYTES_PER_SAMPLE
        if self.stream is not None and (out.events or out.gaps):
            # Gaps are audio the source lost (overflow, device loss): archived as silence, announced on the stream.
            self.stream.feed([*out.events, *out.gaps] if out.gaps else out.events)  # the feed only iterates them
        if self._on_output is not None:
            self._on_output(out)

    def _write_journal(self) -> None:
        """Durable (atomic, fsynced) and locked before the first audio byte; ArchiveError if the disk refuses."""
        journal = VisitJournal(appointment_id=self.appointment_id, session_id=self.session_id,
                               started_at=self._clock(), wav=self.archive_path.name)  # fmt: skip
        self._journal = OpenJournal.write(self.archive_path, journal)


def refuse_second_recording(queue: UploadQueue, appointment_id: str) -> None:
    """Raise InputError when the queue already holds a visit of ``appointment_id`` (call before recording).

    MediSync keeps one recording per appointment, so a second visit could never be delivered; without this check
    the queue (idempotent per appointment) keeps the first visit's item, the new recording sits unqueued in the
    archive, and the first visit's upload would be reported as this one's.
    """
    problem = appointment_id_problem(appointment_id)
    if problem is not None:
        raise InputError(problem)
    existing = queue.find(appointment_id)
    if existing is not None:
        raise InputError(
            f"appointment {appointment_id} already has a recorded visit (upload {existing.state.value}); MediSync "
            "keeps one recording per appointment: record the visit into a new appointment (run: --new-appointment-for)"
        )
