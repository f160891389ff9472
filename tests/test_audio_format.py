"""What ``uploads add`` accepts is judged by content: WAV, MP3 and M4A made by independent encoders (ffmpeg, LAME)
are recognised whatever their name; text, system files, truncated and look-alike files are refused with a reason."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.archive.audio_format import AudioFormat, NotAudio, sniff
from agent.archive.encode import encode_to_mp3
from agent.settings import UploadSettings
from tests.test_upload_queue import make_wav


def sniff_bytes(data: bytes) -> AudioFormat:
    return sniff(lambda offset, size: data[offset : offset + size], len(data))


def ffmpeg(out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, str(out)], check=True, timeout=60)
    return out


SINE = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1"]


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("visit.wav", lambda p: make_wav(p, 0.2), AudioFormat.WAV),
        ("named-like-text.txt", lambda p: make_wav(p, 0.2), AudioFormat.WAV),
        ("lame.bin", lambda p: encode_to_mp3(make_wav(p.with_suffix(".wav"), 1.0), UploadSettings(), out_path=p),
         AudioFormat.MP3),
        ("id3.mp3", lambda p: ffmpeg(p, *SINE, "-c:a", "libmp3lame", "-id3v2_version", "3", "-metadata", "title=x"),
         AudioFormat.MP3),
        ("ipod.m4a", lambda p: ffmpeg(p, *SINE, "-c:a", "aac"), AudioFormat.M4A),
        ("isom-audio-only.mp4", lambda p: ffmpeg(p, *SINE, "-c:a", "aac", "-f", "mp4"), AudioFormat.M4A),
        ("alac.m4a", lambda p: ffmpeg(p, *SINE, "-c:a", "alac"), AudioFormat.M4A),
    ],
)  # fmt: skip
def test_real_encoders_output_is_recognised(
    tmp_path: Path, name: str, make: Callable[[Path], Path], expected: AudioFormat
) -> None:
    path = make(tmp_path / name)
    assert sniff_bytes(path.read_bytes()) is expected


def test_video_mp4_is_refused(tmp_path: Path) -> None:
    video = ffmpeg(tmp_path / "v.mp4", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", *SINE,
                   "-c:v", "mpeg4", "-c:a", "aac", "-shortest")  # fmt: skip
    with pytest.raises(NotAudio, match="not audio only"):
        sniff_bytes(video.read_bytes())


def wav_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(cid + struct.pack("<I", len(d)) + d + (b"\0" if len(d) & 1 else b"") for cid, d in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


FMT = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (b"hello, this is a text file\n" * 10, "judged by its content"),
        (Path("/etc/passwd").read_bytes(), "judged by its content"),
        (bytes(4096), "judged by its content"),
        (wav_bytes([(b"fmt ", FMT)]), "without a data chunk"),
        (wav_bytes([(b"data", b"\1\2")]), "without a format chunk"),
        (wav_bytes([(b"fmt ", FMT), (b"data", b"")]), "without any audio data"),
        (wav_bytes([(b"fmt ", struct.pack("<HHIIHH", 1, 0, 16000, 0, 0, 16)), (b"data", b"\1\2")]), "impossible"),
        (b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(16) + b"text after the tag", "without an MPEG audio frame"),
        (b"\xff\xfb\x90\x64" + bytes(400) + b"no second frame header here", "not followed by another frame"),
        (struct.pack(">I4s", 16, b"ftyp") + b"qt  \0\0\0\0", "without an audio brand"),
    ],
)  # fmt: skip
def test_non_audio_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(NotAudio, match=reason):
        sniff_bytes(data)


def test_wav_with_extra_chunks_before_data(tmp_path: Path) -> None:
    data = wav_bytes([(b"LIST", b"INFOISFT\5\0\0\0sox\0\0"), (b"fmt ", FMT), (b"fact", b"\0" * 4), (b"data", b"\1\0")])
    assert sniff_bytes(data) is AudioFormat.WAV
