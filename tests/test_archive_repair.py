"""Repair of ``.partial`` files: stale, zero and garbage header sizes, torn samples, foreign files, repair_all."""

from __future__ import annotations

import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive.repair import RepairFailure, RepairResult, repair_all, repair_partial
from agent.archive.wav import wav_header
from agent.errors import ArchiveError


def pcm(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-32768, 32767, n, dtype=np.int16).astype("<i2").tobytes()


def check_valid(path: Path, expected: bytes) -> None:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(w.getnframes()) == expected
    out = subprocess.run(["soxi", "-s", str(path)], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(expected) // 2


@pytest.mark.parametrize(
    ("header_size", "tail"),
    [
        (0, b""),  # header never rewritten (crash in the first interval)
        (16000, b""),  # stale: says less than the file holds
        (0xFFFFFF00, b""),  # garbage: says far more
        (4000, b"\x07"),  # torn trailing sample
    ],
    ids=["zero", "stale", "garbage", "torn-sample"],
)
def test_repair_takes_the_data_actually_on_disk(tmp_path: Path, header_size: int, tail: bytes) -> None:
    data = pcm(24_001)
    partial = tmp_path / "visit.wav.partial"
    partial.write_bytes(wav_header(header_size) + data + tail)
    result = repair_partial(partial)
    final = tmp_path / "visit.wav"
    assert result == RepairResult(partial, final, frames=24_001, sample_rate=16000, dropped_bytes=len(tail))
    assert not partial.exists()
    check_valid(final, data)


def test_repair_keeps_extra_chunks_before_data(tmp_path: Path) -> None:
    data = pcm(1000)
    header = wav_header(0)
    extra = b"LIST" + struct.pack("<I", 5) + b"hello\x00"  # odd size: padded
    body = header[12:36] + extra + header[36:]
    partial = tmp_path / "v.wav.partial"
    partial.write_bytes(header[:12] + body + data)
    assert repair_partial(partial).frames == 1000
    check_valid(tmp_path / "v.wav", data)


def test_header_only_partial_becomes_an_empty_wav(tmp_path: Path) -> None:
    partial = tmp_path / "v.wav.partial"
    partial.write_bytes(wav_header(0))
    assert repair_partial(partial).frames == 0
    check_valid(tmp_path / "v.wav", b"")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty (nothing reached the disk)"),
        (b"ID3\x03 this is an mp3" * 4, "not a partial WAV file (no RIFF/WAVE header)"),
        (wav_header(0)[:36], "not a partial WAV file (no data chunk in the header)"),
        (wav_header(0)[:20] + struct.pack("<H", 0) + wav_header(0)[22:], "unsupported or corrupt WAV format header"),
    ],
    ids=["empty", "not-riff", "no-data-chunk", "zero-channels"],
)
def test_not_a_partial_wav_is_a_clear_error_and_left_alone(tmp_path: Path, content: bytes, reason: str) -> None:
    partial = tmp_path / "v.wav.partial"
    partial.write_bytes(content)
    with pytest.raises(ArchiveError) as info:
        repair_partial(partial)
    assert str(info.value) == f"cannot repair {partial}: {reason}"
    assert partial.read_bytes() == content
    assert not (tmp_path / "v.wav").exists()


def test_wrong_name_and_existing_final_are_refused(tmp_path: Path) -> None:
    wav = tmp_path / "v.wav"
    wav.write_bytes(wav_header(0))
    with pytest.raises(ArchiveError, match=r"does not end in \.partial"):
        repair_partial(wav)
    partial = tmp_path / "v.wav.partial"
    partial.write_bytes(wav_header(0) + pcm(10))
    with pytest.raises(ArchiveError, match=r"v\.wav exists already"):
        repair_partial(partial)
    assert partial.exists()
    with pytest.raises(ArchiveError, match="no such file"):
        repair_partial(tmp_path / "gone.wav.partial")


def test_repair_all_repairs_each_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "a.wav.partial").write_bytes(wav_header(0) + pcm(100, 1))
    (tmp_path / "b.wav.partial").write_bytes(b"junk")
    (tmp_path / "c.wav.partial").write_bytes(wav_header(7) + pcm(300, 3))
    (tmp_path / "done.wav").write_bytes(wav_header(0))
    outcomes = repair_all(tmp_path)
    assert [type(o) for o in outcomes] == [RepairResult, RepairFailure, RepairResult]
    assert isinstance(outcomes[1], RepairFailure)
    assert outcomes[1].reason.endswith("not a partial WAV file (no RIFF/WAVE header)")
    check_valid(tmp_path / "a.wav", pcm(100, 1))
    check_valid(tmp_path / "c.wav", pcm(300, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav.partial", "c.wav", "done.wav"]
    assert repair_all(tmp_path)[0] == outcomes[1]  # the bad one stays and is reported again


def test_repair_all_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as info:
        repair_all(tmp_path / "nope")
    assert str(info.value) == f"cannot look for unfinished recordings: folder {tmp_path}/nope does not exist"


def test_a_partial_still_being_recorded_is_left_alone(tmp_path: Path) -> None:
    from agent.archive.wav import WavArchiveWriter
    from agent.audio.types import Frame
    from agent.settings import ArchiveSettings

    writer = WavArchiveWriter.create(tmp_path / "live.wav", ArchiveSettings(header_interval_s=0.01))
    writer.write_frame(Frame(start=0, pcm=pcm(320)))
    with pytest.raises(ArchiveError) as info:
        repair_partial(writer.partial)
    assert str(info.value) == f"cannot repair {writer.partial}: it is being recorded right now by a running process"
    assert repair_all(tmp_path) == []
    assert writer.partial.exists()
    writer.write_frame(Frame(start=320, pcm=pcm(320, 1)))
    writer.finish()
    check_valid(tmp_path / "live.wav", pcm(320) + pcm(320, 1))
