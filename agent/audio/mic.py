"""Microphone source through PortAudio (``sounddevice``), the only module that touches it.

``sounddevice`` is imported lazily, so everything else works on machines without the system PortAudio library.
The device is chosen by NAME (a case-insensitive substring of the PortAudio device name; first match wins,
exact matches first), never by index, because indices change when USB devices come and go. A sound server's device
(ALSA ``pulse``/``pipewire``, ``default`` routed to one) opens at 16 kHz mono, any other at its native (default)
rate and channel count (at most 2), unless the spec overrides them (:mod:`agent.audio.mic_format`)::

    mic                      the system's default input device
    mic:<name>               first input device whose name contains <name>
    mic:<name>@48000x1       ... opened at 48000 Hz, 1 channel (for tests and IT; "@48000": channels as above)
    mic@44100x2              default device, rate and channels overridden

The PortAudio callback only copies the block (once), stamps its capture time (``time.monotonic`` based: callback
time minus the block's duration) and hands it to a bounded drop-oldest :class:`~agent.audio.handoff.Handoff`, or to
the ``sink`` given instead (the daemon's :mod:`agent.device_watch`, which forwards it to a visit's hand-off on the
same thread: no second thread, no second buffer).
Status flags are counted, never ignored; on an input overflow the samples lost are estimated from the capture
clock and reported as ``Block.missed`` so the timeline stays equal to wall time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from agent.audio.alsa_scan import hide_playback_only_pcms, pcm_type, release_scan_plugins
from agent.audio.handoff import Handoff
from agent.audio.mic_format import MAX_CHANNELS, DeviceFacts, needs_pcm_type, open_format
from agent.audio.mic_paced import PacedReader, open_paced_stream, paced_fits, reader_into
from agent.audio.paced import Clock
from agent.audio.types import BlockSink, FixedFormat
from agent.errors import DeviceError

PORTAUDIO_MISSING = "PortAudio library not found: install libportaudio2 (apt-get install libportaudio2)"

_OVERRIDE = re.compile(r"@(\d+)(?:x(\d+))?$")


@dataclass(frozen=True, slots=True)
class InputDevice:
    name: str
    default_rate: int
    """Hz."""
    channels: int
    """Maximum input channels the device offers."""
    opens_at: tuple[int, int]
    """(Hz, channels) ``mic:<name>`` opens it at with ``AudioSettings.server_mic_16k`` on (the default)."""


@dataclass(frozen=True, slots=True)
class MicSpec:
    name: str | None
    """Device name substring; None: the default input device."""
    rate: int | None = None
    """Override in Hz; None: 16 kHz for a sound server's device, else the device's default rate."""
    channels: int | None = None
    """Override; None: 1 for a sound server's device, else the device's channel count capped at 2."""


@dataclass
class MicStats:
    """Counters of one microphone stream (written by the callback thread; ints, so reads are safe)."""

    blocks: int = 0
    """Blocks delivered by PortAudio."""
    status_flags: int = 0
    """Callbacks that carried any PortAudio status flag."""
    input_overflows: int = 0
    """Callbacks flagged input_overflow (the device dropped samples before we saw them)."""
    estimated_lost: int = 0
    """Source-rate sample frames estimated lost in input overflows."""
    flags_seen: set[str] = field(default_factory=set)


def parse_mic_spec(spec: str) -> MicSpec:
    """Parse ``mic[:NAME][@RATE[xCHANNELS]]``."""
    rest = spec[3:]
    rate = channels = None
    m = _OVERRIDE.search(rest)
    if m:
        rate, channels = int(m.group(1)), int(m.group(2)) if m.group(2) else None
        rest = rest[: m.start()]
    name = rest[1:] if rest.startswith(":") else None
    if rest and not rest.startswith(":"):
        raise DeviceError(f"bad microphone spec {spec!r}; use mic, mic:<name> or mic:<name>@<rate>x<channels>")
    if channels is not None and not 1 <= channels <= MAX_CHANNELS:
        raise DeviceError(f"bad channel count {channels} in {spec!r}: 1 or 2")
    return MicSpec(name or None, rate, channels)


def import_sounddevice(refresh: bool = False) -> ModuleType:
    """The sounddevice module; DeviceError if PortAudio is missing. ``refresh`` re-scans devices."""
    with _logging_held():  # the import initialises PortAudio too
        scanned = "sounddevice" not in sys.modules
        if scanned:
            hide_playback_only_pcms()  # the scan would load a52's libavcodec chain, which stays (~3 MB)
        try:
            import sounddevice
        except OSError:  # sounddevice raises OSError("PortAudio library not found") at import
            raise DeviceError(PORTAUDIO_MISSING) from None
        except Exception as exc:  # its import initialises PortAudio: PortAudioError (defined by that import)
            if type(exc).__module__ != "sounddevice":
                raise
            raise _portaudio_failed(exc) from exc
        if refresh and not scanned:  # the import itself has just scanned
            # PortAudio scans devices once at initialisation; re-initialise to see devices added since (only
            # done when no stream of ours is open).
            if sounddevice._initialized:  # not after a re-initialisation that failed
                sounddevice._terminate()  # also frees alsa-lib's configuration
            hide_playback_only_pcms()
            try:
                sounddevice._initialize()
            except sounddevice.PortAudioError as exc:
                raise _portaudio_failed(exc) from exc
        if scanned or refresh:
            release_scan_plugins()  # the scan's ALSA plugins (~10 MB); the device list stays
    module: ModuleType = sounddevice
    return module


def _portaudio_failed(exc: Exception) -> DeviceError:
    """PortAudio's start-up failure (a PortAudioError) as a DeviceError a person can act on."""
    return DeviceError(f"PortAudio could not start ({exc.args[0] if exc.args else exc}); this is usually a broken "
                       "ALSA configuration: check ~/.asoundrc and /etc/asound.conf (ALSA's own messages above "
                       "name the file and line)")


@contextlib.contextmanager
def _logging_held() -> Iterator[None]:
    """Hold every logging handler's lock: ``sounddevice._initialize`` (also run by its import) points fd 2 at
    /dev/null while PortAudio scans (40 ms here), and a line another thread logs meanwhile would vanish (the daemon
    lost its "watchdog pings stopped" line that way while reopening a lost microphone). Logging threads wait
    instead."""
    handlers = [h for h in logging.getLogger().handlers if h.lock is not None]
    for handler in handlers:
        handler.acquire()
    try:
        yield
    finally:
        for handler in reversed(handlers):
            handler.release()


def list_input_devices(refresh: bool = True) -> list[InputDevice]:
    """Input devices PortAudio offers: name, default rate (Hz), channel count and the format the agent opens."""
    sd = import_sounddevice(refresh)
    found = []
    for d in sd.query_devices():
        if d["max_input_channels"] > 0:
            facts = device_facts(sd, d, lookup=True)
            found.append(InputDevice(str(d["name"]), facts.default_rate, facts.max_channels,
                                     open_format(None, None, facts)))  # fmt: skip
    return found


def device_facts(sd: ModuleType, info: dict[str, Any], *, lookup: bool) -> DeviceFacts:
    """What :func:`~agent.audio.mic_format.open_format` needs of PortAudio's ``info`` for a device; the ALSA PCM
    type only if ``lookup`` (it loads alsa-lib's configuration)."""
    host_api = str(sd.query_hostapis(info["hostapi"])["name"])
    kind = pcm_type(str(info["name"])) if lookup and host_api == "ALSA" else None
    return DeviceFacts(round(info["default_samplerate"]), int(info["max_input_channels"]), host_api, kind)


def find_device(sd: ModuleType, name: str | None) -> tuple[int, dict[str, Any]]:
    """(PortAudio index, info) of the device ``name`` (substring), or the default input device."""
    devices = [(i, d) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    if name is None:
        default = sd.default.device[0]
        for i, d in devices:
            if i == default:
                return i, d
        if devices:
            return devices[0]
        raise DeviceError("no input devices found (is a microphone connected?)")
    wanted = name.casefold()
    matches = [(i, d) for i, d in devices if d["name"].casefold() == wanted]
    matches += [(i, d) for i, d in devices if wanted in d["name"].casefold() and (i, d) not in matches]
    if not matches:
        names = ", ".join(repr(d["name"]) for _, d in devices) or "none"
        raise DeviceError(f"no input device matching {name!r}; available input devices: {names}")
    return matches[0]


class MicSource(FixedFormat):
    """A PortAudio input stream behind the Source protocol."""

    def __init__(self, spec: MicSpec, *, handoff_seconds: float, clock: Clock = time.monotonic,
                 block_ms: int = 100, sink: BlockSink | None = None, paced: bool = False,
                 server_16k: bool = True) -> None:  # fmt: skip
        """``block_ms``: callback block length; PortAudio's own choice (blocksize 0) wakes far more often.
        ``sink``: where the callback puts each block (default: :attr:`handoff`).
        ``paced``: read a blocking stream at two paces (:mod:`agent.audio.mic_paced`; idle until :meth:`set_idle`
        says otherwise) instead of a callback per block; ignored for blocks under 40 ms (they would need more ALSA
        periods than :data:`~agent.audio.mic_paced.MAX_PACED_PERIODS`).
        ``server_16k``: open a sound server's device at 16 kHz mono where ``spec`` leaves rate or channels open
        (:mod:`agent.audio.mic_format`; ``AudioSettings.server_mic_16k``)."""
        self._sd = import_sounddevice(refresh=True)
        index, info = find_device(self._sd, spec.name)
        self._device_name = str(info["name"])
        host_api = str(self._sd.query_hostapis(info["hostapi"])["name"])
        facts = device_facts(self._sd, info, lookup=needs_pcm_type(spec.rate, spec.channels, server_16k, host_api))
        self._rate, self._channels = open_format(spec.rate, spec.channels, facts, server_16k=server_16k)
        self._index = index
        self._clock = clock
        self.handoff = Handoff(max(1, round(handoff_seconds * self._rate)))
        self._sink: BlockSink = sink or self.handoff.put
        self._blocksize = max(1, round(self._rate * block_ms / 1000))
        self.stats = MicStats()
        self._stream: Any = None
        self._last_end: float | None = None
        self._stopped = threading.Event()
        self._paced = paced and paced_fits(self._blocksize / self._rate)
        self._reader: PacedReader | None = None
        self._idle = True

    @property
    def description(self) -> str:
        return f"mic {self._device_name!r} {self._rate} Hz x{self._channels}"

    @property
    def device_name(self) -> str:
        return self._device_name

    @property
    def paced(self) -> bool:
        """True when blocks are read at two paces from a blocking stream (see ``paced``)."""
        return self._paced

    def set_idle(self, idle: bool) -> None:
        """Paced streams: read every :data:`~agent.audio.mic_paced.IDLE_READ_S` (idle, no visit) or block by block
        (a visit: the blocks waiting are handed on at once). Any thread; a no-op for a callback stream."""
        self._idle = idle
        if self._reader is not None:
            self._reader.set_idle(idle)

    def __enter__(self) -> MicSource:
        try:
            kw = dict(samplerate=self._rate, device=self._index, channels=self._channels, dtype="float32",
                      blocksize=self._blocksize)  # fmt: skip
            if self._paced:
                self._stream = open_paced_stream(self._sd, **kw)
                read_into = reader_into(self._sd, self._stream)
                self._reader = PacedReader(self._stream, read_into, self._blocksize, self._read_blocks, self._clock,
                                           self._rate)  # fmt: skip
                self._reader.set_idle(self._idle)
                self._reader.start()
            else:
                self._stream = self._sd.InputStream(callback=self._callback, **kw)
                self._stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            self._close_stream()
            raise DeviceError(f"cannot open {self.description}: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._close_stream()

    def _close_stream(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join()  # before the close: a read must not be running on a closed stream
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except self._sd.PortAudioError as err:
                raise DeviceError(f"cannot close {self.description}: {err}") from None

    def _callback(self, indata: np.ndarray[Any, Any], frames: int, _time: Any, status: Any) -> None:
        # Runs on PortAudio's thread for every block: stamp, one copy, hand off. Nothing that can block, and no
        # per-block work that can wait for the consumer (the daemon meters and judges its blocks on the event loop).
        now = self._clock()
        start = now - frames / self._rate
        self.stats.blocks += 1
        missed = self._count_status(status, start) if status else 0
        self._last_end = now  # the capture time where the next block should start
        self._sink(indata.copy(), start, missed)

    def _read_blocks(self, samples: np.ndarray[Any, Any], start: float, overflowed: bool) -> None:
        """A paced read on the reader's thread: whole blocks, in order, the first starting at ``start``. The read
        returned a new array, so each block is a view of it (no copy)."""
        size, rate = self._blocksize, self._rate
        if not overflowed and len(samples) == size:  # a visit's block: the one case ten times a second
            self.stats.blocks += 1
            self._last_end = start + size / rate
            self._sink(samples, start, 0)
            return
        missed = 0
        if overflowed:
            self.stats.status_flags += 1
            self.stats.flags_seen.add("input_overflow")
            missed = self._count_overflow(start)
        for i in range(len(samples) // size):
            begin = start + i * size / rate
            self.stats.blocks += 1
            self._last_end = begin + size / rate
            self._sink(samples[i * size : (i + 1) * size], begin, missed if i == 0 else 0)

    def _count_status(self, status: Any, start: float) -> int:
        """Count the callback's status flags; the source samples an input overflow lost (0 otherwise)."""
        self.stats.status_flags += 1
        for flag in ("input_overflow", "input_underflow", "output_overflow", "output_underflow"):
            if getattr(status, flag, False):
                self.stats.flags_seen.add(flag)
        if not status.input_overflow:
            return 0
        return self._count_overflow(start)

    def _count_overflow(self, start: float) -> int:
        self.stats.input_overflows += 1
        if self._last_end is None:
            return 0
        missed = max(0, round((start - self._last_end) * self._rate))
        self.stats.estimated_lost += missed
        return missed

    def check_alive(self) -> None:
        """DeviceError if PortAudio reports the stream inactive (the loop-driven reader calls it after a stall)."""
        reader = self._reader
        if reader is not None and reader.error is not None and not self._stopped.is_set():
            raise DeviceError(f"{self.description} stopped delivering audio ({reader.error})")
        stream = self._stream
        if stream is not None and not stream.active and not self._stopped.is_set():
            raise DeviceError(f"{self.description} stopped delivering audio (device lost?)")

    def stop(self) -> None:
        self._stopped.set()
        if self._reader is not None:
            self._reader.stop()
        self.handoff.close()
