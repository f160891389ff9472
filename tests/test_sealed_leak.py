"""No plaintext audio at rest: the raw bytes of every file the agent leaves on disk, during a real visit (``run``
as a process, several snapshots while it records) and after it (uploaded; an MP3 of a long visit), hold no 100 ms
of the visit's PCM; and the upload is still the exact plaintext WAV. (Dead letters and quarantine: the tamper and
kill -9 tests search those folders the same way, with :func:`leaks`.)

A 100 ms run anywhere in a file contains one of the visit's 3200-byte windows at an offset that is a multiple of
3200 in the PCM, so searching every aligned window finds any such run. Windows of one repeated byte (digital
silence) are skipped: they are not patient audio and zero-filled blocks would match them. The search is shown to
work on a plaintext archive of the same visit (``record --plaintext``), so a broken seal would fail this test.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE, REPO, agent_command, wav_pcm
from tests.plugins.keys import is_sealed_file, uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, stored_recording

pytestmark = pytest.mark.slow

WINDOW = 3200
"""100 ms of 16 kHz s16 mono."""
VISIT_S = 12


def windows_of(pcm: bytes) -> list[bytes]:
    found = [pcm[i : i + WINDOW] for i in range(0, len(pcm) - WINDOW + 1, WINDOW)]
    return [w for w in found if w.count(w[:1]) != len(w)]


def leaks(files: dict[str, bytes], windows: list[bytes]) -> list[str]:
    """``name@offset`` of every window found in the files' raw bytes."""
    return [f"{name}@{data.find(w)}" for name, data in files.items() for w in windows if w in data]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (archive, queue, dead letters, quarantine, journals, configuration)."""
    found = {}
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_bytes()
        except FileNotFoundError:
            continue  # renamed between listing and reading: the next snapshot sees it
    return found


def test_the_search_finds_audio_in_a_plaintext_archive(tmp_path: Path, dialogue_pcm: bytes) -> None:
    out = tmp_path / "plain.wav"
    done = subprocess.run(agent_command("record", "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration",
                                        "3", "--plaintext", "--out", str(out)), cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not is_sealed_file(out)
    windows = windows_of(dialogue_pcm[: 3 * 32000])
    assert len(leaks(snapshot(tmp_path), windows)) == len(windows)  # every window of it, in the plaintext file


def test_no_audio_at_rest_during_and_after_a_visit_and_the_upload_is_exact(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()
    pcm = dialogue_pcm[: VISIT_S * 32000]
    windows = windows_of(pcm)
    assert len(windows) > VISIT_S * 5  # the dialogue is mostly speech

    proc = home.popen("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "realtime",
                      "--duration", str(VISIT_S), log=tmp_path / "run.log")  # fmt: skip
    snapshots = []
    while proc.poll() is None:  # about one snapshot a second while the visit records, uploads and ends
        snapshots.append(snapshot(home.root))
        time.sleep(1.0)
    assert proc.wait(60) == 0, (tmp_path / "run.log").read_text()
    snapshots.append(snapshot(home.root))
    during = [s for s in snapshots if any(name.endswith(".partial") for name in s)]
    assert len(during) >= 3, "too few snapshots while the visit recorded"

    # Uploaded: the exact plaintext WAV the pipeline produced, byte for byte.
    [wav] = home.wavs()
    assert is_sealed_file(wav)
    stored = stored_recording(medisync_server, appointment)
    assert stored == uploaded_bytes(wav) and stored[44:] == pcm and wav_pcm(wav) == pcm
    assert [i["state"] for i in home.items()] == ["done"]

    found = [leak for s in snapshots for leak in leaks(s, windows)]
    assert found == [], f"plaintext audio on disk: {found[:5]}"


def test_the_mp3_of_a_long_visit_is_sealed_and_uploaded_as_the_plaintext_mp3(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password,
                     settings={"upload": {"max_bytes": 1024 * 1024}})  # fmt: skip  (35 s of audio is 1.1 MB)
    appointment = medisync_server.create_appointment()

    done = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                    "--duration", "35", "--no-stream")  # fmt: skip

    assert done.returncode == 0, done.stderr
    [item] = home.items()
    mp3 = Path(item["audio_path"])
    assert mp3.suffix == ".mp3" and is_sealed_file(mp3) and is_sealed_file(Path(item["source_path"]))
    stored = stored_recording(medisync_server, appointment)
    assert stored == uploaded_bytes(mp3) and stored[:2] == b"\xff\xf3"  # MPEG-2 layer III
    assert leaks(snapshot(home.root), windows_of(dialogue_pcm[: 35 * 32000])) == []
