"""``record`` and ``repair`` as a person runs them: real subprocesses, output read back with ``wave`` and ``soxi``."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
from pathlib import Path

import pytest

from agent.archive.wav import wav_header
from tests.plugins.archive import DIALOGUE, REPO, agent_command, poll, run_agent, soxi_samples, wav_pcm

SEGMENT_LINE = re.compile(r"^speech \d\d:\d\d\.\d{3} - \d\d:\d\d\.\d{3}  \[(\d+), (\d+)\)$")


def test_record_archives_exactly_what_the_pipeline_produces(tmp_path: Path, dialogue_pcm: bytes) -> None:
    out = tmp_path / "visit.wav"
    result = run_agent("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "recording WAV file 22050 Hz x1 to " + str(out) + " (Ctrl-C to stop)\n"
    assert wav_pcm(out) == dialogue_pcm
    samples = len(dialogue_pcm) // 2
    assert soxi_samples(out) == samples
    lines = result.stdout.splitlines()
    segments = [tuple(map(int, m.groups())) for m in map(SEGMENT_LINE.match, lines[:-1]) if m]
    assert len(segments) == len(lines) - 1 >= 3
    assert all(0 <= a < b <= samples for a, b in segments)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(segments))
    assert lines[-1].startswith(f"saved {out}: {samples / 16000:.2f} s ({samples} samples), {len(segments)} speech")
    assert lines[-1].endswith("0 overflows (0 samples filled with silence); end of source")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["visit.wav"]


def test_duration_cuts_at_the_exact_sample(tmp_path: Path, dialogue_pcm: bytes) -> None:
    out = tmp_path / "short.wav"
    result = run_agent("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", "1.25",
                       "--frame-ms", "30", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert wav_pcm(out) == dialogue_pcm[: 20000 * 2]
    assert result.stdout.splitlines()[-1].endswith("; duration reached")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_the_recording_cleanly(tmp_path: Path, dialogue_pcm: bytes, signum: int) -> None:
    out = tmp_path / "visit.wav"
    proc = subprocess.Popen(
        # Plaintext: its size shows the first audio within 0.25 s (a sealed file grows in 2 s chunks), so the
        # signal lands in the dialogue's opening silence, where the resampler's final flush changes nothing.
        agent_command("record", "--source", f"file:{DIALOGUE}", "--pace", "realtime", "--plaintext", "--out", str(out)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    partial = tmp_path / "visit.wav.partial"
    poll(lambda: partial.exists() and partial.stat().st_size > 44 + 8000, "the recording to start")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert not partial.exists()
    pcm = wav_pcm(out)
    assert 4000 <= len(pcm) < len(dialogue_pcm)
    assert pcm == dialogue_pcm[: len(pcm)]
    assert soxi_samples(out) == len(pcm) // 2
    assert stdout.splitlines()[-1].endswith("; stopped")


def test_record_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "visit.wav"
    out.write_bytes(b"an earlier visit")
    args = ("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", "0.1", "--out", str(out))
    result = run_agent(*args)
    assert result.returncode == 73
    assert result.stderr.splitlines()[-1] == (
        f"medisync-agent: error: cannot record to {out}: the file exists (choose another name or overwrite it)"
    )
    assert out.read_bytes() == b"an earlier visit"
    assert run_agent(*args, "--overwrite").returncode == 0
    assert soxi_samples(out) == 1600


def test_record_repairs_leftover_partials_first(tmp_path: Path) -> None:
    (tmp_path / "crashed.wav.partial").write_bytes(wav_header(0) + bytes(32001))
    result = run_agent("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration", "0.1",
                       "--out", str(tmp_path / "next.wav"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"repaired interrupted recording {tmp_path}/crashed.wav (1.00 s)"
    assert wav_pcm(tmp_path / "crashed.wav") == bytes(32000)


def test_repair_command_on_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "a.wav.partial").write_bytes(wav_header(0) + bytes(16000))
    (tmp_path / "b.wav.partial").write_bytes(wav_header(0) + bytes(3201))
    result = run_agent("repair", str(tmp_path / "a.wav.partial"))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"repaired {tmp_path}/a.wav (0.50 s)\n", "")
    result = run_agent("repair", str(tmp_path))
    assert result.returncode == 0
    assert result.stdout == f"repaired {tmp_path}/b.wav (0.10 s), cut 1 bytes of a torn sample\n"
    assert soxi_samples(tmp_path / "b.wav") == 1600
    result = run_agent("repair", str(tmp_path))
    assert (result.returncode, result.stdout) == (0, f"{tmp_path}: no interrupted recordings\n")


def test_repair_command_refuses_a_file_that_is_not_a_partial_wav(tmp_path: Path) -> None:
    junk = tmp_path / "notes.wav.partial"
    junk.write_bytes(b"shopping list")
    result = run_agent("repair", str(junk))
    assert result.returncode == 73
    assert result.stdout == ""
    assert (
        result.stderr == f"medisync-agent: error: cannot repair {junk}: not a partial WAV file (no RIFF/WAVE header)\n"
    )
    assert junk.read_bytes() == b"shopping list"


def test_help_texts_explain_the_commands() -> None:
    record = run_agent("record", "--help")
    assert record.returncode == 0
    for needle in ("--source SRC", "--out FILE.wav", "--duration S", "--pace {realtime,fast}", "Ctrl-C", ".partial"):
        assert needle in record.stdout
    repair = run_agent("repair", "--help")
    assert repair.returncode == 0
    assert "NAME.wav.partial" in repair.stdout
