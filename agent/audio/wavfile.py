"""A small RIFF/WAVE reader for PCM integer and IEEE float files (the stdlib ``wave`` module reads neither float
nor WAVE_FORMAT_EXTENSIBLE).

Supported: 8 000-48 000 Hz, 1 or 2 channels, 16/24/32-bit signed integer PCM and 32-bit IEEE float, either as
plain format tags (1 = PCM, 3 = IEEE float) or WAVE_FORMAT_EXTENSIBLE (0xFFFE) with the PCM or float sub-format.
Samples are returned as float32 in [-1, 1], shape (frames, channels). Every problem is an
:class:`agent.errors.InputError` with one line a person understands.

Lenient, but never silent: a ``data`` chunk whose declared size runs past the end of the file (a recording cut
short by a crash or a copy) is read as far as the file goes, and a size of 0 or 0xFFFFFFFF (the placeholder a
streaming writer leaves when it cannot seek back) means "to the end of the file"; either way one WARNING line
names the header's length and the file's.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from agent.archive.wavfmt import is_riff_wave, riff_chunks
from agent.errors import InputError

FORMAT_PCM = 0x0001
FORMAT_IEEE_FLOAT = 0x0003
FORMAT_EXTENSIBLE = 0xFFFE
MIN_RATE = 8000
MAX_RATE = 48000
MAX_CHANNELS = 2
MAX_CHUNKS = 256
"""Chunks looked at before ``data`` (fmt, LIST, fact, bext, JUNK ...); a file with more is refused."""
SUPPORTED = "16/24/32-bit integer PCM or 32-bit float, 8000-48000 Hz, mono or stereo"

log = logging.getLogger(__name__)

UNKNOWN_SIZES = (0, 0xFFFFFFFF)
"""``data`` sizes that streaming writers leave in the header: the audio runs to the end of the file."""

_FORMAT_NAMES = {0x0002: "Microsoft ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0055: "MP3"}


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What the ``fmt `` chunk says, plus where the samples are."""

    sample_rate: int
    """Hz."""
    channels: int
    bits: int
    """Bits per sample as stored (16, 24 or 32)."""
    is_float: bool
    data_offset: int
    """Byte offset of the first sample in the file."""
    frames: int
    """Sample frames in the file (clamped to what the file actually holds)."""

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


def read_info(f: BinaryIO, name: str) -> WavInfo:
    """Parse the RIFF chunks up to ``data``; leaves the file positioned at the first sample."""
    def read_at(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    if not is_riff_wave(read_at(0, 12)):
        raise InputError(f"not a WAV file: {name}")
    fmt: tuple[int, int, int, int] | None = None
    for chunk in riff_chunks(read_at, limit=MAX_CHUNKS):
        if chunk.chunk_id == b"fmt ":
            fmt = _parse_fmt(read_at(chunk.body, chunk.size), name)
        elif chunk.chunk_id == b"data":
            if fmt is None:
                raise InputError(f"WAV file has its data before its fmt chunk: {name}")
            f.seek(chunk.body)
            return _info(f, name, fmt, chunk.size)
    raise InputError(f"WAV file has no {'data' if fmt else 'fmt'} chunk: {name}")


def _parse_fmt(body: bytes, name: str) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise InputError(f"WAV file has a truncated fmt chunk: {name}")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise InputError(f"WAV file has a truncated WAVE_FORMAT_EXTENSIBLE fmt chunk: {name}")
        tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format GUID
    return tag, channels, rate, bits


def _info(f: BinaryIO, name: str, fmt: tuple[int, int, int, int], data_size: int) -> WavInfo:
    tag, channels, rate, bits = fmt
    if tag == FORMAT_PCM and bits in (16, 24, 32):
        is_float = False
    elif tag == FORMAT_IEEE_FLOAT and bits == 32:
        is_float = True
    else:
        raise InputError(f"unsupported WAV encoding in {name}: {_describe(tag, bits)}; supported: {SUPPORTED}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InputError(f"unsupported sample rate in {name}: {rate} Hz; supported: {MIN_RATE}-{MAX_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"unsupported channel count in {name}: {channels}; supported: 1 (mono) or 2 (stereo)")
    offset = f.tell()
    available = max(0, os.fstat(f.fileno()).st_size - offset)
    frame_bytes = channels * bits // 8
    frames = _readable_bytes(name, data_size, available, rate * frame_bytes) // frame_bytes
    return WavInfo(rate, channels, bits, is_float, offset, frames)


def _readable_bytes(name: str, declared: int, available: int, bytes_per_s: int) -> int:
    """How much of the data chunk to read: what the header says, or what the file holds (with one warning)."""
    if declared in UNKNOWN_SIZES and available > 0:
        log.warning("%s gives no audio length in its WAV header (data size %s, as streaming writers leave it): "
                    "reading to the end of the file, %d bytes (%.2f s)", name, f"0x{declared:X}" if declared else "0",
                    available, available / bytes_per_s)  # fmt: skip
        return available
    if declared > available:
        log.warning("%s is shorter than its WAV header says: the header claims %d bytes of audio (%.2f s), the file "
                    "holds %d (%.2f s); reading what is there", name, declared, declared / bytes_per_s, available,
                    available / bytes_per_s)  # fmt: skip
        return available
    return declared


def _describe(tag: int, bits: int) -> str:
    if tag == FORMAT_PCM:
        return f"{bits}-bit integer PCM"
    if tag == FORMAT_IEEE_FLOAT:
        return f"{bits}-bit float"
    return _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04X}")


def decode(raw: bytes, info: WavInfo) -> npt.NDArray[np.float32]:
    """Convert whole sample frames of ``raw`` to float32, shape (frames, channels)."""
    usable = len(raw) - len(raw) % info.frame_bytes
    buf = raw[:usable]
    if info.is_float:
        flat = np.frombuffer(buf, dtype="<f4").astype(np.float32)
    elif info.bits == 16:
        flat = np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    elif info.bits == 32:
        flat = (np.frombuffer(buf, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        triples = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        as_int = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        as_int = np.where(as_int >= 1 << 23, as_int - (1 << 24), as_int)
        flat = as_int.astype(np.float32) / np.float32(8388608.0)
    return flat.reshape(-1, info.channels)


def open_wav(path: str) -> tuple[BinaryIO, WavInfo]:
    """Open ``path`` and parse its header; the caller owns (and must close) the returned file."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the caller, closed by the source
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"not a WAV file (it is a directory): {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return f, read_info(f, path)
    except BaseException:
        f.close()
        raise


def read_wav(path: str) -> tuple[npt.NDArray[np.float32], int]:
    """Whole file as float32 (frames, channels) and its rate in Hz (for tests and short files)."""
    f, info = open_wav(path)
    with f:
        return decode(f.read(info.frames * info.frame_bytes), info), info.sample_rate
