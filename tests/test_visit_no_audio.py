"""A visit that captured no audio is not the appointment's recording: ``run`` says so in one line (exit 65), leaves
no empty file, journal or queue item behind, and the same appointment then records and uploads the real visit."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, stored_recording, wav_samples

pytestmark = pytest.mark.slow


def empty_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    return path


def test_visit_without_audio_is_not_queued_and_the_appointment_stays_free(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()

    nothing = home.run("run", "--appointment", appointment, "--source", f"file:{empty_wav(tmp_path / 'e.wav')}")

    assert nothing.returncode == 65, nothing.stderr
    errors = [line for line in nothing.stderr.splitlines() if line.startswith("medisync-agent: error:")]
    assert errors == ["medisync-agent: error: the visit captured no audio: nothing was queued, the appointment stays "
                      "free for the real visit"]  # fmt: skip
    assert home.wavs() == [] and home.partials() == [] and home.journals() == [] and home.items() == []
    assert list(home.archive.iterdir()) == []
    assert medisync_server.server.store.recording(appointment) is None

    real = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                    "--duration", "1")  # fmt: skip

    assert real.returncode == 0, real.stderr
    [wav] = home.wavs()
    assert len(wav_samples(wav)) == 2 * 16000
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
