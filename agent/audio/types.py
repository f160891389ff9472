"""Small value types shared by the audio path, the archive and the stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from agent.audio.handoff import Handoff

BlockSink = Callable[[npt.NDArray[np.float32], float, int], None]
"""Where a producer puts each block: ``sink(samples, capture_time, missed)``, called on the producer's thread
(PortAudio's callback or a pacing thread); must never block for long."""


@dataclass(frozen=True, slots=True)
class Block:
    """A block of captured audio at the source's native rate, as the source delivered it."""

    samples: npt.NDArray[np.float32]
    """Shape (frames, channels), float32 in [-1, 1]."""
    capture_time: float
    """time.monotonic() seconds when the first sample of the block was captured (estimated for files)."""
    missed: int = 0
    """Source-rate sample frames lost just before this block (hand-off overflow, device loss); 0 normally."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A fixed-length piece of the visit timeline: 16 kHz mono s16le."""

    start: int
    """Timeline index (samples at 16 kHz since the visit's first captured sample) of the first sample."""
    pcm: bytes
    """s16le mono 16 kHz; len(pcm) // 2 samples."""
    capture_time: float = 0.0
    """time.monotonic() seconds when the first sample was captured (for capture-to-wire latency)."""

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def end(self) -> int:
        """Timeline index one past the last sample."""
        return self.start + len(self.pcm) // 2


class FixedFormat:
    """``sample_rate`` and ``channels`` of a source whose format is fixed once it is made (every source here):
    the subclass sets ``_rate`` (Hz) and ``_channels`` in its ``__init__``."""

    _rate: int
    _channels: int

    @property
    def sample_rate(self) -> int:
        """Native rate in Hz."""
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels


@runtime_checkable
class Paced(Protocol):
    """A source that can be read more slowly between visits (the daemon's microphone, :mod:`agent.audio.mic_paced`)."""

    def set_idle(self, idle: bool) -> None:
        """True: no visit needs the blocks soon (fewer, batched wake-ups); False: each block as it comes."""
        ...


class Source(Protocol):
    """Where audio comes from: microphone, WAV file or synthetic generator.

    Used as a context manager (``__enter__`` starts the producer). Every block arrives through :attr:`handoff`
    (:class:`~agent.audio.handoff.Handoff`), which the producer closes at the end of the stream (or fails with
    its error); ``stop`` may be called from any thread and closes it soon after.
    """

    @property
    def description(self) -> str:
        """Human description for logs, e.g. "mic 'USB Audio' 48000 Hz x2" (never patient data)."""
        ...

    @property
    def sample_rate(self) -> int:
        """Native rate in Hz."""
        ...

    @property
    def channels(self) -> int: ...

    @property
    def handoff(self) -> Handoff: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...

    def check_alive(self) -> None:
        """Raise DeviceError if the device stopped (the consumer asks when no block came for a while)."""
        ...

    def stop(self) -> None: ...
