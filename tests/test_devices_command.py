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
    assert lines[0].split() == ["NAME", "RATE", "CHANNELS"]
    pulse = [line.split() for line in lines[1:] if line.split()[0] == "pulse"]
    assert pulse and pulse[0][1].isdigit() and int(pulse[0][2]) >= 1


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
