"""Fixed-delay resampling to 16 kHz (integer ratios: 48, 32, 96 kHz; rational: 44.1, 22.05, 88.2 kHz): every
block's output leaves with it.

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

:class:`RationalFir` does the same for a rational ratio ``up / down`` (44.1 kHz: 160 / 441; the PulseAudio
microphone opens at 44.1 kHz with ``AudioSettings.server_mic_16k`` off, where soxr HQ held 20-40 ms of every
block; by default it opens at 16 kHz and needs no resampling), with the filter designed at
``up * in_rate``: output ``n`` uses inputs up to ``floor(n * down / up)``, delay about 1.6 ms.

Pure numpy, no state outside the object. Measured here in a tight loop (``benchmarks/NOTES.md``): 48 kHz, one
correlation per polyphase branch; 44.1 kHz, two matrix products per block: ~11 us per 20 ms block and ~20 us per
100 ms block (soxr HQ ~5 and ~16 us).
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


def design_length(in_rate: int, up: int = 1) -> int:
    """Number of taps of :func:`design` (Kaiser's estimate for the transition band, made odd)."""
    transition = (STOP_HZ - PASS_HZ) / (up * in_rate)  # cycles per sample
    return math.ceil((ATTENUATION_DB - 7.95) / (14.36 * transition)) | 1


def design(in_rate: int, up: int = 1) -> npt.NDArray[np.float32]:
    """Odd-length linear-phase low-pass taps at ``up * in_rate`` for resampling ``in_rate`` to 16 kHz (sum ``up``:
    each of the ``up`` polyphase branches sums to about 1)."""
    rate = up * in_rate
    taps = design_length(in_rate, up)
    beta = 0.1102 * (ATTENUATION_DB - 8.7)
    cutoff = (PASS_HZ + STOP_HZ) / 2 / rate
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    result: npt.NDArray[np.float32] = (h / h.sum() * up).astype(np.float32)
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


def ratio_of(in_rate: int) -> tuple[int, int]:
    """(up, down): 16 kHz / ``in_rate`` as a reduced fraction (44.1 kHz: 160 / 441)."""
    g = math.gcd(SAMPLE_RATE, in_rate)
    return SAMPLE_RATE // g, in_rate // g


def supports_rational(in_rate: int) -> bool:
    """True for a rate above 16 kHz that is not an integer multiple of it (44.1, 22.05, 24 kHz ...) and whose
    polyphase branches are shorter than one period of ``down`` input samples (what :class:`RationalFir` needs)."""
    if in_rate <= SAMPLE_RATE or supports(in_rate):
        return False
    up, down = ratio_of(in_rate)
    return up > 1 and -(-design_length(in_rate, up) // up) <= down


class RationalFir:
    """Streaming resampler ``in_rate`` -> 16 kHz for a rational ratio ``up / down`` (44.1 kHz: 160 / 441) with the
    same causal linear-phase low-pass as :class:`FirDecimator`, designed at ``up * in_rate``. Not thread-safe.

    Output ``n`` uses input samples up to ``floor(n * down / up)``, so after ``E`` input samples exactly
    ``ceil(E * up / down)`` outputs are out, whatever the split into blocks (a block of a whole number of
    ``down``-sample periods, e.g. 10, 20 or 100 ms at 44.1 kHz, gives exactly its share at once), delayed by a
    constant :attr:`delay_samples` input samples (about 1.6 ms). Each period of ``down`` inputs gives ``up``
    outputs with the same branches: the outputs of a period are split into a few groups whose inputs span less than
    a period, and each group is one matrix product (BLAS) per block, a row per period. The products are summed in
    float64 and rounded to float32 once: how a BLAS orders a sum depends on the matrix's shape and the machine
    (OpenBLAS on x86-64 gave every row the same float32 bits whatever rows surrounded it; on arm64 it did not, and
    the 16-bit output then moved with the split into blocks). In float64 the products of float32 values are exact
    and a different order moves a sum by ~1e-16 relative, far below float32's resolution, so the output does not
    depend on the split into blocks (``tests/test_audio_dsp.py``, also in the emulated arm64 run); at worst a value
    lying on a float32 rounding boundary moves by its last bit, never a sample dropped or added."""

    def __init__(self, in_rate: int) -> None:
        if not supports_rational(in_rate):
            raise ValueError(f"{in_rate} Hz is not a rate RationalFir resamples")
        self.up, self.down = up, down = ratio_of(in_rate)
        h = design(in_rate, up)
        self.delay_samples = (len(h) - 1) / (2 * up)
        """Constant delay of the content, in input samples (the filter's group delay; a fraction)."""
        self._taps = taps = -(-len(h) // up)  # per branch
        padded = np.zeros(taps * up, dtype=np.float32)
        padded[: len(h)] = h
        newest = np.arange(up) * down // up  # newest input of output m of a period, from the period's start
        widest = max(g for g in range(1, up + 1) if newest[g - 1] + taps < down)  # any group of g fits in a period
        count = -(-up // widest)
        size = -(-up // count)
        self._groups: list[tuple[int, npt.NDArray[np.float64]]] = []
        """(first input from the period's start, matrix inputs x outputs) per group of a period's outputs."""
        for m0 in range(0, up, size):
            ms = np.arange(m0, min(up, m0 + size))
            lo = int(newest[m0]) - taps + 1
            matrix = np.zeros((int(newest[ms[-1]]) - lo + 1, len(ms)), dtype=np.float64)
            for column, m in enumerate(ms):
                branch = padded[(m * down) % up :: up]  # taps for inputs newest, newest - 1, ...
                row = int(newest[m]) - lo
                matrix[row - taps + 1 : row + 1, column] = branch[::-1]
            self._groups.append((lo, matrix))
        self._buf = np.zeros(taps - 1, dtype=np.float32)  # zeros before the stream, as in FirDecimator
        self._buf_start = -(taps - 1)  # input index of _buf[0]
        self._in_end = 0  # input samples received
        self._out_next = 0  # index of the next output

    def process(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Output samples made complete by ``x`` (1-D float32)."""
        up, down = self.up, self.down
        self._in_end += len(x)
        end = -(-self._in_end * up // down)
        if end <= self._out_next:
            self._buf = np.concatenate([self._buf, x]) if len(x) else self._buf
            return np.zeros(0, dtype=np.float32)
        q0, q1 = self._out_next // up, (end - 1) // up + 1  # the periods holding the new outputs
        rows = max(2, q1 - q0)  # a single row would take BLAS's vector path: keep one kind of product
        # Zeros after the input: for the inputs the last period lacks (only its outputs not yet due read them, with
        # weight 0 for the rest) and for whole rows of ``down`` samples up to the last row read.
        pad = (q0 + rows + 1) * down - self._in_end
        work = np.concatenate([self._buf, x, np.zeros(pad, dtype=np.float32)])
        periods = np.empty((rows, up), dtype=np.float32)
        column = 0
        for lo, matrix in self._groups:
            first = q0 * down + lo - self._buf_start
            width, count = matrix.shape
            # Row i: the inputs of group ``lo`` in period q0 + i (a view: row stride ``down`` >= ``width``).
            inputs = work[first : first + rows * down].reshape(rows, down)[:, :width]
            periods[:, column : column + count] = inputs.astype(np.float64) @ matrix  # rounded once, to float32
            column += count
        y = periods.ravel()[self._out_next - q0 * up : end - q0 * up]
        self._out_next = end
        keep_from = (end // up) * down - self._taps + 1  # the next period's first input of its first branch
        self._buf = work[keep_from - self._buf_start : self._in_end - self._buf_start].copy()
        self._buf_start = keep_from
        return y
