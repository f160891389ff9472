"""Source -> DSP -> VAD -> WAV archive, as one synchronous loop on the calling thread.

Used by ``medisync-agent record`` and by the visit code. The loop reads blocks from the source, runs them through
:class:`~agent.audio.pipeline.AudioPipeline`, writes every frame (ungated) to a
:class:`~agent.archive.wav.WavArchiveWriter` and collects the VAD segments. It stops at the end of the source,
after ``duration_s`` of timeline audio (cut to the exact sample), or when :meth:`Recorder.stop` is called (from
another thread or a signal handler). Whatever happens, the archive is finished as a valid WAV under its final name
(on an error too, before the error propagates), so nothing captured is lost.

Each :class:`~agent.audio.pipeline.PipelineOutput` is also handed to ``on_output`` (after its frames were
archived), which is where the visit code attaches the live stream; ``on_segment`` gets each speech segment as
the gate closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent import SAMPLE_RATE
from agent.archive.wav import WavArchiveWriter
from agent.audio.dsp import Gap
from agent.audio.pipeline import AudioPipeline, PipelineOutput
from agent.audio.types import Frame, Source
from agent.audio.vad import IsSpeech, SegmentEnd, SegmentStart
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

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
    """Samples (16 kHz) in the archive = timeline length."""
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
    ) -> None:
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

    def stop(self) -> None:
        """Ask :meth:`run` to finish soon. Thread-safe and safe in a signal handler (a flag and the source's stop)."""
        self._stop_requested = True
        self._source.stop()

    def run(self) -> RecordSummary:
        """Record until the source ends, the duration is reached or stop() is called; return the summary.

        Raises InputError/DeviceError from the source and ArchiveError from the archive; the WAV is finished
        (valid, final name) before any of them propagates.
        """
        with self._source as source:
            pipeline = AudioPipeline(source.sample_rate, self._settings.audio, self._settings.vad,
                                     is_speech=self._is_speech)  # fmt: skip
            writer = WavArchiveWriter.create(self._path, self._settings.archive, overwrite=self._overwrite)
            log.info("recording %s to %s", source.description, self._path.name)
            try:
                stopped_by = self._loop(source, pipeline, writer)
            except BaseException:
                if not writer.closed:
                    writer.finish()
                raise
            path = writer.finish()
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
        )

    def _loop(self, source: Source, pipeline: AudioPipeline, writer: WavArchiveWriter) -> StopReason:
        while not self._stop_requested:
            block = source.read()
            if block is None:
                break
            if self._consume(pipeline.process(block), writer):
                return "duration"
        if self._consume(pipeline.finish(), writer):
            return "duration"
        return "stop" if self._stop_requested else "end"

    def _consume(self, out: PipelineOutput, writer: WavArchiveWriter) -> bool:
        """Archive and account one pipeline output; True when the duration limit is reached."""
        limit = self._limit
        frames = out.frames
        if limit is not None and frames and frames[-1].end > limit:
            frames = [f for f in frames if f.start < limit]
            if frames and frames[-1].end > limit:
                last = frames[-1]
                frames[-1] = Frame(start=last.start, pcm=last.pcm[: 2 * max(0, limit - last.start)],
                                   capture_time=last.capture_time)  # fmt: skip
        writer.write_frames(frames)
        if writer.position >= self._next_progress:
            log.info("archived %d samples", writer.position)
            self._next_progress = (writer.position // PROGRESS_INTERVAL_SAMPLES + 1) * PROGRESS_INTERVAL_SAMPLES
        self._track_segments(out, writer.position)
        if self._on_output is not None:
            self._on_output(out)
        return limit is not None and writer.position >= limit

    def _track_segments(self, out: PipelineOutput, archived: int) -> None:
        for event in out.events:
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
