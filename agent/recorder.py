"""Source -> DSP -> VAD -> WAV archive, driven by the event loop.

Used by ``medisync-agent record`` and by the visit code. The loop takes blocks from the source's hand-off, runs
them through :class:`~agent.audio.pipeline.AudioPipeline`, writes every frame (ungated) to a
:class:`~agent.archive.wav.WavArchiveWriter` and collects the VAD segments. It stops at the end of the source,
after ``duration_s`` of timeline audio (cut to the exact sample), or when :meth:`Recorder.stop` is called (from
another thread or a signal handler). Whatever happens, the archive is finished as a valid WAV under its final name
(on an error too, before the error propagates), so nothing captured is lost.

With a ``recipient`` (the device key's public half) the archive is sealed at rest
(:class:`~agent.archive.sealed_writer.SealedArchiveWriter`); ``archive.encrypt`` on without one is a
:class:`~agent.errors.WrongKeyError`, never a plaintext fallback. The recorder sees the same writer interface either
way, and the summary carries the writer's upload digest (:attr:`RecordSummary.digest`).

With ``resilient_archive`` (a visit) the archive is a :class:`~agent.archive.resilient.ResilientArchiveWriter`:
a full disk or a write error stops the archive but not the recording, which goes on (and the live stream with it)
until the end; ``on_archive`` hears each stop and resumption and :attr:`Recorder.archive_health` tells the daemon.
The summary's ``samples`` is the visit's timeline, ``archived_samples`` what the file holds, and
``archive_missing`` the stretches the archive lacks.

Each :class:`~agent.audio.pipeline.PipelineOutput` is also handed to ``on_output`` (after its frames were
archived), which is where the visit code attaches the live stream; ``on_segment`` gets each speech segment as
the gate closes it.

:meth:`Recorder.run_on_loop` is the one consumer, for every source (microphone, file, synthetic, the daemon's
device watch): the source's hand-off eventfd wakes the running loop, which runs DSP, VAD, the ``duration_s`` cut
and the archive write (fdatasync on a worker thread), then hands the output to ``on_output`` on the loop thread.
That saves a thread wake-up per block (reader thread, then the loop), which measured costlier than the DSP itself
(``benchmarks/NOTES.md``). Opening and finishing (device open, file creation, final fsync and rename) run on a
worker thread so the loop never blocks on them. :meth:`Recorder.run` runs the same consumer in an event loop of
its own (``record``).

The ``duration_s`` cut is applied to the pipeline's output before it fans out (:func:`agent.audio.pipeline.cut`),
so the archive, ``on_output`` (the live stream) and the summary's ``samples`` (the stream's ``end.final_sample``)
agree to the sample.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent import SAMPLE_RATE
from agent.archive.age import Recipient
from agent.archive.resilient import ArchiveHealth, MissingStretch, ResilientArchiveWriter
from agent.archive.sealed import PlainDigest
from agent.archive.sealed_writer import ResilientSealedWriter, SealedArchiveWriter
from agent.archive.wav import WavArchiveWriter
from agent.audio.dsp import Gap
from agent.audio.pipeline import AudioPipeline, PipelineOutput, cut, reaches
from agent.audio.types import Source
from agent.audio.vad import IsSpeech, SegmentEnd, SegmentFrame, SegmentStart
from agent.errors import WrongKeyError
from agent.settings import AgentSettings
from agent.visit_pause import PauseGate

log = logging.getLogger(__name__)

STALL_CHECK_S = 2.0
"""Loop-driven recording: seconds without a block before the source is asked whether its device still works."""
PROGRESS_INTERVAL_SAMPLES = SAMPLE_RATE
"""An INFO progress line ("archived N samples") per second of audio; tests of crash safety read it."""

StopReason = Literal["end", "duration", "stop"]


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """A stretch the voice gate passed, as timeline indices (16 kHz samples)."""

    start: int
    end: int
    """One past the last sample."""


@dataclass(frozen=True, slots=True)
class RecordSummary:
    path: Path
    """The finished WAV."""
    samples: int
    """Samples (16 kHz) of the visit timeline (= in the archive, unless part of it could not be written)."""
    segments: tuple[SpeechSegment, ...]
    speech_frames: int
    """Frames the VAD classified as speech."""
    frames: int
    """Frames the VAD saw."""
    gaps: tuple[Gap, ...]
    """Timeline stretches the source lost (overflow, device hiccup), archived as silence."""
    stopped_by: StopReason
    source: str
    """The source's description (no patient data)."""
    archived_samples: int
    """Samples in the WAV file: ``samples``, less the end of the visit when the archive stopped and never resumed."""
    archive_missing: tuple[MissingStretch, ...] = ()
    """Timeline stretches the archive could not hold (disk full, I/O error), in order."""
    digest: PlainDigest | None = None
    """Size and SHA-256 of what uploading the file sends, when the writer knows them (sealed archives)."""

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def speech_share(self) -> float:
        """Fraction of frames the VAD classified as speech."""
        return self.speech_frames / self.frames if self.frames else 0.0

    @property
    def lost_samples(self) -> int:
        return sum(g.end - g.start for g in self.gaps)

    @property
    def archive_missing_samples(self) -> int:
        """Timeline samples missing from the archive (silence there, or after its end)."""
        return sum(m.samples for m in self.archive_missing)


class Recorder:
    """Records one source into one WAV file; :meth:`run` once, :meth:`stop` from anywhere."""

    def __init__(
        self,
        source: Source,
        archive_path: Path | str,
        settings: AgentSettings,
        *,
        duration_s: float | None = None,
        overwrite: bool = False,
        is_speech: IsSpeech | None = None,
        on_output: Callable[[PipelineOutput], None] | None = None,
        on_segment: Callable[[SpeechSegment], None] | None = None,
        resilient_archive: bool = False,
        on_archive: Callable[[ArchiveHealth], None] | None = None,
        recipient: Recipient | None = None,
        pause: PauseGate | None = None,
    ) -> None:
        if settings.archive.encrypt and recipient is None:  # never a silent fallback to plaintext
            raise WrongKeyError("archive.encrypt is on but no device key recipient was given to seal the recording")
        self._recipient = recipient if settings.archive.encrypt else None
        self._pause = pause
        self._source = source
        self._path = Path(archive_path)
        self._settings = settings
        self._limit = None if duration_s is None else max(0, round(duration_s * SAMPLE_RATE))
        self._overwrite = overwrite
        self._is_speech = is_speech
        self._on_output = on_output
        self._on_segment = on_segment
        self._stop_requested = False
        self._segments: list[SpeechSegment] = []
        self._open_segment: int | None = None
        self._next_progress = PROGRESS_INTERVAL_SAMPLES
        self._resilient = resilient_archive
        self._on_archive = on_archive
        self._writer: WavArchiveWriter | None = None
        self._pipeline: AudioPipeline | None = None
        self._archive_writable = True

    @property
    def archive_health(self) -> ArchiveHealth:
        """Whether the archive is being written and how much of the timeline it lacks (any thread may read it)."""
        writer = self._writer
        return writer.health if isinstance(writer, ResilientArchiveWriter) else ArchiveHealth()

    @property
    def lost_samples(self) -> int:
        """Timeline samples the source lost so far, archived as silence (read from the DSP, any thread)."""
        pipeline = self._pipeline
        return pipeline.dsp.lost_samples if pipeline is not None else 0

    def stop(self) -> None:
        """Ask :meth:`run` to finish soon. Thread-safe and safe in a signal handler (a flag and the source's stop)."""
        self._stop_requested = True
        self._source.stop()

    def run(self) -> RecordSummary:
        """:meth:`run_on_loop` in an event loop of its own (for a caller without one: ``record``, tests)."""
        return asyncio.run(self.run_on_loop())

    def _summary(self, source: Source, pipeline: AudioPipeline, writer: WavArchiveWriter, path: Path,
                 stopped_by: StopReason) -> RecordSummary:  # fmt: skip
        if self._open_segment is not None:  # cut by the duration limit while the gate was open
            self._close_segment(writer.position)
        stats = pipeline.stats
        return RecordSummary(
            path=path,
            samples=writer.position,
            segments=tuple(self._segments),
            speech_frames=stats.speech_frames,
            frames=stats.frames,
            gaps=tuple(g for g in pipeline.dsp.gaps if g.start < writer.position),
            stopped_by=stopped_by,
            source=source.description,
            archived_samples=writer.archived_samples,
            archive_missing=writer.missing if isinstance(writer, ResilientArchiveWriter) else (),
            digest=writer.digest,
        )

    async def run_on_loop(self) -> RecordSummary:
        """Record until the source ends, the duration is reached or stop() is called; return the summary.

        Driven by the running event loop (see the module doc). Raises InputError/DeviceError from the source and
        ArchiveError from the archive; the WAV is finished (valid, final name) before any of them propagates.
        """
        source = self._source
        await asyncio.to_thread(source.__enter__)
        try:
            pipeline, writer = await asyncio.to_thread(self._open, source, background_sync=True)
            try:
                stopped_by = await self._pump(source, pipeline, writer)
                return await asyncio.to_thread(self._conclude, source, pipeline, writer, stopped_by)
            except BaseException:
                if not writer.closed:
                    await asyncio.to_thread(writer.finish)
                raise
        finally:
            await asyncio.to_thread(source.__exit__, None, None, None)

    def _open(self, source: Source, *, background_sync: bool = False) -> tuple[AudioPipeline, WavArchiveWriter]:
        pipeline = AudioPipeline(source.sample_rate, self._settings.audio, self._settings.vad,
                                 is_speech=self._is_speech, pause=self._pause)  # fmt: skip
        if self._recipient is not None:
            sealed = ResilientSealedWriter if self._resilient else SealedArchiveWriter
            writer: WavArchiveWriter = sealed.create(self._path, self._settings.archive, overwrite=self._overwrite,
                                                     background_sync=background_sync, recipient=self._recipient)
        else:
            kind = ResilientArchiveWriter if self._resilient else WavArchiveWriter
            writer = kind.create(self._path, self._settings.archive, overwrite=self._overwrite,
                                 background_sync=background_sync)  # fmt: skip
        self._writer, self._pipeline = writer, pipeline
        log.info("recording %s to %s", source.description, self._path.name)
        return pipeline, writer

    async def _pump(self, source: Source, pipeline: AudioPipeline, writer: WavArchiveWriter) -> StopReason:
        """Process blocks as the hand-off's eventfd signals them, until stopped, closed or the duration is reached."""
        loop = asyncio.get_running_loop()
        handoff = source.handoff
        done: asyncio.Future[StopReason] = loop.create_future()
        last_block = loop.time()

        def drain() -> None:
            nonlocal last_block
            if done.done():
                return
            handoff.clear_wake()
            try:
                while (block := handoff.get_nowait()) is not None:
                    last_block = loop.time()
                    if self._consume(pipeline.process(block), writer):
                        done.set_result("duration")
                        return
                if self._stop_requested:
                    done.set_result("stop")
                elif handoff.closed:
                    error = handoff.error
                    if error is not None:
                        done.set_exception(error)
                    else:
                        done.set_result("end")
            except BaseException as exc:
                done.set_exception(exc)

        stall_timer: asyncio.TimerHandle | None = None

        def check_stall() -> None:
            nonlocal stall_timer
            if done.done():
                return
            if loop.time() - last_block >= STALL_CHECK_S:
                try:
                    source.check_alive()
                except BaseException as exc:
                    done.set_exception(exc)
                    return
            stall_timer = loop.call_at(max(loop.time(), last_block) + STALL_CHECK_S, check_stall)

        fd = handoff.wake_fd()
        loop.add_reader(fd, drain)
        stall_timer = loop.call_later(STALL_CHECK_S, check_stall)
        try:
            drain()  # blocks put before the reader was registered
            return await done
        finally:
            if stall_timer is not None:
                stall_timer.cancel()
            loop.remove_reader(fd)
            handoff.close_wake_fd()

    def _conclude(self, source: Source, pipeline: AudioPipeline, writer: WavArchiveWriter,
                  stopped_by: StopReason) -> RecordSummary:  # fmt: skip
        if stopped_by != "duration" and self._consume(pipeline.finish(), writer):
            stopped_by = "duration"
        path = writer.finish()
        return self._summary(source, pipeline, writer, path, stopped_by)

    def _consume(self, out: PipelineOutput, writer: WavArchiveWriter) -> bool:
        """Cut at the duration, archive, account and fan out one pipeline output; True when the cut is reached."""
        limit = self._limit
        if limit is not None and reaches(out, limit):
            out = cut(out, limit, segment_open=self._open_segment is not None)
        writer.write_frames(out.frames)
        archived = writer.archived_samples
        if archived >= self._next_progress:
            log.info("archived %d samples", archived)
            self._next_progress = (archived // PROGRESS_INTERVAL_SAMPLES + 1) * PROGRESS_INTERVAL_SAMPLES
        if isinstance(writer, ResilientArchiveWriter) and writer.writable != self._archive_writable:
            self._archive_writable = writer.writable
            if self._on_archive is not None:
                self._on_archive(writer.health)
        position = writer.position
        self._track_segments(out, position)
        if self._on_output is not None:
            self._on_output(out)
        return limit is not None and position >= limit

    def _track_segments(self, out: PipelineOutput, archived: int) -> None:
        for event in out.events:
            if type(event) is SegmentFrame:  # most events: nothing to track
                continue
            if isinstance(event, SegmentStart) and event.start < archived:
                self._open_segment = event.start
            elif isinstance(event, SegmentEnd) and self._open_segment is not None:
                self._close_segment(min(event.end, archived))

    def _close_segment(self, end: int) -> None:
        assert self._open_segment is not None
        segment = SpeechSegment(self._open_segment, end)
        self._open_segment = None
        self._segments.append(segment)
        if self._on_segment is not None:
            self._on_segment(segment)
