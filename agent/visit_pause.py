"""Privacy pause of a visit: pure logic, no I/O. Requests come from any thread; frames are judged on the audio path.

While a visit is paused its audio goes nowhere: the audio path (:class:`~agent.audio.pipeline.AudioPipeline`)
passes each timeline frame through :meth:`PauseGate.step`, which replaces a paused frame's samples by zeros before
anything keeps them (archive), and keeps it away from the voice gate (so from its pre-roll, the send ring and the
wire). The stream is told with a ``gap`` of reason ``paused`` covering the stretch, without audio.

**The archive keeps wall time, with silence for the pause** (rather than omitting the stretch). Why: the visit has
one timeline, sample index = time since the visit's first sample, shared by the archive, the wire and the
transcript (speech-protocol.md); device gaps are archived as silence for the same reason. Keeping it means transcript
times, the archive and the clock on the wall agree without any offset table; a listener hears where and how long
the pause was; the resume protocol's ``start`` simply jumps over the pause like over gated silence. The cost is
32 000 bytes of zeros per paused second on disk. Omitting the stretch would shift every later time in the archive
against the live transcript and against the audit trail's wall times.

Edges fall on frame boundaries (20 ms by default): a request takes effect at the first frame the audio path
processes after it (a request that comes while a block is being processed, from the next block's first frame: the
path asks :attr:`PauseGate.active` once per block and skips :meth:`PauseGate.step` while it is False). The frames of a
block still in the hand-off when the button is pressed were captured before it, so a pause starts at most one
capture block *before* the press (never after), and a resume at most one block before its press. The stretches
are kept as timeline indices (:attr:`PauseGate.stretches`) for the visit's record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent import SAMPLE_RATE
from agent.audio.dsp import Gap
from agent.audio.types import Frame

PAUSED = "paused"
"""The ``gap`` reason of a privacy pause (speech-protocol.md)."""


@dataclass(frozen=True, slots=True)
class PausedStretch:
    start: int
    """Timeline index of the first paused sample."""
    end: int
    """Timeline index one past the last paused sample."""

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Step:
    frame: Frame
    """The frame to archive: the original, or zeros of the same length while paused."""
    live: bool
    """True: the frame goes on to the voice gate (and the stream); False: it is paused."""
    began: bool
    """This frame is the first of a pause: the voice gate's open segment must end at its start."""


class PauseGate:
    """Pause state of one visit. :meth:`request` from any thread; :meth:`step` / :meth:`finish` on the audio path."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._wanted = False
        self._since: float | None = None
        self._paused_before = 0.0
        self._applied_from: int | None = None
        self._gaps: list[Gap] = []
        self.stretches: list[PausedStretch] = []
        """Pauses applied to the timeline, ended ones (and the last one once :meth:`finish` ran)."""

    @property
    def paused(self) -> bool:
        """Whether a pause was requested and not resumed (what ``status`` shows)."""
        return self._wanted

    @property
    def paused_seconds(self) -> float:
        """Wall seconds paused so far in this visit, the current pause included."""
        with self._lock:
            current = 0.0 if self._since is None else self._clock() - self._since
            return self._paused_before + current

    @property
    def active(self) -> bool:
        """A pause is requested or still applied on the audio path: frames must go through :meth:`step`. False: every
        frame the audio path processes now is live, as :meth:`step` would say (it may skip calling it)."""
        return self._wanted or self._applied_from is not None

    @property
    def applied_from(self) -> int | None:
        """Timeline index where the current pause took effect on the audio path; None when not paused there."""
        return self._applied_from

    def request(self, paused: bool) -> bool:
        """Ask for a pause (True) or a resume (False); returns False when the visit already was in that state."""
        with self._lock:
            if paused == self._wanted:
                return False
            self._wanted = paused
            now = self._clock()
            if paused:
                self._since = now
            elif self._since is not None:
                self._paused_before += now - self._since
                self._since = None
            return True

    def step(self, frame: Frame) -> Step:
        """Judge one timeline frame (in order)."""
        wanted = self._wanted
        if wanted and self._applied_from is None:
            self._applied_from = frame.start
            return Step(_silent(frame), live=False, began=True)
        if wanted:
            return Step(_silent(frame), live=False, began=False)
        if self._applied_from is not None:
            self._close(frame.start)
        return Step(frame, live=True, began=False)

    def take_gaps(self) -> list[Gap]:
        """Pauses that ended since the last call, as ``Gap(reason="paused")`` for the stream."""
        gaps, self._gaps = self._gaps, []
        return gaps

    def finish(self, end: int) -> list[Gap]:
        """The visit ended at timeline index ``end``: a pause still on ends there. Returns the gaps not yet taken."""
        if self._applied_from is not None:
            self._close(end)
        return self.take_gaps()

    def _close(self, end: int) -> None:
        start, self._applied_from = self._applied_from, None
        assert start is not None
        if end > start:
            self.stretches.append(PausedStretch(start, end))
            self._gaps.append(Gap(start, end, PAUSED))


def _silent(frame: Frame) -> Frame:
    return Frame(start=frame.start, pcm=bytes(len(frame.pcm)), capture_time=frame.capture_time)
