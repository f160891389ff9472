"""The visit journal: ``<archive stem>.visit.json`` beside a visit's archive, naming its appointment while it records.

A visit writes its journal before the first audio byte (atomically, 0600, locked) and removes it once the finished
recording is on the upload queue. A journal left behind means a visit that kill -9 or a power cut interrupted:
:mod:`agent.archive.recovery` repairs and queues its recording on the next start.

The journal's file name is authoritative for which recording it belongs to (``visit-X.visit.json`` ->
``visit-X.wav``); the ``wav`` field inside is only checked against it. While its visit runs, the journal holds an
exclusive ``flock`` (taken before the file appears under its name), so a recovery running at the same time in
another process (``uploads list`` during a daemon visit) leaves the live visit alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from agent.archive.repair import is_being_recorded
from agent.archive.storage import decode_state, describe_os_error, ensure_private_dir, read_state, write_atomic_locked
from agent.errors import ArchiveError

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".visit.json"


class VisitJournal(msgspec.Struct, frozen=True, kw_only=True):
    """What a crashed visit needs to be uploaded on the next start (no patient data: ids only)."""

    appointment_id: str
    session_id: str
    started_at: float
    """Unix seconds."""
    wav: str
    """Final archive file name (the ``.partial`` sits beside it while recording)."""


_decoder = msgspec.json.Decoder(VisitJournal)


def journal_path_for(archive_path: Path) -> Path:
    return archive_path.with_name(archive_path.stem + JOURNAL_SUFFIX)


def archive_name_for(journal_path: Path) -> str:
    """The recording a journal belongs to, from the journal's own file name."""
    return journal_path.name.removesuffix(JOURNAL_SUFFIX) + ".wav"


def find_journals(archive_dir: Path) -> list[Path]:
    return sorted(p for p in archive_dir.glob(f"*{JOURNAL_SUFFIX}") if not p.name.startswith("."))


def read_journal(path: Path) -> VisitJournal:
    """Raises storage.Unreadable (torn, empty, garbage, too deep or large), FileNotFoundError, OSError."""
    return read_state(path, _decoder)


def decode_journal(data: bytes) -> VisitJournal:
    return decode_state(data, _decoder)


def is_live(path: Path) -> bool:
    """True while the visit that wrote the journal is still running (it holds the journal's lock)."""
    return is_being_recorded(path)


class OpenJournal:
    """The journal of the visit recording now; :meth:`remove` once its recording is queued."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def write(cls, archive_path: Path, journal: VisitJournal) -> OpenJournal:
        """Create the archive folder (0700) and the journal, durable and locked. ArchiveError if the disk refuses."""
        path = journal_path_for(archive_path)
        try:
            ensure_private_dir(path.parent)
            fd = write_atomic_locked(path, msgspec.json.encode(journal))
        except OSError as exc:
            raise ArchiveError(f"cannot write to the archive folder {path.parent}: {describe_os_error(exc)}") from exc
        return cls(path, fd)

    def remove(self) -> None:
        """The visit's recording is on the queue (or was discarded): the journal is no longer needed."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Let go of the lock without removing the journal (the visit failed: the next start recovers it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
