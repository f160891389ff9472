"""Where audio comes from: :func:`open_source` turns a spec string into a :class:`~agent.audio.types.Source`.

Specs (``AudioSettings.source``):

- ``mic``, ``mic:<name>``, ``mic:<name>@<rate>x<channels>``: a PortAudio input device chosen by name substring
  (see :mod:`agent.audio.mic`); sounddevice is imported only for these.
- ``file:<path>``: a PCM WAV file (see :mod:`agent.audio.wavfile` for what is supported), delivered in blocks of
  20 ms, paced per ``AudioSettings.pace`` (``realtime`` or ``fast``).
- ``synth:<recipe>``: deterministic synthetic audio (see :mod:`agent.audio.synth` for the grammar).

Usage (the recorder's way: :meth:`agent.recorder.Recorder.run_on_loop`)::

    with open_source(settings.audio.source, settings.audio) as source:
        fd = source.handoff.wake_fd()      # readable on every block and at the end
        ...                                # loop.add_reader(fd, drain); drain: source.handoff.get_nowait()

Clock and sleep are injectable (``clock=``, ``sleep=``) so paced sources run instantly under a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt

from agent.audio.mic import MicSource, MicSpec, parse_mic_spec
from agent.audio.paced import Clock, PacedSource, Sleep
from agent.audio.types import BlockSink, Source
from agent.errors import ConfigError
from agent.settings import AudioSettings

if TYPE_CHECKING:
    from agent.audio.wavfile import WavInfo

__all__ = ["FileSource", "MicSource", "open_source"]


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
        sink: BlockSink | None = None,
    ) -> None:
        super().__init__(pace="realtime" if pace == "realtime" else "fast", clock=clock, sleep=sleep,
                         block_frames=block_frames, sink=sink)  # fmt: skip
        from agent.audio.wavfile import decode, open_wav  # file and synthetic sources: imported only for their specs

        self._decode = decode
        self.path = path
        self._file: BinaryIO | None
        self._file, self.info = open_wav(path)  # errors surface at open time, before any capture starts
        self._rate = self.info.sample_rate
        self._channels = self.info.channels

    @property
    def description(self) -> str:
        return f"WAV file {self._rate} Hz x{self._channels}"

    def __enter__(self) -> FileSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()
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
        samples = self._decode(raw, info)
        return samples if len(samples) else None


def open_source(
    spec: str,
    settings: AudioSettings,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    block_frames: int | None = None,
    sink: BlockSink | None = None,
    pin: tuple[int, int] | None = None,
) -> Source:
    """Create (not yet start) the source for ``spec``; use it as a context manager.

    ``block_frames`` sets the block length of file and synthetic sources (default 20 ms at their rate, 1 s when
    paced ``fast``).
    ``sink`` takes the blocks instead of the source's hand-off (the daemon's device watch; a microphone is then read
    at two paces, see :mod:`agent.audio.mic_paced`); ``pin`` = (rate, channels) opens a microphone at those (a
    device reopened after a loss must fit the running pipeline).
    Raises ConfigError for an unknown spec, InputError for a bad file or recipe, DeviceError for microphone
    problems (PortAudio missing, no such device).
    """
    if spec == "mic" or spec.startswith(("mic:", "mic@")):
        mic = parse_mic_spec(spec)
        if pin is not None:
            mic = MicSpec(mic.name, *pin)
        return MicSource(mic, handoff_seconds=settings.handoff_seconds, clock=clock,
                         block_ms=settings.capture_block_ms, sink=sink, paced=sink is not None,
                         server_16k=settings.server_mic_16k)  # fmt: skip
    if spec.startswith("file:"):
        return FileSource(spec[5:], pace=settings.pace, clock=clock, sleep=sleep, block_frames=block_frames,
                          sink=sink)  # fmt: skip
    if spec.startswith("synth:"):
        from agent.audio.synth import SynthSource, parse_recipe

        return SynthSource(parse_recipe(spec[6:]), pace=settings.pace, clock=clock, sleep=sleep,
                           block_frames=block_frames, sink=sink)  # fmt: skip
    raise ConfigError(f"unknown audio source {spec!r}: use mic, mic:<name>, file:<path.wav> or synth:<recipe>")


Opener = Callable[[tuple[int, int] | None, BlockSink], Source]
"""``open(pin, sink)``: opens (not enters) the configured source, pinned to (rate, channels) unless None,
delivering its blocks to ``sink`` (the daemon's :class:`agent.device_watch.Capture`)."""


def source_opener(audio: AudioSettings) -> Opener:
    """Opens the configured source; a microphone reopened after a loss is pinned to its first rate and channels."""

    def open_(pin: tuple[int, int] | None, sink: BlockSink) -> Source:
        return open_source(audio.source, audio, sink=sink, pin=pin)

    return open_
