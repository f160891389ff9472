"""Operator commands that cannot hurt: ``uploads add`` refuses what the recordings endpoint would not take (one
line, exit 65, nothing queued or copied), uploads a private copy of what it accepts, and no ``uploads`` command
ever changes, moves or deletes the operator's own file, even after its item is dead-lettered and purged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.archive.upload_queue import UploadQueue
from agent.cli import main
from agent.settings import UploadSettings
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, recording_files, stored_recording
from tests.test_audio_format import SINE, ffmpeg
from tests.test_upload_queue import make_wav

MIB = 1024 * 1024


ORPHAN = "visit-20260101T000000Z-0000abcd.wav"
TORN_ITEM = "a" * 32 + ".json"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config with queue and archive in tmp_path and a 1 MiB upload limit (no server needed to refuse); the archive
    holds a recording that needs an appointment and the queue a torn item, as after a power cut."""
    config = tmp_path / "agent.toml"
    config.write_text(f'[upload]\nqueue_dir = "{tmp_path / "queue"}"\nmax_bytes = {MIB}\n'
                      f'[archive]\ndirectory = "{tmp_path / "archive"}"\n')  # fmt: skip
    monkeypatch.setenv("MEDISYNC_AGENT_CONFIG", str(config))
    for folder in ("archive", "queue"):
        (tmp_path / folder).mkdir()
    make_wav(tmp_path / "archive" / ORPHAN, 0.1)
    (tmp_path / "queue" / TORN_ITEM).write_bytes(b'{"item_id": "')
    return tmp_path


def text_file(tmp: Path) -> Path:
    path = tmp / "notes.wav"  # the name says WAV, the content does not
    path.write_text("Patient notes, not audio.\n" * 20)
    return path


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.wav")
    return tmp / "pipe.wav"


def too_large(tmp: Path) -> Path:
    path = make_wav(tmp / "long.wav", 1.0)
    with path.open("ab") as f:
        f.write(bytes(MIB))
    return path


def zero_link(tmp: Path) -> Path:
    (tmp / "zero.wav").symlink_to("/dev/zero")
    return tmp / "zero.wav"


def folder(tmp: Path) -> Path:
    (tmp / "visits.wav").mkdir()
    return tmp / "visits.wav"


REFUSED = [
    ("apt-1", text_file, "notes.wav: not a WAV, MP3 or M4A file"),
    ("apt-1", lambda tmp: Path("/etc/passwd"), "/etc/passwd: not a WAV, MP3 or M4A file"),
    ("apt-1", lambda tmp: Path("/dev/zero"), "/dev/zero is not a regular file"),
    ("apt-1", zero_link, "zero.wav is not a regular file"),
    ("apt-1", fifo, "pipe.wav is not a regular file"),
    ("apt-1", folder, "visits.wav is a folder, not an audio file"),
    ("apt-1", too_large, f"over the upload limit of {MIB} bytes"),
    ("apt-1", lambda tmp: tmp / "missing.wav", "missing.wav: no such file"),
    ("", lambda tmp: make_wav(tmp / "ok.wav", 0.1), "an appointment id is needed"),
    ("   ", lambda tmp: make_wav(tmp / "ok.wav", 0.1), "an appointment id is needed"),
    ("../admin", lambda tmp: make_wav(tmp / "ok.wav", 0.1), "appointment id may only contain"),
    ("..", lambda tmp: make_wav(tmp / "ok.wav", 0.1), "appointment id may only contain"),
]  # fmt: skip


@pytest.mark.parametrize(("appointment", "make", "message"), REFUSED)
def test_add_refuses_with_one_line_and_exit_65(
    home: Path, capsys: pytest.CaptureFixture[str], appointment: str, make, message: str  # type: ignore[no-untyped-def]
) -> None:
    operators = home / "operator"
    operators.mkdir()
    path = make(operators)

    assert main(["uploads", "add", appointment, str(path)]) == 65

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("medisync-agent: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert [p.name for p in (home / "archive").iterdir()] == [ORPHAN]  # nothing copied
    assert UploadQueue(UploadSettings(queue_dir=str(home / "queue"))).items() == []


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_operator_file_is_never_touched_by_any_uploads_command(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password,
                     settings={"upload": {"retention_hours": 0.0}})  # fmt: skip
    operators = tmp_path / "operator"
    operators.mkdir()
    wav = make_wav(operators / "visit.wav", 1.0)
    m4a = ffmpeg(operators / "dictation.m4a", *SINE, "-c:a", "aac")
    mp3 = ffmpeg(operators / "phone.mp3", *SINE, "-c:a", "libmp3lame")
    files = {p: digest(p) for p in (wav, m4a, mp3)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = home.run("uploads", *args)
        for path, expected in files.items():
            assert path.is_file() and digest(path) == expected, f"uploads {' '.join(args)} changed {path.name}"
        return done

    gone = "no-such-appointment"
    assert run("add", gone, str(wav)).returncode == 0
    assert run("list").returncode == 0
    retried = run("retry")
    assert retried.returncode == 0 and "1 dead-lettered" in retried.stdout  # 404: dead letter, our copy moved
    assert run("retry", "--now").returncode == 0
    assert run("purge").returncode == 0
    listed = run("list")
    assert " dead " in listed.stdout and gone in listed.stdout

    real = [medisync_server.create_appointment() for _ in range(3)]
    for appointment, path in zip(real, (wav, m4a, mp3), strict=True):
        added = run("add", appointment, str(path))
        assert added.returncode == 0 and "the file itself is left as it is" in added.stdout, added.stderr
    uploaded = run("retry", "--now")
    assert uploaded.returncode == 0 and "3 uploaded" in uploaded.stdout, uploaded.stdout + uploaded.stderr
    for appointment, path in zip(real, (wav, m4a, mp3), strict=True):
        assert stored_recording(medisync_server, appointment) == path.read_bytes()  # byte-identical upload

    orphan = make_wav(home.archive / "visit-20260101T000000Z-0000abcd.wav", 0.5, seed=9)
    orphan_bytes = orphan.read_bytes()
    fourth = medisync_server.create_appointment()
    assigned = run("assign", str(orphan), fourth)
    assert assigned.returncode == 0 and "queued visit-20260101T000000Z-0000abcd.wav" in assigned.stdout
    assert run("retry", "--now").returncode == 0
    assert stored_recording(medisync_server, fourth) == orphan_bytes
    assert "4 expired recording(s) deleted" in run("purge").stdout  # our copies and our orphan, after retention
    assert len(recording_files(medisync_server)) == 4
    assert sorted(p.name for p in operators.iterdir()) == ["dictation.m4a", "phone.mp3", "visit.wav"]
    shutil.rmtree(operators)
