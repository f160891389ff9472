"""The daemon's microphone read at two paces from ONE PortAudio stream (issue 11): no stream switch, no lost sample.

A callback stream wakes PortAudio's callback thread (and, through ALSA's PulseAudio plugin, the plugin's client
thread ~4 times) for every block, visit or not: ~15 of the idle daemon's ~21 CPU-s per audio-hour. Here the stream
is opened for blocking reads with a host buffer of :data:`HOST_BUFFER_S` whose ALSA period is still one block, so
the audio arrives exactly as before, and one thread reads it:

- between visits (``idle``): every :data:`IDLE_READ_S` it reads every whole block waiting, in one call, and hands
  them on one by one (one wake-up of a Python thread instead of ten);
- during a visit: block by block, each as soon as the device has it (as a callback would).

Switching pace only changes how much the next read asks for; the samples come from the same stream in order, so a
visit's start loses and repeats nothing, and :meth:`PacedReader.set_idle` wakes an idle reader at once: what waited
is handed on immediately. Capture times: the last sample of a read is "now"; the blocks before it are spaced by
their length. An input overflow is reported by the read (the host buffer overran) and counted by the owner.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IDLE_READ_S = 1.0
"""Seconds between reads between visits."""
HOST_BUFFER_S = 2.0
"""Seconds of audio PortAudio's host buffer holds (``latency``): twice the idle read period, the slack for a late
reader. The pulse plugin drops what overruns it without an overflow flag (measured), so keep this margin."""
MAX_PACED_PERIODS = 100
"""Blocks needing more ALSA periods than this (:func:`periods_for`; 100 is 40 ms blocks, the low-latency profile)
keep the callback stream. The ALSA pulse plugin and snd-usb-audio both allow up to 1024 periods; 100 is the most
measured and tested (``tests/test_mic_paced_pulse.py``). A device that allows fewer gets longer periods from
PortAudio (its blocks then come in pairs: latency, not lost samples)."""
DEFAULT_PERIODS = 4
"""PortAudio's own ALSA period count, restored after each paced open."""
JOIN_S = 5.0
"""Seconds to wait for the reader thread at close (a read returns within a block)."""

Deliver = Callable[[np.ndarray[Any, Any], float, bool], None]
"""(samples of whole blocks, capture time of the read's first sample, input overflowed) on the reader thread."""


def paced_fits(block_s: float) -> bool:
    return periods_for(block_s) <= MAX_PACED_PERIODS


def periods_for(block_s: float) -> int:
    """ALSA periods so that PortAudio's period (its pulse ``fragsize``) stays one block at HOST_BUFFER_S latency:
    PortAudio spreads the latency over half the periods (measured: 1.0 s at 20 periods and 2.0 s at 40 give
    100 ms fragments; 1.0 s at the default 4 gives 200 ms ones, and a visit's blocks would come in pairs)."""
    return max(DEFAULT_PERIODS, math.ceil(2 * HOST_BUFFER_S / block_s - 1e-9))


def open_paced_stream(sd: ModuleType, **kw: Any) -> Any:
    """A blocking-read ``sd.InputStream`` (no callback) with the host buffer above; ``kw``: device, rate..."""
    set_periods = _alsa_set_periods(sd)
    block_s = kw["blocksize"] / kw["samplerate"]
    if set_periods is not None:
        set_periods(periods_for(block_s))
    try:
        return sd.InputStream(latency=HOST_BUFFER_S, **kw)
    finally:
        if set_periods is not None:
            set_periods(DEFAULT_PERIODS)


def _alsa_set_periods(sd: ModuleType) -> Callable[[int], Any] | None:
    """PortAudio's ``PaAlsa_SetNumPeriods`` (ALSA host API; a global setting read at each open), or None."""
    try:
        lib = ctypes.CDLL(sd._libname)
        fn: Callable[[int], Any] = lib.PaAlsa_SetNumPeriods
    except (OSError, AttributeError):
        return None
    return fn


def reader_into(sd: ModuleType, stream: Any) -> Callable[[np.ndarray[Any, Any]], bool]:
    """``read_into(array)``: fill ``array`` (frames x channels, the stream's dtype) from ``stream``; True if PortAudio
    reports an input overflow since the last read. ``Pa_ReadStream`` straight into the array the block will be
    (sounddevice's ``read`` allocates, copies and checks in Python: a visit's blocks come ten times a second, and the
    loop the block wakes waits for this thread to let go of the GIL)."""
    lib, ffi, check, ptr = sd._lib, sd._ffi, sd._check, stream._ptr
    overflowed = lib.paInputOverflowed

    def read_into(array: np.ndarray[Any, Any]) -> bool:
        err = lib.Pa_ReadStream(ptr, ffi.from_buffer(array), len(array))
        if err == overflowed:
            return True
        check(err)
        return False

    return read_into


class PacedReader:
    """The thread that reads a blocking stream; ``deliver`` gets whole blocks, ``error`` what ended it."""

    def __init__(self, stream: Any, read_into: Callable[[np.ndarray[Any, Any]], bool], blocksize: int,
                 deliver: Deliver, clock: Callable[[], float], rate: int) -> None:  # fmt: skip
        self._stream = stream
        self._read_into = read_into
        self._shape = (blocksize, int(stream.channels))
        self._dtype = np.dtype(stream.dtype)
        self._blocksize = blocksize
        self._deliver = deliver
        self._clock = clock
        self._rate = rate
        self._idle = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mic-reader", daemon=True)

    def start(self) -> None:
        self._stream.start()
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def set_idle(self, idle: bool) -> None:
        """Any thread. Leaving idle wakes the reader: the blocks waiting go out now, then each as it comes."""
        self._idle = idle
        if not idle:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        self.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)
            if self._thread.is_alive():
                log.warning("the microphone reader did not stop within %.0f s", JOIN_S)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._idle:
                    self._read_waiting()
                else:
                    self._read_each()
        except Exception as exc:  # kept for check_alive (PortAudioError: device lost); the owner reports it
            self.error = exc

    def _read_each(self) -> None:
        """A visit: block by block until idle or stopped. Everything per block is a local (issue 11: this loop
        runs ten times a second on a thread whose caches are cold at each wake-up)."""
        read_into, deliver, clock, empty = self._read_into, self._deliver, self._clock, np.empty
        shape, dtype, stop = self._shape, self._dtype, self._stop
        length = self._blocksize / self._rate
        nxt = empty(shape, dtype)  # the next block's array, made before a block is handed on
        while not (self._idle or stop.is_set()):
            samples = nxt
            overflowed = read_into(samples)
            now = clock()
            nxt = empty(shape, dtype)
            deliver(samples, now - length, overflowed)

    def _read_waiting(self) -> None:
        """Between visits: after the pause, every whole block waiting, in one read."""
        frames = self._next_read()
        if frames:
            samples = np.empty((frames, self._shape[1]), self._dtype)
            overflowed = self._read_into(samples)
            self._deliver(samples, self._clock() - frames / self._rate, overflowed)

    def _next_read(self) -> int:
        """Frames to read next (0: none yet): all whole blocks waiting (after the pause)."""
        self._wake.wait(IDLE_READ_S)
        self._wake.clear()
        if self._stop.is_set():
            return 0
        waiting = int(self._stream.read_available)
        return waiting - waiting % self._blocksize
