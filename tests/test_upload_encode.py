"""MP3 encoding of over-limit visits: output fits the limit and decodes (ffmpeg, independent) to the same audio."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive import encode
from agent.errors import InputError, UploadTooLargeError
from agent.settings import UploadSettings

RATE = 16000


def tone_wav(path: Path, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    samples = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())
    return samples


def ffmpeg_decode(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16)


@pytest.mark.parametrize(
    ("hours", "kbps"),
    [(1.0, 64), (12.0, 64), (17.5, 64), (20.0, 56), (23.0, 48), (30.0, 32), (100.0, 8)],
)
def test_bitrate_keeps_long_visits_under_500_mb(hours: float, kbps: int) -> None:
    limit = UploadSettings().max_bytes
    chosen = encode.choose_bitrate_kbps(hours * 3600, limit)
    assert chosen == kbps
    assert hours * 3600 * chosen * 1000 / 8 <= limit


def test_bitrate_refuses_what_cannot_fit() -> None:
    with pytest.raises(UploadTooLargeError):
        encode.choose_bitrate_kbps(200 * 3600, UploadSettings().max_bytes)


def test_encoded_mp3_fits_and_decodes_to_the_same_audio(tmp_path: Path) -> None:
    wav = tmp_path / "visit.wav"
    seconds = 25.3  # more than two encode blocks, not a whole number of MP3 frames
    source = tone_wav(wav, seconds)
    settings = UploadSettings(max_bytes=wav.stat().st_size // 3)  # WAV 810 kB, limit 270 kB: 64 kbps = 202 kB
    assert encode.needs_encoding(wav, settings)
    mp3 = encode.encode_to_mp3(wav, settings)
    assert mp3 == tmp_path / "visit.mp3"
    assert mp3.stat().st_size <= settings.max_bytes
    assert not list(tmp_path.glob("*.partial"))
    decoded = ffmpeg_decode(mp3)
    # LAME adds its encoder delay and pads to whole frames (576 samples at 16 kHz): at most ~0.15 s extra.
    assert 0 <= len(decoded) - len(source) < int(0.15 * RATE)
    # Align by cross-correlation over the first second, then compare the audio.
    probe = decoded[:RATE].astype(np.float64)
    ref = source[: RATE // 2].astype(np.float64)
    lag = int(np.argmax(np.correlate(probe, ref, mode="valid")))
    aligned = decoded[lag : lag + len(source)].astype(np.float64)
    assert len(aligned) == len(source)
    error = aligned - source
    snr_db = 10 * np.log10(np.mean(source.astype(np.float64) ** 2) / np.mean(error**2))
    assert snr_db > 20, f"decoded MP3 differs from the source: SNR {snr_db:.1f} dB"


def test_encode_refuses_non_16_bit(tmp_path: Path) -> None:
    wav = tmp_path / "8bit.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(RATE)
        w.writeframes(bytes(16000))
    with pytest.raises(InputError):
        encode.encode_to_mp3(wav, UploadSettings(max_bytes=1000))
    assert not list(tmp_path.glob("*.mp3*"))


def test_encode_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all" * 100)
    with pytest.raises(InputError):
        encode.encode_to_mp3(bad, UploadSettings(max_bytes=100))
    assert not list(tmp_path.glob("*.mp3*"))
