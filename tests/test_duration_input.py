"""Durations a person types are checked before anything is recorded: a finite number of at least one frame.

``run --duration 0`` once uploaded a 44-byte WAV as the appointment's only recording, and ``inf``/``nan`` crashed
with a traceback. Each bad value now is one line on stderr and exit 65, with no archive, no queue item and
nothing sent to MediSync.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.commands._args import duration_seconds
from agent.errors import InputError
from tests.plugins.archive import run_agent
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome

BAD = ["0", "-1", "1e-9", "0.019", "inf", "-inf", "nan", "NaN", "1e400", "soon", ""]


@pytest.mark.parametrize("text", BAD)
def test_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(InputError, match=r"--duration must be a finite number of seconds, at least 0\.02"):
        duration_seconds(text)


@pytest.mark.parametrize(("text", "seconds"), [("0.02", 0.02), ("3", 3.0), ("1e3", 1000.0), (" 2.5 ", 2.5)])
def test_good_duration_is_taken(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds
    assert duration_seconds(None) is None


def test_shortest_duration_follows_the_frame_length() -> None:
    assert duration_seconds("0.01", frame_ms=10) == 0.01
    with pytest.raises(InputError, match=r"at least 0\.03 \(one 30 ms frame\)"):
        duration_seconds("0.02", frame_ms=30)


def one_error_line(stderr: str, flag: str, text: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"medisync-agent: error: {flag} must be a finite number of seconds, at least 0.02 (one 20 ms frame), "
        f"not {text!r}"
    ]


@pytest.mark.parametrize("text", ["0", "-1", "1e-9", "inf", "nan"])
def test_run_refuses_bad_duration_before_recording(medisync_server: RunningServer, tmp_path: Path, text: str) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()

    done = home.run("run", "--appointment", appointment, "--source", "synth:noise/3", "--pace", "fast",
                    "--duration", text)  # fmt: skip

    assert done.returncode == 65
    one_error_line(done.stderr, "--duration", text)
    assert done.stdout == ""
    assert home.wavs() == home.partials() == home.journals() == [] and home.items() == []
    assert medisync_server.server.store.recording(appointment) is None  # the appointment stays free


@pytest.mark.parametrize("text", ["0", "-1", "1e-9", "inf", "nan"])
def test_record_refuses_bad_duration_before_recording(tmp_path: Path, text: str) -> None:
    out = tmp_path / "out.wav"

    done = run_agent("record", "--source", "synth:noise/3", "--pace", "fast", "--duration", text, "--out", str(out))

    assert done.returncode == 65
    one_error_line(done.stderr, "--duration", text)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["0", "inf", "nan"])
def test_check_refuses_bad_seconds(tmp_path: Path, text: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[audio]\nsource = "synth:noise/3"\n')

    done = run_agent("check", "--config", str(config), "--seconds", text)

    assert done.returncode == 65
    one_error_line(done.stderr, "--seconds", text)
    assert done.stdout == ""
