"""Fixed-delay decimation to 16 kHz for integer ratios (48 kHz, 32 kHz): every block's output leaves with it.

``soxr.ResampleStream`` works in internal blocks of its own: 100 ms of 48 kHz input comes out as 1468, 1468, ...,
1958 samples, and at 20 ms blocks as 0, 490, 0, 489, ... So the tail of every capture block (and the partial
20 ms frame it leaves) waits for the next block, which put the low-latency profile's p95 capture-to-wire latency
over 60 ms (``benchmarks/RESULTS.md``).

:class:`FirDecimator` is a causal linear-phase FIR low-pass (windowed sinc, Kaiser window, 80 dB stop band,
pass band to 7.2 kHz, stop band from 8.8 kHz: aliases fold only above 7.2 kHz) evaluated only at the kept output
phases. Output sample ``n`` uses input samples up to ``ratio * n``, so a block of ``k * ratio`` input samples
gives exactly ``k`` output samples at once, and the content is delayed by a constant :attr:`delay_samples` input
samples (about 1.5 ms at 48 kHz), which the DSP subtracts from the capture times. Output length over a stream is
``ceil(input / ratio)``, and it does not depend on how the input is split into blocks (the filter state is the
last ``taps - 1`` input samples).

Pure numpy, no state outside the object; per block one correlation per polyphase branch (~80 us for 100 ms of
48 kHz here, soxr HQ ~90 us).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent import SAMPLE_RATE

PASS_HZ = 7200.0
"""Upper edge of the pass band in Hz."""
STOP_HZ = 8800.0
"""Lower edge of the stop band in Hz (folds onto 7.2 kHz after decimation to 16 kHz)."""
ATTENUATION_DB = 80.0
"""Stop-band attenuation the Kaiser design aims for, in dB."""


def supports(in_rate: int) -> bool:
    """True when ``in_rate`` is an integer multiple (2 or more) of 16 kHz."""
    return in_rate > SAMPLE_RATE and in_rate % SAMPLE_RATE == 0


def design(in_rate: int) -> npt.NDArray[np.float32]:
    """Odd-length linear-phase low-pass taps (sum 1) for decimating ``in_rate`` to 16 kHz."""
    transition = (STOP_HZ - PASS_HZ) / in_rate  # cycles per sample
    taps = math.ceil((ATTENUATION_DB - 7.95) / (14.36 * transition)) | 1  # Kaiser's estimate, made odd
    beta = 0.1102 * (ATTENUATION_DB - 8.7)
    cutoff = (PASS_HZ + STOP_HZ) / 2 / in_rate
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    result: npt.NDArray[np.float32] = (h / h.sum()).astype(np.float32)
    return result


class FirDecimator:
    """Streaming decimator ``in_rate`` -> 16 kHz; see the module docstring. Not thread-safe."""

    def __init__(self, in_rate: int) -> None:
        if not supports(in_rate):
            raise ValueError(f"{in_rate} Hz is not an integer multiple of {SAMPLE_RATE} Hz")
        self.ratio = in_rate // SAMPLE_RATE
        self._h = design(in_rate)
        taps = len(self._h)
        reversed_taps = self._h[::-1]
        self._phases = [np.ascontiguousarray(reversed_taps[p :: self.ratio]) for p in range(self.ratio)]
        self.delay_samples = (taps - 1) // 2
        """Constant delay of the content, in input samples (the filter's group delay)."""
        self._buf = np.zeros(taps - 1, dtype=np.float32)  # zeros before the stream: output 0 is x[0]'s ramp
        self._phase = 0  # input samples to skip in the next block before the next kept output

    def process(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Output samples made complete by ``x`` (1-D float32)."""
        taps, ratio = len(self._h), self.ratio
        buf = np.concatenate([self._buf, x]) if len(x) else self._buf
        # Output n is at buffer index (taps - 1) + phase + ratio * i, using the taps - 1 samples before it.
        first = taps - 1 + self._phase
        count = (len(buf) - first + ratio - 1) // ratio if len(buf) > first else 0
        y = np.zeros(count, dtype=np.float32)
        if count:
            # y[i] = sum_j buf[phase + ratio * i + j] * h[taps - 1 - j], split by j % ratio (polyphase): one
            # correlation per phase at the output rate instead of a full-rate convolution (~2.5x cheaper).
            for p, taps_p in enumerate(self._phases):
                lane = buf[self._phase + p :: ratio][: count + len(taps_p) - 1]
                y += np.correlate(lane, taps_p, mode="valid")
        self._phase = first + ratio * count - len(buf)  # where the next kept output falls in the next block
        self._buf = buf[len(buf) - (taps - 1) :].copy()
        return y
