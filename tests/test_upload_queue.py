"""The on-disk upload queue: persistence across kill -9, idempotent enqueue, dead-letter keeps audio, retention."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.settings import UploadSettings

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_wav(path: Path, seconds: float, *, seed: int = 1) -> Path:
    samples = np.random.default_rng(seed).integers(-8000, 8000, int(16000 * seconds), dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


@pytest.fixture
def settings(tmp_path: Path) -> UploadSettings:
    return UploadSettings(queue_dir=str(tmp_path / "queue"), retention_hours=2.0)


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    (tmp_path / "archive").mkdir()
    return make_wav(tmp_path / "archive" / "visit-0001.wav", 0.5)


def test_enqueue_persists_and_reloads(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    item = queue.enqueue("apt-42", wav)
    assert item.state is ItemState.PENDING
    assert (item.size, item.created_at, item.next_attempt_at) == (wav.stat().st_size, T0, T0)
    reloaded = UploadQueue(settings).items()
    assert reloaded == [item]
    assert reloaded[0].audio_path == str(wav)
    # The file name is a random id: no appointment id, no patient data.
    names = [p.name for p in Path(settings.queue_dir).iterdir() if p.suffix == ".json"]
    assert names == [f"{item.item_id}.json"]
    assert "apt-42" not in names[0]


def test_enqueue_is_idempotent_per_appointment(settings: UploadSettings, wav: Path, tmp_path: Path) -> None:
    clock = Clock()
    queue = UploadQueue(settings, clock=clock)
    first = queue.enqueue("apt-42", wav)
    clock.now += 1
    again = queue.enqueue("apt-42", wav)
    other_file = queue.enqueue("apt-42", make_wav(tmp_path / "other.wav", 0.1))
    assert again == first and other_file == first
    other = queue.enqueue("apt-43", make_wav(tmp_path / "b.wav", 0.1, seed=2))
    assert [i.item_id for i in queue.items()] == [first.item_id, other.item_id]


def test_leftover_temp_file_from_torn_write_is_ignored(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    item = queue.enqueue("apt-42", wav)
    # A crash between writing the temp file and the rename leaves this behind; the item keeps its old content.
    torn = Path(settings.queue_dir) / f".{item.item_id}.json.tmp"
    torn.write_bytes(b'{"item_id": "' + item.item_id.encode() + b'", "attem')
    assert UploadQueue(settings).items() == [item]


def test_unreadable_item_is_set_aside_not_deleted(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    good = queue.enqueue("apt-42", wav)
    bad = Path(settings.queue_dir) / "0123.json"
    bad.write_bytes(b"\x00garbage")
    assert queue.items() == [good]
    assert not bad.exists()
    assert (bad.parent / "0123.json.unreadable").read_bytes() == b"\x00garbage"


WRITER = """
import sys
from agent.archive.upload_queue import UploadQueue, UploadItem
from agent.settings import UploadSettings
queue = UploadQueue(UploadSettings(queue_dir=sys.argv[1]))
item = queue.items()[0]
print("ready", flush=True)
while True:
    item.attempts += 1
    item.last_error = "x" * (item.attempts % 5000)  # vary the size so a torn write would show
    queue.save(item)
"""


def test_kill_9_during_writes_leaves_a_whole_item(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    item = queue.enqueue("apt-42", wav)
    item_file = Path(settings.queue_dir) / f"{item.item_id}.json"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, settings.queue_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while UploadQueue(settings).items()[0].attempts < 200:  # reading while it writes: never torn
            assert time.monotonic() < deadline, "writer made no progress"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    survivors = UploadQueue(settings).items()
    assert len(survivors) == 1
    after = survivors[0]
    assert after.attempts >= 200
    assert after.last_error == "x" * (after.attempts % 5000)
    assert (after.item_id, after.appointment_id, after.sha256) == (item.item_id, "apt-42", item.sha256)
    assert item_file.exists()
    assert not list(Path(settings.queue_dir).glob("*.unreadable"))


def test_dead_letter_moves_audio_and_never_deletes_it(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    original = wav.read_bytes()
    item = queue.enqueue("apt-42", wav)
    dead = queue.dead_letter(item, "appointment not found on MediSync (HTTP 404)")
    dead_dir = Path(settings.queue_dir) / "dead"
    assert not wav.exists()
    assert Path(dead.audio_path) == dead_dir / f"{item.item_id}.wav"
    assert Path(dead.audio_path).read_bytes() == original
    assert (dead_dir / f"{item.item_id}.reason.txt").read_text() == "appointment not found on MediSync (HTTP 404)\n"
    assert queue.items() == []
    assert queue.dead_items() == [dead]
    assert dead.state is ItemState.DEAD
    # Enqueueing the same appointment again does not resurrect it behind a person's back.
    assert queue.enqueue("apt-42", wav) == dead
    # Retention never touches dead letters.
    assert queue.purge_expired(T0 + 1e9) == 0
    assert Path(dead.audio_path).read_bytes() == original


def test_dead_letter_cut_by_a_crash_is_finished_on_load(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    item = queue.enqueue("apt-42", wav)
    # The first step of dead-lettering happened (the reason file), then power went.
    (Path(settings.queue_dir) / "dead" / f"{item.item_id}.reason.txt").write_text("MediSync holds a different\n")
    assert UploadQueue(settings).items() == []
    [dead] = queue.dead_items()
    assert dead.dead_reason == "MediSync holds a different"
    assert Path(dead.audio_path).is_file() and not wav.exists()


def test_retention_deletes_audio_only_after_confirmed_upload(
    settings: UploadSettings, wav: Path, tmp_path: Path
) -> None:
    clock = Clock()
    queue = UploadQueue(settings, clock=clock)
    done = queue.enqueue("apt-1", wav)
    done.state, done.uploaded_at = ItemState.DONE, T0
    queue.save(done)
    pending = queue.enqueue("apt-2", make_wav(tmp_path / "p.wav", 0.1))
    assert queue.purge_expired(T0 + 2 * 3600 - 1) == 0
    assert wav.exists()
    clock.now = T0 + 2 * 3600
    assert queue.purge_expired() == 1
    assert not wav.exists()
    assert [i.item_id for i in queue.items()] == [pending.item_id]
    assert Path(pending.audio_path).exists()
    assert queue.purge_expired(T0 + 1e9) == 0  # pending audio is never deleted, however old


def test_large_visit_is_encoded_at_enqueue(tmp_path: Path) -> None:
    wav = make_wav(tmp_path / "long.wav", 3.0)
    settings = UploadSettings(queue_dir=str(tmp_path / "q"), max_bytes=60_000)  # the WAV is 96 kB
    queue = UploadQueue(settings, clock=Clock())
    item = queue.enqueue("apt-9", wav)
    assert item.source_path == str(wav) and item.audio_path == str(wav.with_suffix(".mp3"))
    assert item.size == Path(item.audio_path).stat().st_size <= 60_000
    assert UploadQueue(settings).items() == [item]


def test_upload_lock_is_exclusive(settings: UploadSettings) -> None:
    queue = UploadQueue(settings)
    with queue.uploading() as first:
        assert first
        with UploadQueue(settings).uploading() as second:
            assert not second
    with queue.uploading() as again:
        assert again


def test_next_wake(settings: UploadSettings, wav: Path, tmp_path: Path) -> None:
    clock = Clock()
    queue = UploadQueue(settings, clock=clock)
    assert queue.next_wake(T0) == settings.backoff_cap_s  # empty queue: look again at the cap
    item = queue.enqueue("apt-1", wav)
    assert queue.next_wake(T0) == 0.0
    item.next_attempt_at = T0 + 30
    queue.save(item)
    assert queue.next_wake(T0) == 30.0
    item.state, item.uploaded_at = ItemState.DONE, T0 - 2 * 3600 + 10
    queue.save(item)
    assert queue.next_wake(T0) == 10.0  # retention expiry


def test_item_json_has_no_audio_or_secrets(settings: UploadSettings, wav: Path) -> None:
    item = UploadQueue(settings, clock=Clock()).enqueue("apt-42", wav)
    text = (Path(settings.queue_dir) / f"{item.item_id}.json").read_text()
    assert set(UploadItem.__struct_fields__) >= {"appointment_id", "sha256", "state", "last_error"}
    assert len(text) < 1000
