"""The on-disk upload queue: persistence across kill -9, idempotent enqueue, dead-letter keeps audio, retention."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.errors import ArchiveError, InputError
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


DEEP = b'{"item_id": "x", "zz": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("0123456789abcdef0123456789abcdef.json", b"\x00garbage", "unreadable queue item"),
        ("0123456789abcdef0123456789abcdef.json", b'{"item_id": "0123", "appointment_id": "a', "unreadable queue item"),
        ("0123456789abcdef0123456789abcdef.json", b"", "unreadable queue item: empty"),
        ("0123456789abcdef0123456789abcdef.json", DEEP[:60_000], "unreadable queue item"),
        ("0123.json", b"{}", "the file name is not a queue item id"),
        ("..json", b"{}", "the file name is not a queue item id"),
    ],
)  # fmt: skip
def test_unusable_item_is_quarantined_with_its_bytes_never_deleted(
    settings: UploadSettings, wav: Path, name: str, content: bytes, reason: str
) -> None:
    queue = UploadQueue(settings, clock=Clock())
    good = queue.enqueue("apt-42", wav)
    bad = Path(settings.queue_dir) / name
    bad.write_bytes(content)
    assert queue.items() == [good]
    assert not bad.exists()
    [kept] = queue.quarantined()
    assert kept.path == Path(settings.queue_dir) / "quarantine" / name
    assert kept.path.read_bytes() == content and kept.reason.startswith(reason)
    assert queue.items() == [good] and len(queue.quarantined()) == 1  # settled: not reported twice


def item_json(queue: UploadQueue, wav: Path, **fields: object) -> bytes:
    base = {"item_id": "0" * 32, "appointment_id": "apt-1", "audio_path": str(wav), "sha256": "0" * 64,
            "size": wav.stat().st_size, "created_at": T0, "owned": True}  # fmt: skip
    return json.dumps({**base, **fields}).encode()


def test_deeply_nested_item_is_quarantined_not_recursion_error(settings: UploadSettings, wav: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    path = Path(settings.queue_dir) / ("a" * 32 + ".json")
    path.write_bytes(item_json(queue, wav)[:-1] + b', "zz": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
    assert queue.items() == [] and queue.dead_items() == []
    assert [q.reason for q in queue.quarantined()] == ["unreadable queue item: nested too deeply to be ours"]


def test_id_inside_the_file_is_never_a_path(settings: UploadSettings, wav: Path, tmp_path: Path) -> None:
    queue = UploadQueue(settings, clock=Clock())
    name = "b" * 32
    (Path(settings.queue_dir) / f"{name}.json").write_bytes(item_json(queue, wav, item_id="../../escaped"))
    [item] = queue.items()
    assert item.item_id == name  # the file name counts
    queue.save(item)
    queue.dead_letter(item, "test")
    assert not list(tmp_path.rglob("escaped*"))
    assert [p.name for p in Path(settings.queue_dir, "dead").glob("*.json")] == [f"{name}.json"]
    item.item_id = "../../escaped"
    with pytest.raises(ArchiveError, match="not 32 hex digits"):
        queue.save(item)
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("appointment_id", ["", "..", "a/../../b", "x" * 200])
def test_item_with_an_impossible_appointment_id_is_quarantined(
    settings: UploadSettings, wav: Path, appointment_id: str
) -> None:
    queue = UploadQueue(settings, clock=Clock())
    (Path(settings.queue_dir) / ("c" * 32 + ".json")).write_bytes(item_json(queue, wav, appointment_id=appointment_id))
    assert queue.items() == []
    [kept] = queue.quarantined()
    assert kept.reason.startswith("unusable queue item:") and wav.exists()
    with pytest.raises(InputError):
        queue.enqueue(appointment_id, wav)


def test_fifo_or_link_posing_as_an_item_is_quarantined_without_blocking(settings: UploadSettings) -> None:
    queue = UploadQueue(settings, clock=Clock())
    os.mkfifo(Path(settings.queue_dir) / ("d" * 32 + ".json"))
    (Path(settings.queue_dir) / ("e" * 32 + ".json")).symlink_to("/dev/zero")
    assert queue.items() == []
    assert sorted(q.reason for q in queue.quarantined()) == [
        "unreadable queue item: a symbolic link, not a file the agent wrote",
        "unreadable queue item: not a regular file",
    ]


def test_items_set_aside_by_an_older_version_are_quarantined(settings: UploadSettings) -> None:
    queue = UploadQueue(settings, clock=Clock())
    (Path(settings.queue_dir) / "0123.json.unreadable").write_bytes(b"old")
    assert queue.items() == []
    [kept] = queue.quarantined()
    assert kept.path.read_bytes() == b"old" and "earlier version" in kept.reason


def test_queue_files_are_private(tmp_path: Path, wav: Path) -> None:
    old = os.umask(0)
    try:
        queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q" / "nested")), clock=Clock())
        item = queue.enqueue("apt-1", wav)
        with queue.uploading():
            pass
        queue.dead_letter(item, "test")
    finally:
        os.umask(old)
    created = [p for p in (tmp_path / "q").rglob("*") if p.suffix != ".wav"]  # the audio was the test's file
    assert {p.suffix for p in created} == {"", ".json", ".txt"} and (tmp_path / "q" / "nested" / ".lock").exists()
    for path in [tmp_path / "q", *created]:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_item_of_an_older_version_never_moves_or_deletes_its_file(settings: UploadSettings, tmp_path: Path) -> None:
    operators = make_wav(tmp_path / "operators-own.wav", 0.2)
    original = operators.read_bytes()
    queue = UploadQueue(settings, clock=Clock())
    (Path(settings.queue_dir) / ("f" * 32 + ".json")).write_bytes(
        item_json(queue, operators, owned=False, state="done", uploaded_at=T0)
    )
    assert queue.purge_expired(T0 + 1e9) == 1
    assert operators.read_bytes() == original
    (Path(settings.queue_dir) / ("9" * 32 + ".json")).write_bytes(item_json(queue, operators, owned=False))
    [item] = queue.items()
    dead = queue.dead_letter(item, "appointment not found on MediSync (HTTP 404)")
    assert dead.audio_path == str(operators) and operators.read_bytes() == original


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
    assert stat.S_IMODE(Path(item.audio_path).stat().st_mode) == 0o600  # patient audio, whatever the umask
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
