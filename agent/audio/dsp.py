"""DSP: native-rate blocks -> 16 kHz s16 mono frames on the visit timeline.

Per block: downmix (mean of the channels) -> to 16 kHz float32 (22.05, 32, 44.1, 48 kHz ...: the fixed-delay FIR
of :mod:`agent.audio.decimate`, unless ``AudioSettings.resampler`` is ``soxr``; other rates: ``soxr.ResampleStream``
HQ) -> int16 (round, clip) -> fixed frames of ``AudioSettings.frame_ms``. Timeline index 0 is the first captured
sample; each frame carries its index and the capture time of its first sample (interpolated from the block capture
times).

Guarantees:

- The output does not depend on how the input is split into blocks (both resamplers are chunking-invariant and
  everything after them works on the concatenated stream); tests check this sample for sample.
- ``flush()`` at the end of the stream drains the resampler and emits the tail. The last frame is emitted SHORT
  (fewer samples than a full frame, never padded), so the timeline ends exactly where the audio ends:
  output length = round(input frames x 16000 / rate) (+- 1 sample).
- Capture times account for the resampler's constant delay (the FIR's; soxr's is compensated inside soxr).
- ``Block.missed > 0`` (samples lost at the source) inserts that much silence before the block, so the timeline
  stays equal to wall time, and records a :class:`Gap` (timeline start, end) in :attr:`Dsp.gaps` for the stream
  to announce.

The hot path is whole-block numpy; the only per-frame Python is creating the Frame objects (one pass over the
block's bytes, capture times computed inline).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from agent import SAMPLE_RATE
from agent.audio.decimate import FirDecimator, RationalFir, supports, supports_rational
from agent.audio.types import Block, Frame
from agent.settings import AudioSettings

if TYPE_CHECKING:
    import soxr

Quality = Literal["HQ", "VHQ"]
_SILENCE_CHUNK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Gap:
    """Timeline samples (16 kHz) that were filled with silence because the source lost them."""

    start: int
    """Timeline index of the first missing sample."""
    end: int
    """Timeline index one past the last missing sample."""
    reason: str = ""
    """Empty: the source lost the audio. ``paused``: a privacy pause (:mod:`agent.visit_pause`), silence on purpose."""


def to_int16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Float in [-1, 1] to s16 (scale 32768, round half to even, clip) — exact for audio that came from s16."""
    # float32 is enough: scaling by a power of two is exact and rint of a float32 is exact (checked bit for bit
    # against the float64 version); in place, it saves three temporaries per block.
    scaled = np.multiply(x, 32768.0, dtype=np.float32)
    np.rint(scaled, out=scaled)
    # = np.clip, without its Python-level wrappers per block; Python floats are weak scalars (stay float32) and
    # cheaper to pass than np.float32 objects
    np.minimum(scaled, 32767.0, out=scaled)
    np.maximum(scaled, -32768.0, out=scaled)
    clipped: npt.NDArray[np.int16] = scaled.astype("<i2")
    return clipped


def downmix(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(frames, channels) or (frames,) -> (frames,) float32, mean of the channels."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return samples.reshape(-1).astype(np.float32, copy=False)  # a view of a contiguous mono block
    if samples.shape[1] == 2 and samples.dtype == np.float32:
        # (left + right) / 2 gives the same float32 values as mean() at ~1/20 of its cost per block
        stereo: npt.NDArray[np.float32] = (samples[:, 0] + samples[:, 1]) * np.float32(0.5)
        return stereo.astype(np.float32, copy=False)
    mono: npt.NDArray[np.float32] = samples.mean(axis=1, dtype=np.float32)
    return mono


class Dsp:
    """Stateful converter for one stream (one visit). Not thread-safe: call from one thread."""

    def __init__(self, in_rate: int, settings: AudioSettings, *, quality: Quality = "HQ") -> None:
        self.in_rate = in_rate
        self.frame_samples = SAMPLE_RATE * settings.frame_ms // 1000
        self.gaps: list[Gap] = []
        self.lost_samples = 0
        """Timeline samples (16 kHz) filled with silence so far: the sum of :attr:`gaps` (the visit's one count)."""
        self._resampler: soxr.ResampleStream | None = None
        self._fir: FirDecimator | RationalFir | None = None
        self._delay_s = 0.0
        if settings.resampler == "fir" and (supports(in_rate) or supports_rational(in_rate)):
            self._fir = FirDecimator(in_rate) if supports(in_rate) else RationalFir(in_rate)
            self._delay_s = self._fir.delay_samples / in_rate
        elif in_rate != SAMPLE_RATE:  # soxr at ratio 1 is a no-op; skipping it keeps 16 kHz input bit-exact
            import soxr  # only here: the FIR rates and 16 kHz never load it (issue 11, daemon RSS)

            self._resampler = soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality=quality)
        self._in_pos = 0  # input frames consumed (inserted silence included)
        self._anchors: deque[tuple[int, float]] = deque()  # (input position, capture time) per block
        self._pending = np.zeros(0, dtype="<i2")  # resampled samples not yet framed
        self._out_pos = 0  # timeline index of _pending[0]
        self._flushed = False

    @property
    def delay_s(self) -> float:
        """Seconds the resampler delays the content (subtracted from the capture times)."""
        return self._delay_s

    @property
    def timeline_position(self) -> int:
        """Timeline index one past the last emitted sample."""
        return self._out_pos

    def process(self, block: Block) -> list[Frame]:
        """Frames completed by ``block`` (may be none: the resampler and the framer buffer a little)."""
        if self._flushed:
            raise RuntimeError("Dsp.process after flush")
        out = self._insert_silence(block.missed, block.capture_time) if block.missed > 0 else []
        self._anchors.append((self._in_pos, block.capture_time))
        mono = downmix(block.samples)
        self._in_pos += len(mono)
        out.append(self._resample(mono, last=False))
        return self._frames(out, final=False)

    def flush(self) -> list[Frame]:
        """End of stream: drain the resampler; the last frame may be short. Further process() is an error."""
        if self._flushed:
            return []
        self._flushed = True
        return self._frames([self._resample(np.zeros(0, dtype=np.float32), last=True)], final=True)

    def _insert_silence(self, missed: int, capture_time: float) -> list[npt.NDArray[np.int16]]:
        start = round(self._in_pos * SAMPLE_RATE / self.in_rate)
        end = round((self._in_pos + missed) * SAMPLE_RATE / self.in_rate)
        self.gaps.append(Gap(start, end))
        self.lost_samples += end - start
        self._anchors.append((self._in_pos, capture_time - missed / self.in_rate))
        self._in_pos += missed
        chunk = max(1, round(self.in_rate * _SILENCE_CHUNK_SECONDS))
        parts = []
        for done in range(0, missed, chunk):
            parts.append(self._resample(np.zeros(min(chunk, missed - done), dtype=np.float32), last=False))
        return parts

    def _resample(self, mono: npt.NDArray[np.float32], *, last: bool) -> npt.NDArray[np.int16]:
        if self._fir is not None:
            return to_int16(self._fir.process(mono))
        if self._resampler is None:
            return to_int16(mono)
        return to_int16(self._resampler.resample_chunk(mono, last=last))

    def _frames(self, parts: list[npt.NDArray[np.int16]], *, final: bool) -> list[Frame]:
        if len(parts) == 1 and not len(self._pending):  # the usual block: whole frames in, nothing left over
            pcm = parts[0]
        else:
            pcm = np.concatenate([self._pending, *parts]) if parts else self._pending
        n = self.frame_samples
        full = len(pcm) // n
        cut = full * n
        frames = self._frames_of(pcm[:cut].tobytes(), n) if full else []
        self._pending = pcm[cut:]
        if final and len(self._pending):
            frames.extend(self._frames_of(self._pending.tobytes(), len(self._pending)))
            self._pending = self._pending[:0]
        return frames

    def _frames_of(self, data: bytes, n: int) -> list[Frame]:
        """``data`` (s16le) cut into frames of ``n`` samples (the last one may be shorter), from :attr:`_out_pos`,
        each stamped with the capture time of its first sample."""
        frames = []
        anchors = self._anchors
        in_rate, delay = self.in_rate, self._delay_s
        start = self._out_pos
        step = 2 * n
        size = len(data)
        for offset in range(0, size, step):
            position = start * in_rate / SAMPLE_RATE
            while len(anchors) > 1 and anchors[1][0] <= position:
                anchors.popleft()
            anchor_pos, anchor_time = anchors[0] if anchors else (position, delay)
            capture_time = anchor_time + (position - anchor_pos) / in_rate - delay
            frames.append(Frame(start, data[offset : offset + step], capture_time))
            start += n if offset + step <= size else (size - offset) // 2
        self._out_pos = start
        return frames
