"""Bad input to ``record``: the exact line a person sees, the exit code, and that nothing recorded is lost.

A WAV source whose header misstates its length is read to its end with one warning line naming both lengths.

Faults are real: a read-only mount and a tiny full tmpfs in a private mount namespace (``unshare -m``, root), and
a PortAudio library made unloadable by bind-mounting /dev/null over it.
"""

from __future__ import annotations

import ctypes.util
import os
import shlex
import struct
import subprocess
import wave
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE, REPO, agent_command, record_in_process, run_agent, soxi_samples, wav_pcm

SUPPORTED = "supported: 16/24/32-bit integer PCM or 32-bit float, 8000-48000 Hz, mono or stereo"


def record(source: str, out: Path) -> subprocess.CompletedProcess[str]:
    return run_agent("record", "--source", source, "--pace", "fast", "--out", str(out))


def in_mount_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with sh in a private mount namespace (mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


def agent_shell(*args: str) -> str:
    return shlex.join(agent_command(*args))


def assert_only_error(result: subprocess.CompletedProcess[str], line: str, code: int) -> None:
    assert (result.returncode, result.stderr, result.stdout) == (code, f"medisync-agent: error: {line}\n", "")


def test_missing_file(tmp_path: Path) -> None:
    result = record(f"file:{tmp_path}/nope.wav", tmp_path / "out.wav")
    assert_only_error(result, f"no such file: {tmp_path}/nope.wav", 65)
    assert list(tmp_path.iterdir()) == []


def test_not_a_wav(tmp_path: Path) -> None:
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio")
    result = record(f"file:{notes}", tmp_path / "out.wav")
    assert_only_error(result, f"not a WAV file: {notes}", 65)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.wav"]


def test_unsupported_wav_encoding(tmp_path: Path) -> None:
    u8 = tmp_path / "u8.wav"
    with wave.open(str(u8), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(bytes(1600))
    result = record(f"file:{u8}", tmp_path / "out.wav")
    assert_only_error(result, f"unsupported WAV encoding in {u8}: 8-bit integer PCM; {SUPPORTED}", 65)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u8.wav"]


def portaudio_library() -> Path:
    name = ctypes.util.find_library("portaudio")
    assert name, "libportaudio2 must be installed for this test (tests/setup.sh installs it)"
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"):
        candidate = Path(folder) / name
        if candidate.exists():
            return candidate.resolve()
    raise AssertionError(f"cannot locate {name}")


def test_no_portaudio_library(tmp_path: Path) -> None:
    lib = portaudio_library()
    out = tmp_path / "out.wav"
    record_cmd = agent_shell("record", "--source", "mic", "--out", str(out))
    script = f"mount --bind /dev/null {shlex.quote(str(lib))} && {record_cmd}"
    result = in_mount_namespace(script)
    line = "PortAudio library not found: install libportaudio2 (apt-get install libportaudio2)"
    assert_only_error(result, line, 69)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "visit.wav"
    record_cmd = agent_shell("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--out", str(out))
    result = in_mount_namespace(f"mount -t tmpfs -o ro tmpfs {folder} && {record_cmd}")
    assert result.returncode == 73
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"recording WAV file 22050 Hz x1 to {out} (Ctrl-C to stop)",
        f"medisync-agent: error: cannot write to output folder {folder}: read-only file system",
    ]


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plaintext"])
@pytest.mark.parametrize("size_kib", [256, 300])
def test_disk_full_keeps_a_valid_wav_of_everything_written(tmp_path: Path, dialogue_pcm: bytes, size_kib: int,
                                                           sealed: bool) -> None:  # fmt: skip
    small = tmp_path / "small"
    kept = tmp_path / "kept"
    small.mkdir()
    kept.mkdir()
    out = small / "visit.wav"
    plain = () if sealed else ("--plaintext",)
    record_cmd = agent_shell("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", *plain, "--out", str(out))
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {small} && {{ {record_cmd}; rc=$?; cp -a {small}/. {kept}/; "
        "exit $rc; }"
    )
    result = in_mount_namespace(script)
    assert result.returncode == 73, result.stderr
    assert sorted(p.name for p in kept.iterdir()) == ["visit.wav"]  # sealed: renamed, no .partial left
    saved = kept / "visit.wav"
    pcm = wav_pcm(saved)
    seconds = len(pcm) / 2 / 16000
    assert result.stderr.splitlines() == [
        f"recording WAV file 22050 Hz x1 to {out} (Ctrl-C to stop)",
        f"medisync-agent: error: disk full while writing {out}: recording stopped, the first {seconds:.2f} s are saved",
    ]
    # Everything the tmpfs could hold was used (whole 4 KiB pages; sealed: whole 64 KiB chunks, 65552 bytes each),
    # and it is exactly the pipeline's audio.
    assert os.path.getsize(saved) > size_kib * 1024 - 4096 - (65552 if sealed else 0)
    assert pcm == dialogue_pcm[: len(pcm)]
    assert soxi_samples(saved) == len(pcm) // 2


def dialogue_second_with_header(path: Path, declared: int) -> Path:
    """The dialogue's first second (22.05 kHz mono s16, 44100 bytes) under a header declaring ``declared`` bytes."""
    with wave.open(str(DIALOGUE), "rb") as w:
        pcm = w.readframes(22050)
    riff = min(36 + declared, 0xFFFFFFFF)  # a streaming writer leaves both sizes as placeholders
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, 22050, 44100, 2, 16,
                         b"data", declared)  # fmt: skip
    path.write_bytes(header + pcm)
    return path


@pytest.mark.parametrize(
    ("declared", "line"),
    [
        (88200, "{src} is shorter than its WAV header says: the header claims 88200 bytes of audio (2.00 s), the file "
                "holds 44100 (1.00 s); reading what is there"),
        (0, "{src} gives no audio length in its WAV header (data size 0, as streaming writers leave it): reading to "
            "the end of the file, 44100 bytes (1.00 s)"),
        (0xFFFFFFFF, "{src} gives no audio length in its WAV header (data size 0xFFFFFFFF, as streaming writers leave "
                     "it): reading to the end of the file, 44100 bytes (1.00 s)"),
    ],
    ids=["longer-than-the-file", "zero", "0xFFFFFFFF"],
)  # fmt: skip
def test_wav_whose_header_misstates_its_length_is_read_to_its_end_with_one_warning(
    tmp_path: Path, declared: int, line: str
) -> None:
    src = dialogue_second_with_header(tmp_path / "source.wav", declared)
    honest = dialogue_second_with_header(tmp_path / "honest.wav", 44100)
    out = tmp_path / "out.wav"
    result = record(f"file:{src}", out)
    assert result.returncode == 0, result.stderr
    warnings = [text.split(" WARNING agent.audio.wavfile: ", 1)[1] for text in result.stderr.splitlines()
                if " WARNING " in text]  # fmt: skip
    assert warnings == [line.format(src=src)]
    assert wav_pcm(out) == record_in_process(f"file:{honest}", tmp_path / "expected.wav")  # every sample there is
    assert len(wav_pcm(out)) == 2 * 16000


def test_wav_with_an_honest_header_gives_no_warning(tmp_path: Path) -> None:
    src = dialogue_second_with_header(tmp_path / "source.wav", 44100)
    result = record(f"file:{src}", tmp_path / "out.wav")
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
