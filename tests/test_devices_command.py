"""``medisync-agent devices``: lists PulseAudio's device when a server runs; one clear line without PortAudio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{pythonpath}:{REPO}" if pythonpath else str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env, timeout=60, cwd=REPO
    )


@pytest.mark.pulse
def test_devices_lists_the_pulse_device(pulse_server: None) -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "agent", "devices"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "RATE", "CHANNELS", "OPENS"]
    pulse = [line.split() for line in lines[1:] if line.split()[0] == "pulse"]
    assert pulse and pulse[0][1].isdigit() and int(pulse[0][2]) >= 1
    assert pulse[0][3] == "16000x1"  # a sound server's device: the server resamples (agent/audio/mic_format.py)


def test_devices_without_portaudio_says_what_to_install(tmp_path: Path) -> None:
    # Stand-in for sounddevice on a machine without libportaudio2: its import fails exactly like the real one.
    (tmp_path / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    result = run_cli("devices", pythonpath=str(tmp_path))
    assert result.returncode == 69
    assert result.stdout == ""
    assert result.stderr == (
        "medisync-agent: error: PortAudio library not found: install libportaudio2 (apt-get install libportaudio2)\n"
    )


def test_devices_help() -> None:
    result = run_cli("devices", "--help")
    assert result.returncode == 0 and "by name" in result.stdout


BROKEN_ASOUNDRC = "pcm.!default {\n    type plug\n    slave.pcm \"hw:0\"\n  # a brace never closed\n"


@pytest.mark.parametrize("command", [["devices"], ["record", "--source", "mic", "--out", "visit.wav", "--plaintext"]])
def test_a_broken_asoundrc_is_named_in_one_line_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / ".asoundrc").write_text(BROKEN_ASOUNDRC)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "agent", *command], capture_output=True, text=True, env=env,
                            timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 69, result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("medisync-agent: error:")]
    assert len(error) == 1 and "PortAudio could not start" in error[0]
    assert "~/.asoundrc and /etc/asound.conf" in error[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".asoundrc"]  # nothing half-made beside it
