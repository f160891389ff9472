"""The visit audit trail: an append-only, fsynced JSON-lines file of what happened to each visit, ids and times only.

Not to be confused with :mod:`agent.audit` (the live stream's sample audit). One line per event::

    {"at": 1764200000.123, "event": "started", "visit": "<session uuid>", "appointment": "<MediSync id>"}

Events: ``consent`` (given, declined or not-asked), ``started``, ``paused``, ``resumed``, ``stopped``, ``gap``,
``archived``, ``upload_confirmed`` and ``deleted`` (local audio removed after retention). The fields are a fixed
schema (:class:`AuditEvent`): ids, timeline sample indices, seconds, a reason word. Nothing else can be written, so
no patient name, appointment content or audio ever reaches the file.

Durability: each append takes an exclusive ``flock`` on ``audit.lock`` (the daemon, ``run`` and the upload worker
may write at once), ends a torn last line left by a writer killed mid-write (a newline, so only that line is lost
and the new one stays whole), rotates by size (``audit.jsonl`` -> ``audit.jsonl.1`` ..., ``audit.rotate_bytes``,
``audit.keep_files``), writes the line with one ``write`` and fsyncs it before returning. Files are 0600 in a 0700
folder. The reader skips (and counts) lines that do not decode, so a torn line never hides the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from agent.archive.storage import FILE_MODE, ensure_private_dir, fsync_directory, open_private_append
from agent.errors import ArchiveError
from agent.settings import AgentSettings, AuditSettings

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
LOCK_FILE = "audit.lock"
MAX_LINE_BYTES = 4096
"""Longest line the reader accepts; longer ones are counted as unreadable."""

EventName = Literal["consent", "started", "paused", "resumed", "stopped", "gap", "archived", "upload_confirmed",
                    "deleted"]  # fmt: skip


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    at: float
    """Unix seconds when the event happened."""
    event: EventName
    visit: str = ""
    """The visit's id (its speech session uuid; no patient data)."""
    appointment: str = ""
    """The opaque MediSync appointment id (never a name)."""
    item: str = ""
    """Upload queue item id, for ``archived``, ``upload_confirmed`` and ``deleted``."""
    consent: str = ""
    """``given``, ``declined`` or ``not-asked`` (``consent`` events)."""
    start: int | None = None
    """Timeline index (16 kHz samples) where a pause or gap begins."""
    end: int | None = None
    """Timeline index one past a pause or gap, or the visit's length (``stopped``)."""
    seconds: float | None = None
    """Duration in seconds: a pause (``resumed``), paused in total (``stopped``)."""
    reason: str = ""
    """One word: a gap's reason, how a visit stopped (``stop``, ``end``, ``duration``, ``error``), ``recovered``
    (``archived``: queued by a later start after a crash), ``late`` (``upload_confirmed`` written by a later start:
    a crash fell between the upload's confirmation and its line; ``at`` is still the confirmation's time)."""


class _HasItem(Protocol):
    @property
    def item_id(self) -> str: ...
    @property
    def appointment_id(self) -> str: ...


@dataclass(frozen=True)
class UploadedItem:
    """An upload queue item MediSync confirmed, as the trail needs it."""

    item_id: str
    appointment_id: str
    uploaded_at: float
    """Unix seconds when MediSync confirmed it."""


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """An upload queue item on disk, as the trail needs it to find a missing ``archived`` line."""

    item_id: str
    appointment_id: str
    created_at: float
    """Unix seconds when the item was queued."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEvent)


def audit_dir(settings: AgentSettings) -> Path:
    """``audit.directory``, or the folder ``audit`` beside the archive folder when it is empty."""
    if settings.audit.directory:
        return Path(settings.audit.directory)
    return Path(settings.archive.directory).parent / "audit"


def encode(event: AuditEvent) -> bytes:
    return _encoder.encode(event) + b"\n"


class AuditLog:
    """Appends events to the trail in ``directory``; safe across processes and threads (flock per append)."""

    def __init__(self, directory: Path, settings: AuditSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.path = directory / AUDIT_FILE
        self._settings = settings
        self._clock = clock

    @classmethod
    def for_settings(cls, settings: AgentSettings, *, clock: Callable[[], float] = time.time) -> AuditLog:
        return cls(audit_dir(settings), settings.audit, clock=clock)

    def append(self, event: EventName, **fields: str | int | float | None) -> AuditEvent:
        """Write one event durably (fsynced) before returning it; ArchiveError when the disk refuses."""
        record = AuditEvent(at=self._clock(), event=event, **fields)  # type: ignore[arg-type]
        try:
            ensure_private_dir(self.directory)
            with self._locked():
                self._write(record)
        except OSError as exc:
            raise ArchiveError(f"cannot write the audit trail in {self.directory}: {exc.strerror or exc}") from None
        return record

    def confirm_missing(self, uploaded: list[UploadedItem]) -> list[AuditEvent]:
        """Write ``upload_confirmed`` (reason ``late``, at the upload's own time) for each uploaded item the trail
        does not confirm: the agent marks an item done, then writes the line, and a power cut can fall between.
        Items uploaded before the trail's oldest readable event are left alone (their line may have rotated
        away). Read and written under the trail's lock, so two processes starting together write it once."""

        def missing(trail: tuple[AuditEvent, ...]) -> Iterator[AuditEvent]:
            confirmed = {e.item for e in trail if e.event == "upload_confirmed"}
            oldest = trail[0].at if trail else 0.0
            for item in uploaded:
                if item.item_id not in confirmed and item.uploaded_at >= oldest:
                    yield AuditEvent(at=item.uploaded_at, event="upload_confirmed", item=item.item_id,
                                     appointment=item.appointment_id, reason="late")  # fmt: skip

        return self._write_missing(missing)

    def archive_missing(self, queued: list[QueuedItem]) -> list[AuditEvent]:
        """Write ``archived`` (reason ``late``, at the item's own queue time) for each queued item the trail has no
        ``archived`` line of: a visit queues its recording, then writes ``stopped`` and ``archived``, and a kill can
        fall between. Only items of an appointment a visit recorded (its ``started`` is in the trail) and that has
        no ``archived`` line yet: an operator's file (``uploads add``) has no visit. Items queued before the
        trail's oldest readable event are left alone, as in :meth:`confirm_missing`; read and written under the
        trail's lock."""

        def missing(trail: tuple[AuditEvent, ...]) -> Iterator[AuditEvent]:
            archived = {e.item for e in trail if e.event == "archived"}
            archived |= {e.appointment for e in trail if e.event == "archived"}
            recorded = {e.appointment for e in trail if e.event == "started" and e.visit}
            oldest = trail[0].at if trail else 0.0
            for item in queued:
                if (not {item.item_id, item.appointment_id} & archived and item.appointment_id in recorded
                        and item.created_at >= oldest):  # fmt: skip
                    yield AuditEvent(at=item.created_at, event="archived", item=item.item_id,
                                     appointment=item.appointment_id, reason="late")  # fmt: skip

        return self._write_missing(missing)

    def _write_missing(self, missing: Callable[[tuple[AuditEvent, ...]], Iterator[AuditEvent]]) -> list[AuditEvent]:
        """Under the trail's lock: read it, write the lines ``missing`` says it lacks; the lines written."""
        written: list[AuditEvent] = []
        try:
            ensure_private_dir(self.directory)
            with self._locked():
                for record in missing(read_events(self.directory).events):
                    self._write(record)
                    written.append(record)
        except OSError as exc:
            raise ArchiveError(f"cannot write the audit trail in {self.directory}: {exc.strerror or exc}") from None
        return written

    def _write(self, record: AuditEvent) -> None:
        line = encode(record)
        self._rotate_if_full(len(line))
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            _end_torn_line(fd)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_private_append(self.directory / LOCK_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _rotate_if_full(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + adding <= self._settings.rotate_bytes:
            return
        keep = self._settings.keep_files
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{AUDIT_FILE}.{keep}").unlink()
        for n in range(keep - 1, 0, -1):
            older = self.directory / f"{AUDIT_FILE}.{n}"
            if older.exists():
                older.rename(self.directory / f"{AUDIT_FILE}.{n + 1}")
        self.path.rename(self.directory / f"{AUDIT_FILE}.1")
        fsync_directory(self.directory)


def _end_torn_line(fd: int) -> None:
    """A writer killed mid-line left no newline at the end: end that line so the next one stays readable."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


@dataclass(frozen=True, slots=True)
class AuditRead:
    events: tuple[AuditEvent, ...]
    """Every readable event, oldest first (rotated files first)."""
    unreadable: int
    """Lines skipped: torn by a kill, or not an audit event."""


def audit_files(directory: Path) -> list[Path]:
    """The trail's files, oldest first: ``audit.jsonl.N`` ... ``audit.jsonl.1``, ``audit.jsonl``."""
    rotated = []
    for path in directory.glob(f"{AUDIT_FILE}.*"):
        suffix = path.name.removeprefix(AUDIT_FILE + ".")
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    current = [directory / AUDIT_FILE] if (directory / AUDIT_FILE).exists() else []
    return [p for _, p in sorted(rotated, reverse=True)] + current


def read_events(directory: Path) -> AuditRead:
    events: list[AuditEvent] = []
    unreadable = 0
    for path in audit_files(directory):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated away while we listed
            continue
        except OSError as exc:
            raise ArchiveError(f"cannot read the audit trail {path}: {exc.strerror or exc}") from None
        for line in data.split(b"\n"):
            event = decode_line(line)
            if event is None:
                unreadable += bool(line.strip())
            else:
                events.append(event)
    return AuditRead(tuple(events), unreadable)


def decode_line(line: bytes) -> AuditEvent | None:
    """One line -> event; None for a blank, torn or foreign line."""
    if not line.strip() or len(line) > MAX_LINE_BYTES:
        return None
    try:
        return _decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None


def for_visit(events: tuple[AuditEvent, ...], visit_id: str) -> list[AuditEvent]:
    """The events of one visit, and those of its upload that name no visit (``upload_confirmed``, ``deleted``, a
    recovered ``archived``): by its upload item, or by its appointment (MediSync keeps one recording per
    appointment)."""
    items = {e.item for e in events if e.visit == visit_id and e.item}
    appointments = {e.appointment for e in events if e.visit == visit_id and e.event == "started" and e.appointment}
    return [e for e in events if e.visit == visit_id
            or (not e.visit and ((e.item and e.item in items) or e.appointment in appointments))]  # fmt: skip


def queue_listener(audit: AuditLog) -> Callable[[str, _HasItem], None]:
    """An ``UploadQueue.on_event`` that records ``upload_confirmed``, ``deleted`` and ``recovered`` (a visit cut
    short by a crash, queued on the next start: ``archived`` with reason ``recovered``). Errors are logged, not
    raised: the upload or the recovery itself succeeded."""

    def hear(event: str, item: _HasItem) -> None:
        if event not in ("upload_confirmed", "deleted", "recovered"):
            return
        name: EventName = "archived" if event == "recovered" else event  # type: ignore[assignment]
        try:
            audit.append(name, item=item.item_id, appointment=item.appointment_id,
                         reason="recovered" if event == "recovered" else "")  # fmt: skip
        except ArchiveError as exc:
            log.error("audit trail: %s (%s not recorded)", exc, event)

    return hear


class _DoneItem(_HasItem, Protocol):
    @property
    def state(self) -> str: ...
    @property
    def uploaded_at(self) -> float | None: ...
    @property
    def created_at(self) -> float: ...


def confirm_uploads(audit: AuditLog, items: Iterable[_DoneItem]) -> None:
    """At a start: the trail gets the ``archived`` and ``upload_confirmed`` lines a crash kept it from (see
    :meth:`AuditLog.archive_missing` and :meth:`AuditLog.confirm_missing`). Errors are logged, not raised: the
    recordings and uploads themselves are done."""
    items = list(items)
    queued = [QueuedItem(i.item_id, i.appointment_id, i.created_at) for i in items]
    uploaded = [UploadedItem(i.item_id, i.appointment_id, i.uploaded_at)
                for i in items if i.state == "done" and i.uploaded_at is not None]  # fmt: skip
    if not queued:
        return
    try:
        archived = audit.archive_missing(queued)
        written = audit.confirm_missing(uploaded) if uploaded else []
    except ArchiveError as exc:
        log.error("audit trail: %s (queued recordings and upload confirmations not checked)", exc)
        return
    for record in archived:
        log.warning("audit trail: upload item %s was queued without its 'archived' line (the agent stopped in "
                    "between); written now with reason 'late'", record.item[:8])  # fmt: skip
    for record in written:
        log.warning("audit trail: upload item %s was confirmed without its line (the agent stopped in between); "
                    "written now with reason 'late'", record.item[:8])  # fmt: skip
