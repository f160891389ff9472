"""One visit: source -> DSP -> VAD -> archive and live stream concurrently; at the end, the upload is queued.

The audio path (capture, DSP, gate, WAV archive) runs in :class:`~agent.recorder.Recorder`, on its own thread
for file and synth sources, on the event loop for the microphone (woken by the capture hand-off; see
``Recorder.run_on_loop``), and never waits on the network: each pipeline output is handed to
:meth:`SpeechStream.feed`, which only appends to an inbox. When the visit stops (``stop()``, the source ends,
or ``duration_s``), the WAV is finished and put on the on-disk upload queue first; then the stream is ended, with
a wait bounded by what its unconfirmed backlog needs (``run``), or in the background (the daemon, which starts
the next visit at once: :meth:`Visit.run` with ``finish_stream=False``, then :meth:`Visit.finish_stream`).

A small journal file (``<wav stem>.visit.json`` beside the archive) names the appointment while a visit is
recording, so a visit cut short by kill -9 or power loss is repaired and queued on the next start
(:func:`recover_visits`): the recording is the complete record of a visit and must not be lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from agent import SAMPLE_RATE
from agent.archive.repair import repair_partial
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.audio.handoff import HandoffSource
from agent.audio.pipeline import PipelineOutput
from agent.audio.types import Source
from agent.audio.vad import IsSpeech, SegmentFrame
from agent.errors import ArchiveError, InputError
from agent.recorder import Recorder, RecordSummary
from agent.settings import AgentSettings
from agent.stream import wire
from agent.stream.client import ProgressCallback, SpeechStream, StreamStats, TokenProvider

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".visit.json"


class VisitJournal(msgspec.Struct, frozen=True, kw_only=True):
    """What a crashed visit needs to be uploaded on the next start (no patient data: ids only)."""

    appointment_id: str
    session_id: str
    started_at: float
    """Unix seconds."""
    wav: str
    """Final archive file name (the ``.partial`` sits beside it while recording)."""


@dataclass(frozen=True, slots=True)
class VisitSummary:
    appointment_id: str
    record: RecordSummary
    stream: StreamStats | None
    """None when streaming was disabled (no subscription, or turned off)."""
    stream_confirmed: bool
    """The server confirmed every gated sample (resume mode ``closed``, basic mode all chunks done); False also
    while the stream still drains in the background (``run(finish_stream=False)``)."""
    gated_samples: int
    """Samples the voice gate passed to the stream."""
    upload: UploadItem
    session_id: str

    @property
    def seconds_captured(self) -> float:
        return self.record.samples / SAMPLE_RATE

    @property
    def seconds_gated(self) -> float:
        return self.gated_samples / SAMPLE_RATE


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
    ) -> None:
        self._settings = settings
        self.appointment_id = appointment_id
        self._queue = queue
        self._on_output = on_output
        self._on_stream_progress = on_stream_progress
        self._clock = clock
        self._final_sample: int | None = None
        self.session_id = str(uuid.uuid4())
        archive_dir = Path(settings.archive.directory)
        self.archive_path = archive_dir / archive_name(clock())
        self._journal_path = self.archive_path.with_name(self.archive_path.stem + JOURNAL_SUFFIX)
        self._loop_driven = isinstance(source, HandoffSource)
        self._recorder = Recorder(source, self.archive_path, settings, duration_s=duration_s,
                                  is_speech=is_speech, on_output=self._handle_output)  # fmt: skip
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
        self._write_journal()
        if self.stream is not None:
            await self.stream.start()
        try:
            record = await self._record()
        except BaseException:
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
        log.info("visit ended: %.1f s captured, upload queued", record.samples / SAMPLE_RATE)
        confirmed = await self.finish_stream() if finish_stream and self.stream is not None else False
        return VisitSummary(
            appointment_id=self.appointment_id,
            record=record,
            stream=self.stream.stats if self.stream is not None else None,
            stream_confirmed=confirmed,
            gated_samples=self.gated_samples,
            upload=item,
            session_id=self.session_id,
        )

    async def finish_stream(self) -> bool:
        """Send the rest and ``end``; wait, bounded by what the backlog needs, for the server's confirmation.

        True if the server confirmed the whole visit. The stream is stopped either way (also when cancelled)."""
        if self.stream is None:
            return False
        return await self.stream.finish(final_sample=self._final_sample, progress=self._on_stream_progress)

    async def _record(self) -> RecordSummary:
        """Run the recorder on its own thread; on cancellation stop it and still finish the WAV first."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[RecordSummary]
        if self._loop_driven:  # the microphone: DSP and archive on the loop, one wake-up per block
            done = asyncio.ensure_future(self._recorder.run_on_loop())
        else:  # files and synth pace themselves with sleeps: their own thread
            done = loop.run_in_executor(None, self._recorder.run)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self._recorder.stop()
            record = await done
            await self._queue_upload(record)
            raise

    async def _queue_upload(self, record: RecordSummary) -> UploadItem:
        """Put the finished WAV on the upload queue; only then is the crash journal no longer needed."""
        item = await asyncio.to_thread(self._queue.enqueue, self.appointment_id, record.path)
        self._journal_path.unlink(missing_ok=True)
        return item

    def _handle_output(self, out: PipelineOutput) -> None:
        """On the audio thread or the loop: count, hand the gate events to the stream (never blocks)."""
        self.frames_captured += len(out.frames)
        if out.frames:
            self.samples_captured = out.frames[-1].end
        self.gated_samples += sum(e.frame.samples for e in out.events if isinstance(e, SegmentFrame))
        if self.stream is not None and (out.events or out.gaps):
            # Gaps are audio the source lost (overflow, device loss): archived as silence, announced on the stream.
            self.stream.feed([*out.events, *out.gaps])
        if self._on_output is not None:
            self._on_output(out)

    def _write_journal(self) -> None:
        journal = VisitJournal(appointment_id=self.appointment_id, session_id=self.session_id,
                               started_at=self._clock(), wav=self.archive_path.name)  # fmt: skip
        try:
            self.archive_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_path.write_bytes(msgspec.json.encode(journal))
        except OSError as exc:
            raise ArchiveError(f"cannot write to the archive folder {self.archive_path.parent}: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip


def recover_visits(archive_dir: Path, queue: UploadQueue) -> list[UploadItem]:
    """Queue the uploads of visits that a crash cut short (repairing their ``.partial``). Returns what was queued."""
    recovered: list[UploadItem] = []
    for journal_path in sorted(archive_dir.glob(f"*{JOURNAL_SUFFIX}")):
        try:
            journal = msgspec.json.decode(journal_path.read_bytes(), type=VisitJournal)
        except (OSError, msgspec.DecodeError) as exc:
            log.error("cannot read visit journal %s (%s); left in place", journal_path.name, exc)
            continue
        wav = archive_dir / journal.wav
        partial = wav.with_name(wav.name + ".partial")
        if partial.exists():
            wav = repair_partial(partial).final
            log.warning("repaired %s left by an interrupted visit", wav.name)
        if not wav.exists():
            log.error("visit journal %s names a missing recording; left in place", journal_path.name)
            continue
        if queue.find(journal.appointment_id) is None:
            recovered.append(queue.enqueue(journal.appointment_id, wav))
            log.warning("queued the upload of interrupted visit %s", wav.name)
        journal_path.unlink()
    return recovered


def refuse_second_recording(queue: UploadQueue, appointment_id: str) -> None:
    """Raise InputError when the queue already holds a visit of ``appointment_id`` (call before recording).

    MediSync keeps one recording per appointment, so a second visit could never be delivered; without this check
    the queue (idempotent per appointment) keeps the first visit's item, the new recording sits unqueued in the
    archive, and the first visit's upload would be reported as this one's.
    """
    existing = queue.find(appointment_id)
    if existing is not None:
        raise InputError(
            f"appointment {appointment_id} already has a recorded visit (upload {existing.state.value}); MediSync "
            "keeps one recording per appointment: record the visit into a new appointment (run: --new-appointment-for)"
        )
