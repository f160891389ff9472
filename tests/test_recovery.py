"""What a power cut leaves in the archive folder, settled on the next start (agent.archive.recovery, intake.assign):
each journal case (intact, deleted, emptied, torn, deeply nested, lying), live visits left alone, empty recordings
removed, torn headers rewritten, orphans listed and assignable. Process-level kill -9 tests: test_power_cut.py."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.archive import intake
from agent.archive.journal import OpenJournal, VisitJournal, journal_path_for
from agent.archive.recovery import Recovery, find_orphans, recover
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.archive.wav import FILE_MODE, wav_header
from agent.errors import InputError
from agent.settings import UploadSettings
from tests.plugins.archive import wav_pcm
from tests.test_upload_queue import Clock, make_wav


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    return folder


@pytest.fixture
def queue(tmp_path: Path) -> UploadQueue:
    return UploadQueue(UploadSettings(queue_dir=str(tmp_path / "queue")), clock=Clock())


def pcm(samples: int, seed: int = 3) -> bytes:
    return np.random.default_rng(seed).integers(-9000, 9000, samples, dtype=np.int16).tobytes()


def crashed_visit(archive: Path, name: str, audio: bytes, *, header_bytes: int = 0, appointment: str = "apt-1",
                  journal: bytes | None = None) -> Path:  # fmt: skip
    """A visit as kill -9 leaves it: ``.partial`` whose header says ``header_bytes``, and its journal."""
    final = archive / f"{name}.wav"
    partial = final.with_name(final.name + ".partial")
    partial.write_bytes(wav_header(header_bytes) + audio)
    os.chmod(partial, FILE_MODE)
    if journal is None:
        journal = msgspec.json.encode(VisitJournal(appointment_id=appointment, session_id="s", started_at=1.0,
                                                   wav=final.name))  # fmt: skip
    journal_path_for(final).write_bytes(journal)
    return final


def test_journaled_visit_is_repaired_and_queued_for_its_appointment(archive: Path, queue: UploadQueue) -> None:
    final = crashed_visit(archive, "visit-1", pcm(16000))
    report = recover(archive, queue)
    [item] = report.queued
    assert (item.appointment_id, item.audio_path, item.owned) == ("apt-1", str(final), True)
    assert wav_pcm(final) == pcm(16000)
    assert list(archive.iterdir()) == [final] and report.orphans == [] and report.quarantined == []
    assert recover(archive, queue).queued == []  # once


JOURNAL_DAMAGE = {
    "deleted": None,
    "emptied": b"",
    "torn": b'{"appointment_id": "apt-1", "session_id": "s", "star',
    "garbage": b"\x00\x00\x00\x00",
    "deeply nested": b'{"appointment_id": "apt-1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "lying about its file": msgspec.json.encode(
        VisitJournal(appointment_id="apt-1", session_id="s", started_at=1.0, wav="../../../etc/passwd")),
    "impossible appointment": msgspec.json.encode(
        VisitJournal(appointment_id="../x", session_id="s", started_at=1.0, wav="visit-1.wav")),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(JOURNAL_DAMAGE))
def test_damaged_journal_leaves_an_orphan_to_assign_never_a_loss(
    archive: Path, queue: UploadQueue, damage: str
) -> None:
    final = crashed_visit(archive, "visit-1", pcm(8000), journal=JOURNAL_DAMAGE[damage] or b"{}")
    journal = journal_path_for(final)
    content = journal.read_bytes()
    if JOURNAL_DAMAGE[damage] is None:
        journal.unlink()

    report = recover(archive, queue)

    assert report.queued == [] and queue.items() == []
    [orphan] = report.orphans
    assert orphan.path == final and orphan.seconds == 0.5 and wav_pcm(final) == pcm(8000)
    assert not journal.exists()
    if JOURNAL_DAMAGE[damage] is not None:  # quarantined with its bytes, listed with the reason
        [kept] = report.quarantined
        assert kept.path == archive / "quarantine" / journal.name and kept.path.read_bytes() == content
        assert "visit journal" in kept.reason
    item = intake.assign(queue, archive, Path(final.name), "apt-1")
    assert (item.appointment_id, item.audio_path, item.state) == ("apt-1", str(final), ItemState.PENDING)
    assert find_orphans(archive, queue) == []


def test_live_visit_is_left_alone(archive: Path, queue: UploadQueue) -> None:
    import fcntl

    final = crashed_visit(archive, "visit-1", pcm(4000))
    partial = final.with_name(final.name + ".partial")
    journal_fd = os.open(journal_path_for(final), os.O_RDONLY)
    partial_fd = os.open(partial, os.O_RDWR)
    try:
        fcntl.flock(journal_fd, fcntl.LOCK_EX)  # what a running visit holds
        fcntl.flock(partial_fd, fcntl.LOCK_EX)
        report = recover(archive, queue)
        assert report.queued == [] and report.orphans == [] and report.quarantined == []
        assert partial.read_bytes() == wav_header(0) + pcm(4000) and journal_path_for(final).exists()
        with pytest.raises(InputError, match="not a recording waiting for an appointment"):
            intake.assign(queue, archive, partial, "apt-2")
    finally:
        os.close(journal_fd)
        os.close(partial_fd)
    assert [i.appointment_id for i in recover(archive, queue).queued] == ["apt-1"]  # once its process is gone


def test_journal_of_a_visit_about_to_record_is_left_alone(archive: Path, queue: UploadQueue) -> None:
    """Between the journal and the first audio byte there is no ``.partial`` yet: only the journal's lock says live."""
    final = archive / "visit-2.wav"
    opened = OpenJournal.write(final, VisitJournal(appointment_id="apt-2", session_id="s", started_at=1.0,
                                                   wav=final.name))  # fmt: skip
    try:
        assert recover(archive, queue) == Recovery()
        assert opened.path.exists()
    finally:
        opened.release()
    recover(archive, queue)
    assert not opened.path.exists()  # its process is gone and it never recorded: nothing to keep


@pytest.mark.parametrize("journaled", [True, False])
@pytest.mark.parametrize("content", [b"", wav_header(0)[:20], wav_header(0)])
def test_recording_without_audio_is_removed_and_the_appointment_stays_free(
    archive: Path, queue: UploadQueue, journaled: bool, content: bytes
) -> None:
    final = crashed_visit(archive, "visit-1", b"")
    final.with_name(final.name + ".partial").write_bytes(content)
    if not journaled:
        journal_path_for(final).unlink()
    report = recover(archive, queue)
    assert report.queued == [] and report.orphans == [] and report.quarantined == []
    assert list(archive.iterdir()) == [] and queue.find("apt-1") is None


def test_torn_header_of_our_own_archive_is_rewritten(archive: Path, queue: UploadQueue) -> None:
    final = crashed_visit(archive, "visit-1", pcm(3200))
    partial = final.with_name(final.name + ".partial")
    data = bytearray(partial.read_bytes())
    data[0:44] = os.urandom(44)  # the power cut hit the periodic header rewrite
    partial.write_bytes(bytes(data))
    [item] = recover(archive, queue).queued
    assert wav_pcm(final) == pcm(3200) and item.appointment_id == "apt-1"


def test_foreign_unrepairable_partial_is_quarantined_with_its_bytes(archive: Path, queue: UploadQueue) -> None:
    foreign = archive / "notes.wav.partial"
    foreign.write_bytes(b"not a wav at all, but kept" * 10)
    report = recover(archive, queue)
    [kept] = report.quarantined
    assert kept.path.read_bytes() == b"not a wav at all, but kept" * 10 and "not a partial WAV" in kept.reason
    assert report.orphans == []


def test_visit_queued_just_before_the_cut_is_not_queued_twice(archive: Path, queue: UploadQueue) -> None:
    final = crashed_visit(archive, "visit-1", pcm(1600))
    final.with_name(final.name + ".partial").rename(final)
    first = queue.enqueue("apt-1", final)  # the journal was still there when the power went
    report = recover(archive, queue)
    assert report.queued == [] and queue.items() == [first] and not journal_path_for(final).exists()


def test_audio_of_a_quarantined_item_is_listed_and_assignable(archive: Path, queue: UploadQueue) -> None:
    wav = make_wav(archive / "visit-2.wav", 0.25)
    item = queue.enqueue("apt-9", wav)
    (queue.directory / f"{item.item_id}.json").write_bytes(b'{"item_id": "' + item.item_id.encode() + b'", "app')
    report = recover(archive, queue)
    assert [o.path for o in report.orphans] == [wav] and len(report.quarantined) == 1
    assigned = intake.assign(queue, archive, wav, "apt-9")
    assert assigned.audio_path == str(wav) and assigned.item_id != item.item_id


def test_assign_refuses_what_it_must_not_touch(archive: Path, queue: UploadQueue, tmp_path: Path) -> None:
    outside = make_wav(tmp_path / "operators.wav", 0.1)
    queued = queue.enqueue("apt-1", make_wav(archive / "visit-q.wav", 0.1))
    orphan = make_wav(archive / "visit-o.wav", 0.1)
    cases = [
        (outside, "apt-2", "is not in the agent's archive folder"),
        (Path(queued.audio_path), "apt-2", "not a recording waiting for an appointment"),
        (Path("visit-none.wav"), "apt-2", "no such recording"),
        (orphan, "", "an appointment id is needed"),
        (orphan, "a b", "may only contain"),
        (orphan, "apt-1", "already has a recording in the upload queue"),
    ]
    for file, appointment, message in cases:
        with pytest.raises(InputError, match=message):
            intake.assign(queue, archive, file, appointment)
    assert outside.exists() and orphan.exists() and len(queue.items()) == 1


def test_older_items_own_only_what_lies_in_the_archive(archive: Path, queue: UploadQueue, tmp_path: Path) -> None:
    visit = queue.enqueue("apt-1", make_wav(archive / "visit-old.wav", 0.1))
    added = queue.enqueue("apt-2", make_wav(tmp_path / "operators.wav", 0.1))
    for item in (visit, added):  # as an older version wrote them: no "owned" field at all
        path = queue.directory / f"{item.item_id}.json"
        path.write_bytes(path.read_bytes().replace(b',"owned":true', b""))
    assert not any(i.owned for i in queue.items())
    recover(archive, queue)
    assert {i.appointment_id: i.owned for i in queue.items()} == {"apt-1": True, "apt-2": False}
