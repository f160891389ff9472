"""WAV reader: every supported encoding round-trips; every bad input gives its one-line message."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.handoff import read_blocks
from agent.audio.sources import FileSource, open_source
from agent.audio.wavfile import read_wav
from agent.errors import InputError
from agent.settings import AudioSettings

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def write_wav(path: Path, data: bytes, *, tag: int, rate: int, channels: int, bits: int,
              sub_tag: int | None = None, extra_chunk: bool = False, data_size: int | None = None) -> Path:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if tag == EXTENSIBLE:
        fmt += struct.pack("<HHI", 22, bits, 3 if channels == 2 else 4) + struct.pack("<H", sub_tag or PCM)
        fmt += GUID_TAIL
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if extra_chunk:  # odd-sized chunk: tests RIFF padding
        chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    chunks += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


def reference(frames: int, channels: int) -> npt.NDArray[np.float64]:
    return np.random.default_rng(frames).uniform(-1, 0.999, size=(frames, channels))


def encode_int(x: npt.NDArray[np.float64], bits: int) -> tuple[bytes, npt.NDArray[np.float64]]:
    full = 2 ** (bits - 1)
    ints = np.clip(np.round(x * full), -full, full - 1).astype(np.int64)
    if bits == 24:
        u = (ints & 0xFFFFFF).astype("<u4").reshape(-1)
        raw = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    else:
        raw = ints.astype(f"<i{bits // 8}").tobytes()
    return raw, ints / full


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bits", [16, 24, 32])
@pytest.mark.parametrize("extensible", [False, True])
def test_integer_pcm_round_trips(tmp_path: Path, bits: int, channels: int, extensible: bool) -> None:
    raw, expected = encode_int(reference(1001, channels), bits)
    tag = EXTENSIBLE if extensible else PCM
    path = write_wav(tmp_path / "a.wav", raw, tag=tag, rate=44100, channels=channels, bits=bits, extra_chunk=True)
    samples, rate = read_wav(str(path))
    assert rate == 44100 and samples.shape == (1001, channels)
    assert np.array_equal(samples.astype(np.float64), expected.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("extensible", [False, True])
def test_float32_round_trips(tmp_path: Path, channels: int, extensible: bool) -> None:
    x = reference(777, channels).astype("<f4")
    tag, sub = (EXTENSIBLE, FLOAT) if extensible else (FLOAT, None)
    path = write_wav(tmp_path / "f.wav", x.tobytes(), tag=tag, sub_tag=sub, rate=8000, channels=channels, bits=32)
    samples, rate = read_wav(str(path))
    assert rate == 8000 and np.array_equal(samples, x)


def test_file_source_delivers_the_whole_file_in_blocks(tmp_path: Path) -> None:
    raw, expected = encode_int(reference(48000 + 17, 2), 16)
    path = write_wav(tmp_path / "b.wav", raw, tag=PCM, rate=48000, channels=2, bits=16)
    with open_source(f"file:{path}", AudioSettings(pace="fast")) as source:
        blocks = list(read_blocks(source.handoff))  # what the one audio path's consumer gets
    assert {len(b.samples) for b in blocks[:-1]} == {48000}  # 1 s blocks when paced "fast"
    assert np.array_equal(np.concatenate([b.samples for b in blocks]), expected.astype(np.float32))


def test_data_chunk_longer_than_the_file_is_read_to_the_end(tmp_path: Path) -> None:
    raw, expected = encode_int(reference(500, 1), 16)
    path = write_wav(tmp_path / "cut.wav", raw + b"\x01", tag=PCM, rate=16000, channels=1, bits=16,
                     data_size=0xFFFFFFFF)
    samples, _ = read_wav(str(path))
    assert np.array_equal(samples[:, 0], expected[:, 0].astype(np.float32))


def test_realtime_pacing_uses_the_injected_clock(tmp_path: Path) -> None:
    raw, _ = encode_int(reference(16000, 1), 16)
    path = write_wav(tmp_path / "p.wav", raw, tag=PCM, rate=16000, channels=1, bits=16)
    now = [50.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with FileSource(str(path), pace="realtime", clock=lambda: now[0], sleep=sleep) as source:
        blocks = list(read_blocks(source.handoff))  # paced by the producer thread, with the injected clock
    assert len(blocks) == 50
    assert now[0] == pytest.approx(51.0)
    assert sum(sleeps) == pytest.approx(1.0)
    assert [b.capture_time for b in blocks[:3]] == pytest.approx([50.0, 50.02, 50.04])


def bad(tmp_path: Path, name: str, **kw: int) -> str:
    args = {"tag": PCM, "rate": 16000, "channels": 1, "bits": 16} | kw
    return str(write_wav(tmp_path / name, b"\x00" * 64, **args))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing.wav"), "no such file: "),
        (lambda p: str(p), "not a WAV file"),
        (lambda p: (p / "t.txt").write_text("hello, this is text") and str(p / "t.txt"), "not a WAV file: "),
        (lambda p: bad(p, "alaw.wav", tag=6, bits=8), "unsupported WAV encoding in .*: A-law; supported: 16/24/32"),
        (lambda p: bad(p, "u8.wav", bits=8), "unsupported WAV encoding in .*: 8-bit integer PCM"),
        (lambda p: bad(p, "f64.wav", tag=FLOAT, bits=64), "unsupported WAV encoding in .*: 64-bit float"),
        (lambda p: bad(p, "r96.wav", rate=96000), "unsupported sample rate in .*: 96000 Hz; supported: 8000-48000"),
        (lambda p: bad(p, "r4.wav", rate=4000), "unsupported sample rate .*4000 Hz"),
        (lambda p: bad(p, "c6.wav", channels=6), "unsupported channel count in .*: 6; supported: 1 .mono. or 2"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message) as info:
        open_source(f"file:{make(tmp_path)}", AudioSettings())
    assert "\n" not in str(info.value)
