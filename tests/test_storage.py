"""The agent's own files: private whatever the umask, atomic, read back bounded and without RecursionError,
quarantined (never deleted) when they cannot be used."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.archive import journal
from agent.archive.storage import (
    Unreadable,
    copy_private,
    ensure_private_dir,
    list_quarantine,
    quarantine,
    read_state,
    write_atomic,
    write_atomic_locked,
)


class Thing(msgspec.Struct):
    name: str


DECODER = msgspec.json.Decoder(Thing)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_folders_and_files_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        folder = ensure_private_dir(tmp_path / "a" / "b")
        write_atomic(folder / "x.json", b'{"name": "x"}')
        fd = write_atomic_locked(folder / "y.json", b'{"name": "y"}')
        os.close(fd)
    assert mode(tmp_path / "a") == mode(folder) == 0o700
    assert mode(folder / "x.json") == mode(folder / "y.json") == 0o600
    assert read_state(folder / "x.json", DECODER) == Thing("x")
    assert sorted(p.name for p in folder.iterdir()) == ["x.json", "y.json"]  # no temporary file left


def test_atomic_write_replaces_whole_content(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_atomic(path, b'{"name": "first"}')
    write_atomic(path, b'{"name": "second, longer"}')
    assert read_state(path, DECODER) == Thing("second, longer")


def test_locked_write_is_seen_as_live_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "v.visit.json"
    fd = write_atomic_locked(path, b"{}")
    assert journal.is_live(path)
    os.close(fd)
    assert not journal.is_live(path)


def deep(levels: int) -> bytes:
    return b'{"name": "x", "extra": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"name": "x', "truncated"),
        (b"\x00\xff garbage", "invalid"),
        (deep(100_000)[:60_000], "nested too deeply|truncated"),
        (deep(5_000), "nested too deeply"),
        (b'{"name": 3}', "Expected `str`"),
        (b'{"name": "' + b"x" * 70_000 + b'"}', "more than the 65536"),
    ],
)  # fmt: skip
def test_unreadable_state_raises_one_line_never_recursion_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(Unreadable, match=reason) as info:
        read_state(path, DECODER)
    assert "\n" not in str(info.value)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # would block a plain open() forever
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")  # would never end
    folder = tmp_path / "dir.json"
    folder.mkdir()
    for path, reason in ((fifo, "not a regular file"), (link, "symbolic link"), (folder, "not a regular file")):
        with pytest.raises(Unreadable, match=reason):
            read_state(path, DECODER)
    with pytest.raises(FileNotFoundError):
        read_state(tmp_path / "gone.json", DECODER)


def test_quarantine_keeps_bytes_and_reason_and_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "quarantine"
    for content in (b"first", b"second"):
        (tmp_path / "item.json").write_bytes(content)
        assert quarantine(tmp_path / "item.json", folder, "torn\nin two") is not None
    found = list_quarantine(folder)
    assert [(q.path.name, q.reason) for q in found] == [("item.json", "torn in two"), ("item.json.2", "torn in two")]
    assert [q.path.read_bytes() for q in found] == [b"first", b"second"]
    assert mode(folder) == 0o700
    assert quarantine(tmp_path / "item.json", folder, "gone") is None  # another process took it first


def test_copy_refuses_a_file_that_changes_size(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"x" * 1000)
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="changed while it was copied"):
            copy_private(fd, 500, tmp_path / "copy")
        copy_private(fd, 1000, tmp_path / "copy")
    finally:
        os.close(fd)
    assert (tmp_path / "copy").read_bytes() == source.read_bytes() and mode(tmp_path / "copy") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "src"]


def test_visit_journal_is_private_durable_and_locked_before_any_audio(tmp_path: Path) -> None:
    archive = tmp_path / "recordings" / "room-3"
    entry = journal.VisitJournal(appointment_id="apt-1", session_id="s", started_at=1.0, wav="visit-1.wav")
    with umask(0o000):
        opened = journal.OpenJournal.write(archive / "visit-1.wav", entry)
    try:
        assert opened.path == archive / "visit-1.visit.json"
        assert mode(tmp_path / "recordings") == mode(archive) == 0o700 and mode(opened.path) == 0o600
        assert journal.read_journal(opened.path) == entry and journal.is_live(opened.path)
        assert sorted(p.name for p in archive.iterdir()) == ["visit-1.visit.json"]
    finally:
        opened.remove()
    assert list(archive.iterdir()) == [] and not journal.is_live(opened.path)
