"""Microphone health: a pure detector of a microphone that went deaf (blocks and times in, state changes out).

No I/O, no threads, no clock of its own: the caller passes each block of samples with the (monotonic) time it
covers, the voice gate's speech decisions and periodic time ticks; every call returns the :class:`MicChange`\\ s it
caused. :class:`agent.audio.mic_monitor.MicHealth` is the thin, thread-safe adapter that logs them and tells
listeners. Problems, by their stable names (status, metrics, logs and the event stream use them):

- ``silent``: the RMS level over ``window_s`` is below ``silence_dbfs`` (digital silence, a muted input, a gain
  far too low for speech); cleared once it is ``hysteresis_db`` above that.
- ``clipping``: at least ``clip_share`` of the samples over ``window_s`` are at or above ``clip_dbfs``; cleared
  below half that share.
- ``no_data``: no block at all for ``no_data_s`` (unplugged, a stalled driver); needs :meth:`tick`. Cleared when
  blocks have flowed again for ``clear_s``.
- ``no_speech``: while speech is watched (a visit runs, not paused), ``no_speech_s`` have passed since the last
  speech the gate passed, or since the level came back, with the level present (neither ``silent`` nor
  ``no_data``, which supersede it); cleared by the next speech or when watching stops.

``silent`` and ``clipping`` are raised after their condition held for ``raise_s`` and cleared after the opposite
held for ``clear_s`` (hysteresis in time as well as in level). Levels are dBFS with a full-scale square at 0.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.mic_problems import CLIPPING, NO_DATA, NO_SPEECH, PROBLEMS, SILENT, describe
from agent.settings import MicSettings

__all__ = ["CLIPPING", "FLOOR_DBFS", "NO_DATA", "NO_SPEECH", "PROBLEMS", "SILENT", "MicChange", "MicHealthDetector",
           "describe"]

FLOOR_DBFS = -120.0
"""The level reported for digital silence or no audio."""


@dataclass(frozen=True, slots=True)
class MicChange:
    """One problem raised or cleared."""

    problem: str
    """One of :data:`PROBLEMS`."""
    raised: bool
    """True: the problem began; False: it ended."""
    at: float
    """Detector clock (the times passed in) in seconds when it was decided."""
    since: float
    """When the condition (raised) or its end (cleared) began to hold, same clock."""
    level_dbfs: float
    """RMS level over the window at that moment (:data:`FLOOR_DBFS` for silence or no data)."""

    def describe(self) -> str:
        """One log line's worth, no audio content: ``silent (silent or too low for speech; level -120.0 dBFS for
        1.5 s)``: the level now and how long the condition (or, when cleared, its end) had held."""
        held = max(0.0, self.at - self.since)
        return f"{self.problem} ({describe(self.problem)}; level {self.level_dbfs:.1f} dBFS for {held:.1f} s)"


@dataclass
class _Debounce:
    """Raise after ``bad`` held ``raise_s``; clear after ``good`` held ``clear_s``; in between nothing changes."""

    raise_s: float
    clear_s: float
    raised: bool = False
    run_since: float | None = None
    """Start of the current run towards the opposite state."""

    def update(self, now: float, *, bad: bool, good: bool) -> float | None:
        """The run's start when the state flips now, else None."""
        toward = good if self.raised else bad
        if not toward:
            self.run_since = None
            return None
        if self.run_since is None:
            self.run_since = now
        if now - self.run_since < (self.clear_s if self.raised else self.raise_s):
            return None
        since, self.raised, self.run_since = self.run_since, not self.raised, None
        return since


class MicHealthDetector:
    """See the module docstring. ``now``: the clock reading at creation (no_data counts from there)."""

    def __init__(self, settings: MicSettings, now: float) -> None:
        self.settings = settings
        self._clip_level = 10.0 ** (settings.clip_dbfs / 20.0)
        # Per block within ``window_s``, in four parallel deques so that the window's totals are plain sum() calls
        # (per block on the event loop): end time, samples, sum of squares, clipped samples.
        self._ends: deque[float] = deque()
        self._counts: deque[int] = deque()
        self._powers: deque[float] = deque()
        self._clips: deque[int] = deque()
        self._silent = _Debounce(settings.raise_s, settings.clear_s)
        self._clipping = _Debounce(settings.raise_s, settings.clear_s)
        self._no_data = False
        self._flowing_since: float | None = None
        self._last_data = now
        self._watching = False
        self._speech_ref = now
        """Last speech, or when the level came back or watching began: no_speech counts from here."""
        self._no_speech = False
        self._problems: frozenset[str] = frozenset()

    @property
    def problems(self) -> frozenset[str]:
        return self._problems

    @property
    def level_dbfs(self) -> float:
        """RMS level over the window; :data:`FLOOR_DBFS` for digital silence, an empty window or no data."""
        if self._no_data:
            return FLOOR_DBFS
        count = sum(self._counts)
        power = sum(self._powers) / count if count else 0.0
        if power <= 1e-12:
            return FLOOR_DBFS
        return max(FLOOR_DBFS, 10.0 * math.log10(power))

    def block(self, samples: npt.NDArray[np.floating], start: float, end: float) -> list[MicChange]:
        """A block of float samples in [-1, 1] (any shape) captured from ``start`` to ``end`` seconds."""
        flat = np.asarray(samples, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return []
        power = float(np.dot(flat, flat))  # float32 dot: cheap, and plenty precise for a level meter
        clipped = int(np.count_nonzero(np.abs(flat) >= self._clip_level))
        ends = self._ends
        ends.append(end)
        self._counts.append(flat.size)
        self._powers.append(power)
        self._clips.append(clipped)
        oldest = end - self.settings.window_s
        while ends and ends[0] <= oldest:
            ends.popleft()
            self._counts.popleft()
            self._powers.popleft()
            self._clips.popleft()
        changes = self._data_flows(start, end)
        changes += self._judge_level(end)
        changes += self._judge_speech(end)
        return changes

    def frames_pcm(self, pcm: bytes, start: float, end: float) -> list[MicChange]:
        """Like :meth:`block` for s16le samples (the pipeline's 16 kHz frames)."""
        return self.block(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, start, end)

    def heard_speech(self, at: float) -> list[MicChange]:
        """The voice gate passed speech ending at ``at``."""
        self._speech_ref = max(self._speech_ref, at)
        if self._no_speech:
            self._no_speech = False
            return [self._change(NO_SPEECH, False, at, at)]
        return []

    def watch_speech(self, on: bool, now: float) -> list[MicChange]:
        """Start (a visit records) or stop (it ended or paused) expecting speech."""
        self._watching, self._speech_ref = on, now
        if not on and self._no_speech:
            self._no_speech = False
            return [self._change(NO_SPEECH, False, now, now)]
        return []

    def tick(self, now: float) -> list[MicChange]:
        """Time passes without a block (call a few times a second): the device may have stopped delivering."""
        changes: list[MicChange] = []
        if now - self._last_data >= self.settings.no_data_s:
            self._flowing_since = None
            if not self._no_data:
                self._no_data = True
                changes.append(self._change(NO_DATA, True, now, self._last_data))
                changes += self._end_no_speech(now)
        return changes + self._judge_speech(now)

    # --- internals --------------------------------------------------------------------------------------------

    def _data_flows(self, start: float, end: float) -> list[MicChange]:
        if not self._no_data:
            self._last_data = max(self._last_data, end)
            return []
        if start - self._last_data >= self.settings.no_data_s:
            self._flowing_since = None  # a gap as long as the one that raised it: the flow starts anew
        self._last_data = max(self._last_data, end)
        if self._flowing_since is None:
            self._flowing_since = start
        if end - self._flowing_since < self.settings.clear_s:
            return []
        since, self._flowing_since, self._no_data = self._flowing_since, None, False
        self._level_back(end)
        return [self._change(NO_DATA, False, end, since)]

    def _judge_level(self, now: float) -> list[MicChange]:
        if self._no_data:
            return []
        changes: list[MicChange] = []
        level = self.level_dbfs
        quiet = level < self.settings.silence_dbfs
        loud = level >= self.settings.silence_dbfs + self.settings.hysteresis_db
        if (since := self._silent.update(now, bad=quiet, good=loud)) is not None:
            changes.append(self._change(SILENT, self._silent.raised, now, since))
            changes += self._end_no_speech(now) if self._silent.raised else self._level_back(now)
        count = sum(self._counts)
        share = sum(self._clips) / count if count else 0.0
        limit = self.settings.clip_share
        if (since := self._clipping.update(now, bad=share >= limit, good=share < limit / 2)) is not None:
            changes.append(self._change(CLIPPING, self._clipping.raised, now, since))
        return changes

    def _judge_speech(self, now: float) -> list[MicChange]:
        present = not self._no_data and not self._silent.raised
        if not (self._watching and present and not self._no_speech):
            return []
        if now - self._speech_ref < self.settings.no_speech_s:
            return []
        self._no_speech = True
        return [self._change(NO_SPEECH, True, now, self._speech_ref)]

    def _end_no_speech(self, now: float) -> list[MicChange]:
        """Silence or no data supersedes no_speech (there is no level to hear speech in)."""
        if not self._no_speech:
            return []
        self._no_speech = False
        return [self._change(NO_SPEECH, False, now, now)]

    def _level_back(self, now: float) -> list[MicChange]:
        self._speech_ref = max(self._speech_ref, now)
        return []

    def _change(self, problem: str, raised: bool, at: float, since: float) -> MicChange:
        self._problems = self._problems | {problem} if raised else self._problems - {problem}
        return MicChange(problem, raised, at, since, self.level_dbfs)
