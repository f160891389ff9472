"""Voice-activity gate: a pure state machine over timeline frames.

The per-frame speech decision is injected (``is_speech(pcm) -> bool``); :class:`WebRtcVad` adapts
``webrtcvad.Vad``. Parameters come from :class:`agent.settings.VadSettings` (rounded up to whole frames):

- onset: a segment opens when at least ``onset`` frames of the last ``2 x onset`` frames are speech (one
  non-speech frame inside a word does not restart the count);
- pre-roll: the segment starts ``preroll`` frames before the first speech frame of that onset window (keeps the
  soft start of the first word), never reaching back into a previous segment;
- hangover: an open segment closes after ``hangover`` consecutive non-speech frames, which are passed too.

Events, in timeline order: :class:`SegmentStart` (timeline index), :class:`SegmentFrame` for every passed frame
(pre-roll included, each frame exactly once), :class:`SegmentEnd` (timeline index one past the last passed
sample). A frame shorter than a full frame (the stream's tail) counts as non-speech.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent import SAMPLE_RATE
from agent.audio.types import Frame
from agent.settings import VadSettings

IsSpeech = Callable[[bytes], bool]


@dataclass(frozen=True, slots=True)
class SegmentStart:
    start: int
    """Timeline index of the segment's first sample."""


@dataclass(frozen=True, slots=True)
class SegmentFrame:
    frame: Frame


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    end: int
    """Timeline index one past the segment's last sample."""


GateEvent = SegmentStart | SegmentFrame | SegmentEnd


@dataclass
class GateStats:
    frames: int = 0
    """Frames seen."""
    speech_frames: int = 0
    """Frames the classifier called speech."""
    passed_frames: int = 0
    """Frames passed in segments."""
    segments: int = 0
    """Segments opened."""

    @property
    def speech_share(self) -> float:
        """Fraction of frames classified as speech (0 before any frame)."""
        return self.speech_frames / self.frames if self.frames else 0.0

    @property
    def passed_share(self) -> float:
        """Fraction of frames passed by the gate."""
        return self.passed_frames / self.frames if self.frames else 0.0


class WebRtcVad:
    """``is_speech`` backed by webrtcvad (16 kHz, frames of 10, 20 or 30 ms)."""

    def __init__(self, aggressiveness: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def __call__(self, pcm: bytes) -> bool:
        return bool(self._vad.is_speech(pcm, SAMPLE_RATE))


def frames_for(ms: int, frame_ms: int) -> int:
    """Whole frames covering ``ms`` milliseconds (at least 0)."""
    return max(0, math.ceil(ms / frame_ms))


class VadGate:
    """Feed frames in timeline order with :meth:`push` (or a block's frames at once with :meth:`push_many`); call
    :meth:`finish` at the end of the stream."""

    def __init__(self, settings: VadSettings, frame_ms: int, is_speech: IsSpeech) -> None:
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self.onset = max(1, frames_for(settings.onset_ms, frame_ms))
        self.window = 2 * self.onset
        self.preroll = frames_for(settings.preroll_ms, frame_ms)
        self.hangover = max(1, frames_for(settings.hangover_ms, frame_ms))
        self.stats = GateStats()
        self._is_speech = is_speech
        self._history: deque[tuple[Frame, bool]] = deque(maxlen=self.preroll + self.window)
        self._recent: deque[bool] = deque(maxlen=self.window)
        """The speech decisions of the last ``window`` frames of the history (the onset window)."""
        self._recent_speech = 0
        """How many of :attr:`_recent` are speech (kept as frames come and go, not recounted per frame)."""
        self._open = False
        self._silent_run = 0
        self._last_end: int | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def push(self, frame: Frame) -> list[GateEvent]:
        return self.push_many((frame,))

    def push_many(self, frames: Iterable[Frame]) -> list[GateEvent]:
        """The events of ``frames`` (in timeline order), as :meth:`push` frame by frame would give them."""
        events: list[GateEvent] = []
        full = 2 * self.frame_samples
        is_speech = self._is_speech
        stats = self.stats
        hangover = self.hangover
        frame: Frame | None = None
        for frame in frames:
            pcm = frame.pcm
            speech = len(pcm) == full and is_speech(pcm)
            stats.frames += 1
            stats.speech_frames += speech
            if self._open:  # passed; closes after ``hangover`` non-speech frames in a row
                stats.passed_frames += 1
                events.append(SegmentFrame(frame))
                self._silent_run = 0 if speech else self._silent_run + 1
                if self._silent_run >= hangover:
                    events.append(self._close(frame.start + len(pcm) // 2))
            elif self._remember(frame, speech):
                events.extend(self._open_segment(len(self._history) - len(self._recent) + self._recent.index(True)))
        if frame is not None:
            self._last_end = frame.start + len(frame.pcm) // 2
        return events

    def _remember(self, frame: Frame, speech: bool) -> bool:
        """Keep a frame of the closed gate; True when the onset window now holds enough speech to open."""
        self._history.append((frame, speech))
        recent = self._recent
        if len(recent) == self.window:
            self._recent_speech -= recent[0]
        recent.append(speech)
        self._recent_speech += speech
        return self._recent_speech >= self.onset

    def _forget(self) -> None:
        self._history.clear()
        self._recent.clear()
        self._recent_speech = 0

    def _open_segment(self, onset_index: int) -> list[GateEvent]:
        passed = list(self._history)[max(0, onset_index - self.preroll) :]
        self._forget()
        self._open = True
        self._silent_run = 0
        self.stats.segments += 1
        self.stats.passed_frames += len(passed)
        events: list[GateEvent] = [SegmentStart(passed[0][0].start)]
        events.extend(SegmentFrame(f) for f, _ in passed)
        # The frames after the onset may already be trailing silence long enough to close.
        for _, speech in passed:
            self._silent_run = 0 if speech else self._silent_run + 1
        if self._silent_run >= self.hangover:
            events.append(self._close(passed[-1][0].end))
        return events

    def _close(self, end: int) -> SegmentEnd:
        self._open = False
        self._silent_run = 0
        return SegmentEnd(end)

    def finish(self) -> list[GateEvent]:
        """End of stream: close an open segment at the last frame's end."""
        if self._open and self._last_end is not None:
            return [self._close(self._last_end)]
        self._forget()
        return []
