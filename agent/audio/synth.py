"""Deterministic synthetic audio for tests and benchmarks: ``synth:<recipe>``.

Grammar::

    recipe   := [RATE ["x" CHANNELS] ":"] sequence ["*" REPEAT]
    sequence := segment ("+" segment)*
    segment  := kind "/" SECONDS ["/" LEVEL_DB]
    kind     := "tone=" HZ | "noise" ["=" SEED] | "silence"

RATE defaults to 16000 Hz (8000-48000), CHANNELS to 1 (1 or 2; every channel carries the same signal), REPEAT
to 1. LEVEL_DB is dBFS (default -20): the peak of a tone, the RMS of noise (Gaussian, clipped to +-1). Noise is
seeded (default seed 0) and restarts from its seed on every repetition, so a recipe always yields the same
samples. Examples::

    synth:tone=440/2                               2 s of 440 Hz at -20 dBFS, 16 kHz mono
    synth:48000x2:tone=1000/1/-6+silence/0.5       stereo 48 kHz
    synth:44100:noise=7/3/-30+tone=300/2/-12*1800  an hour (5 s x 1800), generated block by block
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.audio.paced import Clock, Pace, PacedSource, Sleep
from agent.audio.types import BlockSink
from agent.errors import InputError

GRAMMAR = "synth:[RATE[xCHANNELS]:]KIND/SECONDS[/DBFS][+...][*REPEAT], KIND = tone=HZ | noise[=SEED] | silence"

_HEAD = re.compile(r"^(\d+)(?:x(\d+))?:")
_SEGMENT = re.compile(
    r"^(?:(?P<tone>tone=(?P<hz>\d+(?:\.\d+)?))|(?P<noise>noise(?:=(?P<seed>\d+))?)|(?P<silence>silence))"
    r"/(?P<sec>\d+(?:\.\d+)?)(?:/(?P<db>-?\d+(?:\.\d+)?))?$"
)


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Literal["tone", "noise", "silence"]
    seconds: float
    """Duration in seconds."""
    level_db: float = -20.0
    """dBFS: peak of a tone, RMS of noise."""
    hz: float = 0.0
    """Tone frequency in Hz."""
    seed: int = 0
    """Noise seed."""


@dataclass(frozen=True, slots=True)
class Recipe:
    rate: int
    """Hz."""
    channels: int
    segments: tuple[Segment, ...]
    repeat: int

    @property
    def frames_per_repeat(self) -> tuple[int, ...]:
        return tuple(round(s.seconds * self.rate) for s in self.segments)

    @property
    def total_frames(self) -> int:
        return sum(self.frames_per_repeat) * self.repeat


def parse_recipe(text: str) -> Recipe:
    """Parse a recipe (without the ``synth:`` prefix); InputError naming the grammar if it does not parse."""
    rest = text.strip()
    rate, channels = 16000, 1
    head = _HEAD.match(rest)
    if head:
        rate, channels = int(head.group(1)), int(head.group(2) or 1)
        rest = rest[head.end() :]
    repeat = 1
    if "*" in rest:
        rest, _, count = rest.rpartition("*")
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"bad synth repeat count {count!r}; grammar: {GRAMMAR}")
        repeat = int(count)
    if not 8000 <= rate <= 48000 or channels not in (1, 2):
        raise InputError(f"synth rate must be 8000-48000 Hz and channels 1 or 2, got {rate}x{channels}")
    segments = tuple(_parse_segment(part) for part in rest.split("+"))
    return Recipe(rate, channels, segments, repeat)


def _parse_segment(part: str) -> Segment:
    m = _SEGMENT.match(part.strip())
    if not m:
        raise InputError(f"bad synth segment {part!r}; grammar: {GRAMMAR}")
    level = float(m.group("db")) if m.group("db") else -20.0
    seconds = float(m.group("sec"))
    if m.group("tone"):
        return Segment("tone", seconds, level, hz=float(m.group("hz")))
    if m.group("noise"):
        return Segment("noise", seconds, level, seed=int(m.group("seed") or 0))
    return Segment("silence", seconds, level)


class SynthSource(PacedSource):
    """Generates a recipe block by block (memory stays at one block whatever the duration)."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        pace: Pace = "fast",
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        block_frames: int | None = None,
        sink: BlockSink | None = None,
    ) -> None:
        super().__init__(pace=pace, clock=clock, sleep=sleep, block_frames=block_frames, sink=sink)
        self.recipe = recipe
        self._rate = recipe.rate
        self._channels = recipe.channels
        self._lengths = recipe.frames_per_repeat
        self._segment = 0
        self._offset = 0  # sample frames already produced of the current segment
        self._repeat = 0
        self._rng: np.random.Generator | None = None

    @property
    def description(self) -> str:
        return f"synthetic {self._rate} Hz x{self._channels}"

    def __enter__(self) -> SynthSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def _produce(self, n: int) -> npt.NDArray[np.float32] | None:
        parts: list[npt.NDArray[np.float32]] = []
        wanted = n
        while wanted > 0 and self._repeat < self.recipe.repeat:
            length = self._lengths[self._segment]
            take = min(wanted, length - self._offset)
            if take > 0:
                parts.append(self._generate(self.recipe.segments[self._segment], self._offset, take))
                self._offset += take
                wanted -= take
            if self._offset >= length:
                self._advance()
        if not parts:
            return None
        mono = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return np.repeat(mono[:, None], self._channels, axis=1)

    def _advance(self) -> None:
        self._segment += 1
        self._offset = 0
        self._rng = None
        if self._segment == len(self._lengths):
            self._segment = 0
            self._repeat += 1

    def _generate(self, seg: Segment, offset: int, n: int) -> npt.NDArray[np.float32]:
        level = 10.0 ** (seg.level_db / 20.0)
        if seg.kind == "silence":
            return np.zeros(n, dtype=np.float32)
        if seg.kind == "tone":
            t = (offset + np.arange(n, dtype=np.float64)) / self._rate
            tone: npt.NDArray[np.float32] = (level * np.sin(2.0 * np.pi * seg.hz * t)).astype(np.float32)
            return tone
        if self._rng is None:
            self._rng = np.random.default_rng(seg.seed)
        noise: npt.NDArray[np.float32] = np.clip(level * self._rng.standard_normal(n), -1.0, 1.0).astype(np.float32)
        return noise
