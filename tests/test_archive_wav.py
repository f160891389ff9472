"""The incremental WAV writer: header valid at every rewrite, gaps become silence, atomic rename, errors."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive.wav import HEADER_BYTES, WavArchiveWriter, partial_path, wav_header
from agent.audio.types import Frame
from agent.errors import ArchiveError
from agent.settings import ArchiveSettings

FRAME = 320  # 20 ms at 16 kHz


def pcm_ramp(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32767, n, dtype=np.int16).astype("<i2").tobytes()


def read_wave(path: Path) -> tuple[int, int, int, bytes]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.readframes(w.getnframes())


def soxi_samples(path: Path) -> int:
    out = subprocess.run(["soxi", "-s", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def frames_of(pcm: bytes, start: int = 0) -> list[Frame]:
    step = FRAME * 2
    return [Frame(start=start + i // 2, pcm=pcm[i : i + step]) for i in range(0, len(pcm), step)]


def test_header_is_valid_at_every_periodic_rewrite(tmp_path: Path) -> None:
    final = tmp_path / "visit.wav"
    settings = ArchiveSettings(directory=str(tmp_path), header_interval_s=0.1, fsync_interval_s=0.25)
    pcm = pcm_ramp(16000 * 2)
    checked = 0
    with WavArchiveWriter.create(final, settings) as writer:
        assert read_wave(writer.partial)[3] == b""
        for frame in frames_of(pcm):
            before = writer.header_rewrites
            writer.write_frame(frame)
            if writer.header_rewrites != before:
                rate, channels, width, data = read_wave(writer.partial)
                assert (rate, channels, width) == (16000, 1, 2)
                assert data == pcm[: writer.position * 2]
                assert soxi_samples(writer.partial) == writer.position
                checked += 1
        assert not final.exists()
    assert checked == 20
    assert writer.fsyncs == 8
    assert read_wave(final)[3] == pcm
    assert soxi_samples(final) == len(pcm) // 2


def test_finish_renames_the_same_file_atomically_and_leaves_no_partial(tmp_path: Path) -> None:
    final = tmp_path / "visit.wav"
    writer = WavArchiveWriter.create(final, ArchiveSettings(directory=str(tmp_path)))
    inode = os.stat(writer.partial).st_ino
    writer.write_frame(Frame(start=0, pcm=pcm_ramp(FRAME)))
    assert not final.exists()
    assert writer.finish() == final
    assert os.stat(final).st_ino == inode  # renamed, not copied
    assert not partial_path(final).exists()
    assert os.stat(final).st_mode & 0o777 == 0o600
    assert final.read_bytes()[:HEADER_BYTES] == wav_header(FRAME * 2)
    with pytest.raises(ArchiveError, match="already finished"):
        writer.write_frame(Frame(start=FRAME, pcm=pcm_ramp(FRAME)))


def test_gap_in_the_timeline_is_written_as_silence(tmp_path: Path) -> None:
    final = tmp_path / "visit.wav"
    a, b = pcm_ramp(FRAME, 1), pcm_ramp(FRAME, 2)
    gap = 16000 * 3 + 17  # longer than the silence chunk, not a whole frame
    with WavArchiveWriter.create(final, ArchiveSettings(directory=str(tmp_path))) as writer:
        writer.write_frame(Frame(start=0, pcm=a))
        writer.write_frame(Frame(start=FRAME + gap, pcm=b))
        assert writer.position == 2 * FRAME + gap
    data = read_wave(final)[3]
    assert data == a + bytes(gap * 2) + b
    assert soxi_samples(final) == 2 * FRAME + gap


def test_overlapping_frame_is_a_programming_error(tmp_path: Path) -> None:
    with WavArchiveWriter.create(tmp_path / "v.wav", ArchiveSettings(directory=str(tmp_path))) as writer:
        writer.write_frame(Frame(start=0, pcm=pcm_ramp(FRAME)))
        with pytest.raises(ValueError, match="overlaps"):
            writer.write_frame(Frame(start=FRAME - 1, pcm=pcm_ramp(FRAME)))


def test_missing_output_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as info:
        WavArchiveWriter.create(tmp_path / "nope" / "v.wav", ArchiveSettings())
    assert str(info.value) == f"cannot record to {tmp_path}/nope/v.wav: output folder {tmp_path}/nope does not exist"


def test_existing_final_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    final = tmp_path / "v.wav"
    final.write_bytes(b"precious")
    with pytest.raises(ArchiveError, match="the file exists"):
        WavArchiveWriter.create(final, ArchiveSettings())
    assert final.read_bytes() == b"precious"
    WavArchiveWriter.create(final, ArchiveSettings(), overwrite=True).finish()
    assert read_wave(final)[3] == b""


def test_leftover_partial_is_never_truncated(tmp_path: Path) -> None:
    final = tmp_path / "v.wav"
    partial_path(final).write_bytes(b"earlier crash")
    with pytest.raises(ArchiveError, match=r"v\.wav\.partial exists from an earlier crash"):
        WavArchiveWriter.create(final, ArchiveSettings())
    assert partial_path(final).read_bytes() == b"earlier crash"
