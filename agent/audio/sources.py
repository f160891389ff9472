"""Where audio comes from: :func:`open_source` turns a spec string into a :class:`~agent.audio.types.Source`.

Specs (``AudioSettings.source``):

- ``mic``, ``mic:<name>``, ``mic:<name>@<rate>x<channels>``: a PortAudio input device chosen by name substring
  (see :mod:`agent.audio.mic`); sounddevice is imported only for these.
- ``file:<path>``: a PCM WAV file (see :mod:`agent.audio.wavfile` for what is supported), delivered in blocks of
  20 ms, paced per ``AudioSettings.pace`` (``realtime`` or ``fast``).
- ``synth:<recipe>``: deterministic synthetic audio (see :mod:`agent.audio.synth` for the grammar).

Usage::

    with open_source(settings.audio.source, settings.audio) as source:
        while (block := source.read()) is not None:
            ...

Clock and sleep are injectable (``clock=``, ``sleep=``) so paced sources run instantly under a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from agent.audio.mic import MicSource, parse_mic_spec
from agent.audio.paced import Clock, PacedSource, Sleep
from agent.audio.synth import SynthSource, parse_recipe
from agent.audio.types import Source
from agent.audio.wavfile import WavInfo, decode, open_wav
from agent.errors import ConfigError
from agent.settings import AudioSettings

__all__ = ["FileSource", "MicSource", "SynthSource", "open_source"]


class FileSource(PacedSource):
    """A WAV file read block by block (the file stays open between ``__enter__`` and ``__exit__``)."""

    def __init__(
        self,
        path: str,
        *,
        pace: str = "fast",
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        block_frames: int | None = None,
    ) -> None:
        super().__init__(pace="realtime" if pace == "realtime" else "fast", clock=clock, sleep=sleep,
                         block_frames=block_frames)
        self.path = path
        self._file: BinaryIO | None
        self._file, self.info = open_wav(path)  # errors surface at open time, before any capture starts
        self._rate = self.info.sample_rate
        self._channels = self.info.channels

    @property
    def description(self) -> str:
        return f"WAV file {self._rate} Hz x{self._channels}"

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def _produce(self, n: int) -> npt.NDArray[np.float32] | None:
        info: WavInfo = self.info
        left = info.frames - self.position
        if self._file is None or left <= 0:
            return None
        raw = self._file.read(min(n, left) * info.frame_bytes)
        samples = decode(raw, info)
        return samples if len(samples) else None


def open_source(
    spec: str,
    settings: AudioSettings,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    block_frames: int | None = None,
) -> Source:
    """Create (not yet start) the source for ``spec``; use it as a context manager.

    ``block_frames`` sets the block length of file and synthetic sources (default 20 ms at their rate, 1 s when
    paced ``fast``).
    Raises ConfigError for an unknown spec, InputError for a bad file or recipe, DeviceError for microphone
    problems (PortAudio missing, no such device).
    """
    if spec == "mic" or spec.startswith(("mic:", "mic@")):
        return MicSource(parse_mic_spec(spec), handoff_seconds=settings.handoff_seconds, clock=clock,
                         block_ms=settings.capture_block_ms)  # fmt: skip
    if spec.startswith("file:"):
        return FileSource(spec[5:], pace=settings.pace, clock=clock, sleep=sleep, block_frames=block_frames)
    if spec.startswith("synth:"):
        return SynthSource(parse_recipe(spec[6:]), pace=settings.pace, clock=clock, sleep=sleep,
                           block_frames=block_frames)
    raise ConfigError(f"unknown audio source {spec!r}: use mic, mic:<name>, file:<path.wav> or synth:<recipe>")


def source_opener(audio: AudioSettings) -> Callable[[int | None, int | None], Source]:
    """Opens the configured source; a microphone reopened after a loss is pinned to its first rate and channels."""

    def open_(rate: int | None, channels: int | None) -> Source:
        spec = audio.source
        if rate is not None and (spec == "mic" or spec.startswith(("mic:", "mic@"))):
            name = parse_mic_spec(spec).name
            return MicSource(parse_mic_spec("mic" + (f":{name}" if name else "") + f"@{rate}x{channels}"),
                             handoff_seconds=audio.handoff_seconds, block_ms=audio.capture_block_ms)  # fmt: skip
        return open_source(spec, audio)

    return open_
