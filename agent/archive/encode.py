"""MP3 encoding of visits too large for MediSync's recordings endpoint (500 MB, about 4.5 h of 16 kHz s16 mono).

Streams the WAV through ``lameenc`` in blocks (never the whole visit in memory) and writes the MP3 atomically
(``.partial`` file, fsync, rename, directory fsync), so a crash mid-encode leaves either no MP3 or a complete one.
A sealed visit is decrypted as it is read and its MP3 sealed as it is written (:func:`encode_recording`).

Bitrate: the highest of :data:`BITRATES_KBPS` whose output fits ``max_bytes`` with a margin. At 16 kHz mono LAME
writes MPEG-2 Layer III; 64 kbps is transparent enough for speech recognition and makes 8 kB/s, so a 12 h visit
is 12 * 3600 * 8000 = 345.6 MB (fits 500 MB). With the 3 % margin 64 kbps is used up to 17.6 h, 48 kbps up to
23.5 h, 32 kbps up to 35.3 h, 8 kbps up to 141 h; longer is refused (:class:`~agent.errors.UploadTooLargeError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import wave
from pathlib import Path

import lameenc

from agent.archive.keys import ArchiveKeys
from agent.archive.sealed import PlainDigest, SealedAppender, open_plain
from agent.archive.storage import FILE_MODE, fsync_directory, write_all
from agent.errors import ArchiveError, InputError, UploadTooLargeError
from agent.settings import UploadSettings

log = logging.getLogger(__name__)

BITRATES_KBPS: tuple[int, ...] = (64, 56, 48, 40, 32, 24, 16, 8)
"""MPEG-2 Layer III bitrates tried, best first."""
SIZE_MARGIN = 0.97
"""Fraction of ``max_bytes`` the estimated MP3 may use: room for frame padding and headers."""
BLOCK_FRAMES = 16000 * 10
"""Audio frames read and encoded per step (10 s at 16 kHz, 320 kB of PCM)."""
LAME_QUALITY = 5
"""LAME algorithm quality, 2 (best, slow) .. 7 (fast): 5 is LAME's default speed/quality trade-off, fine on a Pi."""


def needs_encoding(path: Path, settings: UploadSettings) -> bool:
    """Whether the file is over the upload limit and must be encoded first."""
    return path.stat().st_size > settings.max_bytes


def choose_bitrate_kbps(duration_s: float, max_bytes: int) -> int:
    """Highest bitrate whose constant-bitrate output for ``duration_s`` fits ``max_bytes`` (with margin)."""
    for kbps in BITRATES_KBPS:
        if duration_s * kbps * 1000 / 8 <= max_bytes * SIZE_MARGIN:
            return kbps
    raise UploadTooLargeError(f"recording of {duration_s / 3600:.1f} h cannot be encoded under the upload limit")


def mp3_path_for(wav_path: Path) -> Path:
    return wav_path.with_suffix(".mp3")


def encode_to_mp3(wav_path: Path, settings: UploadSettings, *, out_path: Path | None = None) -> Path:
    """Encode a plaintext 16-bit PCM WAV to a plaintext MP3 (see :func:`encode_recording`); returns the MP3 path."""
    return encode_recording(wav_path, settings, keys=None, out_path=out_path)[0]


def encode_recording(wav_path: Path, settings: UploadSettings, *, keys: ArchiveKeys | None,
                     out_path: Path | None = None) -> tuple[Path, PlainDigest]:  # fmt: skip
    """Encode a 16-bit PCM WAV to a constant-bitrate MP3 that fits ``settings.max_bytes``; returns the MP3 path and
    the size and SHA-256 of the MP3 an upload sends.

    With ``keys`` the WAV may be sealed (it is decrypted as it is read, in memory) and the MP3 is sealed to the
    device's recipient as it is written: no plaintext reaches the disk. Blocking and CPU-bound (minutes for a long
    visit on a Pi): call it from a worker thread.
    """
    target = out_path if out_path is not None else mp3_path_for(wav_path)
    partial = target.with_name(target.name + ".partial")
    identity = keys.identity if keys is not None else None
    try:
        with open_plain(wav_path, identity) as plain, wave.open(plain, "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            if width != 2 or channels not in (1, 2):
                raise InputError("only 16-bit mono or stereo WAV files can be encoded to MP3")
            duration_s = reader.getnframes() / rate
            kbps = choose_bitrate_kbps(duration_s, settings.max_bytes)
            encoder = _make_encoder(rate, channels, kbps)
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)  # patient audio: private whatever the umask
                out = _Output(fd, keys)
                while block := reader.readframes(BLOCK_FRAMES):
                    out.write(encoder.encode(block))
                out.write(encoder.flush())
                digest = out.finish()
            finally:
                os.close(fd)
    except (wave.Error, EOFError) as exc:
        partial.unlink(missing_ok=True)
        raise InputError(f"{wav_path.name} is not a readable WAV file: {exc}") from exc
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"cannot encode {wav_path.name} to MP3: {exc.strerror or exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    fsync_directory(target.parent)
    log.info("encoded %s (%.0f s) to MP3 at %d kbps: %d bytes", wav_path.name, duration_s, kbps, digest.size)
    return target, digest


class _Output:
    """Where the MP3 goes: sealed to the device key, or plain; hashed as it is written."""

    def __init__(self, fd: int, keys: ArchiveKeys | None) -> None:
        self._fd = fd
        self._sealed = SealedAppender(fd, keys.recipient) if keys is not None else None
        self._digest = hashlib.sha256()
        self._size = 0
        if self._sealed is not None:
            self._sealed.begin()

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._size += len(data)
        if self._sealed is not None:
            self._sealed.append(data)
        else:
            write_all(self._fd, data)

    def finish(self) -> PlainDigest:
        if self._sealed is not None:
            self._sealed.finish()
        os.fsync(self._fd)
        return PlainDigest(self._size, self._digest.hexdigest())


def _make_encoder(rate: int, channels: int, kbps: int) -> lameenc.Encoder:
    encoder = lameenc.Encoder()
    encoder.set_in_sample_rate(rate)
    encoder.set_out_sample_rate(rate)  # no resampling by LAME: the archive already is 16 kHz
    encoder.set_channels(channels)
    encoder.set_bit_rate(kbps)
    encoder.set_quality(LAME_QUALITY)
    return encoder

