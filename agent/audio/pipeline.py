"""The audio path in one synchronous object: native blocks in; timeline frames, gate events and gaps out.

API (pure and synchronous: no threads, no asyncio; drive it from whichever thread reads the source)::

    from agent.audio.pipeline import AudioPipeline
    from agent.audio.sources import open_source

    with open_source(settings.audio.source, settings.audio) as source:
        pipeline = AudioPipeline(source.sample_rate, settings.audio, settings.vad)
        for out in pipeline.run(source):          # or: out = pipeline.process(block) ... pipeline.finish()
            archive.write(out.frames)             # every frame, ungated, contiguous timeline from 0
            for event in out.events:              # SegmentStart / SegmentFrame / SegmentEnd (agent.audio.vad)
                stream.feed(event)
            for gap in out.gaps:                  # Gap(start, end): silence inserted for samples the source lost
                stream.announce_gap(gap)

- ``out.frames`` are all frames (``agent.audio.types.Frame``: ``start`` timeline index, ``pcm`` s16le 16 kHz
  mono, ``capture_time``), each ``settings.audio.frame_ms`` long except possibly the very last one (emitted
  short by ``finish``).
- ``out.events`` are the VAD gate's events for the same frames (see :mod:`agent.audio.vad`).
- ``finish()`` must be called once at the end of the stream (``run`` does it): it drains the resampler, emits the
  tail frame and closes an open segment.
- ``stats`` exposes the gate counters (speech share, passed share, segments); ``dsp.gaps`` all gaps so far.

``is_speech`` defaults to webrtcvad at ``settings.vad.aggressiveness``; pass another callable in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from agent.audio.dsp import Dsp, Gap, Quality
from agent.audio.handoff import read_blocks
from agent.audio.types import Block, Frame, Source
from agent.audio.vad import GateEvent, GateStats, IsSpeech, SegmentEnd, SegmentFrame, SegmentStart, VadGate, WebRtcVad
from agent.settings import AudioSettings, VadSettings

if TYPE_CHECKING:
    from agent.visit_pause import PauseGate


@dataclass
class PipelineOutput:
    frames: list[Frame] = field(default_factory=list)
    """Every new frame (for the archive), in timeline order."""
    events: list[GateEvent] = field(default_factory=list)
    """Gate events for those frames (for the stream)."""
    gaps: list[Gap] = field(default_factory=list)
    """Gaps the source reported in this block (already filled with silence in ``frames``)."""


class AudioPipeline:
    def __init__(
        self,
        sample_rate: int,
        audio: AudioSettings,
        vad: VadSettings,
        *,
        is_speech: IsSpeech | None = None,
        quality: Quality = "HQ",
        pause: PauseGate | None = None,
    ) -> None:
        self.dsp = Dsp(sample_rate, audio, quality=quality)
        self.pause = pause
        """A visit's privacy pause (:mod:`agent.visit_pause`): paused frames are zeroed and kept from the gate."""
        self.gate = VadGate(vad, audio.frame_ms, is_speech or WebRtcVad(vad.aggressiveness))
        self._gaps_reported = 0
        self._finished = False

    @property
    def stats(self) -> GateStats:
        return self.gate.stats

    def process(self, block: Block) -> PipelineOutput:
        return self._gate(self.dsp.process(block))

    def finish(self) -> PipelineOutput:
        """Flush the tail and close the gate; idempotent (a second call returns an empty output)."""
        if self._finished:
            return PipelineOutput()
        self._finished = True
        out = self._gate(self.dsp.flush())
        out.events.extend(self.gate.finish())
        if self.pause is not None:
            out.gaps.extend(self.pause.finish(self.dsp.timeline_position))
        return out

    def run(self, source: Source) -> Iterator[PipelineOutput]:
        """Read ``source`` to its end (or until stopped), yielding one output per block, then the final one."""
        for block in read_blocks(source.handoff):
            yield self.process(block)
        yield self.finish()

    def _gate(self, frames: list[Frame]) -> PipelineOutput:
        pause = self.pause
        if pause is None or not pause.active:  # the usual case: every frame live, the gate takes them in one pass
            events = self.gate.push_many(frames)
            kept = frames
        else:
            events, kept = self._gate_paused(pause, frames)
        gaps: list[Gap] = []
        if len(self.dsp.gaps) > self._gaps_reported:
            gaps = self.dsp.gaps[self._gaps_reported :]
            self._gaps_reported = len(self.dsp.gaps)
        if pause is not None:
            gaps.extend(pause.take_gaps())
        return PipelineOutput(kept, events, gaps)

    def _gate_paused(self, pause: PauseGate, frames: list[Frame]) -> tuple[list[GateEvent], list[Frame]]:
        events: list[GateEvent] = []
        kept = []
        for frame in frames:
            step = pause.step(frame)
            kept.append(step.frame)
            if step.began:  # the open segment ends where the pause begins
                events.extend(self.gate.finish())
            if step.live:
                events.extend(self.gate.push(frame))
        return events, kept


def reaches(out: PipelineOutput, limit: int) -> bool:
    """True when ``out`` has audio at or beyond timeline index ``limit``."""
    return bool(out.frames) and out.frames[-1].end >= limit


def cut(out: PipelineOutput, limit: int, *, segment_open: bool) -> PipelineOutput:
    """``out`` without anything at or after timeline index ``limit`` (the ``--duration`` cut), for every output
    alike: frames (the last one shortened), gate events (a segment open at the cut ends there) and gaps.

    ``segment_open``: a segment was open before ``out``. Pure; ``out`` is not changed."""
    frames = [_shorten(f, limit) for f in out.frames if f.start < limit]
    events: list[GateEvent] = []
    is_open = segment_open
    for event in out.events:
        if isinstance(event, SegmentStart):
            if event.start < limit:
                events.append(event)
                is_open = True
        elif isinstance(event, SegmentFrame):
            if is_open and event.frame.start < limit:
                events.append(SegmentFrame(_shorten(event.frame, limit)))
        elif is_open:
            events.append(SegmentEnd(min(event.end, limit)))
            is_open = False
    if is_open and reaches(out, limit):
        events.append(SegmentEnd(limit))
    gaps = [replace(g, end=min(g.end, limit)) for g in out.gaps if g.start < limit]
    return PipelineOutput(frames, events, gaps)


def _shorten(frame: Frame, limit: int) -> Frame:
    if frame.end <= limit:
        return frame
    return replace(frame, pcm=frame.pcm[: 2 * (limit - frame.start)])
