"""``medisync-agent check`` as the installer runs it: against the local server and the PulseAudio virtual
microphone it passes (and names the server's protocol); with a wrong password it fails with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.audio.vad_eval import DIALOGUE_WAV
from tests.plugins.pulse import NullSink
from tests.plugins.server import RunningServer


def run_check(server: RunningServer, tmp_path: Path, source: str, password: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text(f'[audio]\nsource = "{source}"\n[api]\napi_url = "{server.api_url}"\n'
                      f'speech_url = "{server.speech_url}"\nemail = "{server.email}"\n')  # fmt: skip
    env = {**os.environ, "MEDISYNC_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(config), "--seconds", "2"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


@pytest.mark.pulse
@pytest.mark.slow
def test_check_passes_with_pulse_microphone_and_local_server(
    medisync_server: RunningServer, null_sink: Callable[[int, int], NullSink], tmp_path: Path
) -> None:
    sink = null_sink(48000, 1)
    player = sink.play(str(DIALOGUE_WAV))
    try:
        done = run_check(medisync_server, tmp_path, "mic:pulse", medisync_server.password)
    finally:
        player.kill()
        player.wait()
    print(done.stdout, done.stderr[-400:])
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["PASS"] * 5
    assert any(line.startswith("PASS  input devices") and "pulse" in line for line in lines)
    assert any(line.startswith("PASS  audio") and "dBFS" in line and "voice" in line for line in lines)
    assert "server speaks the resume protocol" in done.stdout
    assert lines[-1] == "all checks passed"
    assert "dBFS" in done.stderr and "[" in done.stderr  # the live meter


def test_check_basic_mode_is_reported(make_medisync_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = make_medisync_server()
    server.server.knobs.force_basic = True
    done = run_check(server, tmp_path, "synth:noise/3", server.password)
    assert done.returncode == 0, done.stdout
    assert "server speaks the basic protocol" in done.stdout


def test_wrong_password_fails_with_a_clear_line(medisync_server: RunningServer, tmp_path: Path) -> None:
    done = run_check(medisync_server, tmp_path, "synth:noise/3", "not-the-password")
    assert done.returncode == 1
    expected = f"FAIL  login          MediSync refused the login for {medisync_server.email}: wrong e-mail or password"
    assert expected in done.stdout.splitlines()
    assert "not-the-password" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
