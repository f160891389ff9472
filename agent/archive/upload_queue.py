"""The on-disk upload queue: visit recordings waiting for MediSync's recordings endpoint, surviving kill -9 and reboot.

Thin I/O around :mod:`agent.archive.upload_policy`. Layout of ``UploadSettings.queue_dir`` (folders 0700, files 0600)::

    <item id>.json            one item (msgspec JSON), written atomically: temp file, fsync, rename, directory fsync
    dead/<id>.json            dead-lettered item, its audio moved next to it when the agent owns it (never deleted) ...
    dead/<id>.reason.txt      ... with the reason in one line, for a person
    quarantine/<name>         an item file the queue could not use (torn, garbage, too deep, bad id), with
    quarantine/<name>.reason.txt  the reason; shown by ``uploads list``, never deleted
    .lock                     flock held while a process uploads, so a CLI retry and the daemon never race

An item id is 32 hex digits and is its file's name; the file name is authoritative (an id inside the file is never
used to build a path). No patient data in names: the appointment id (an opaque MediSync id) lives inside.
The audio stays where the archive wrote it until it is uploaded and retention expires, or is dead-lettered. Only
audio the agent created (``owned``: its own visits, its copies of operators' files) is ever moved or deleted.

Use: ``queue.enqueue(appointment_id, wav_path)`` when a visit ends (blocking: may hash and MP3-encode a large
visit, call it in a worker thread), then :mod:`agent.archive.upload_runner` uploads (``drain`` for one pass, ``run``
until cancelled) with the MediSync client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.archive import locks
from agent.archive.keys import ArchiveKeys
from agent.archive.repair import is_being_recorded, repair_partial
from agent.archive.sealed import PlainDigest, destroy, is_sealed, plain_digest
from agent.archive.storage import (
    Quarantined,
    Unreadable,
    describe_os_error,
    ensure_private_dir,
    fsync_directory,
    list_quarantine,
    quarantine,
    read_state,
    write_atomic,
)
from agent.archive.upload_item import QueuedAudio, UploadItem, item_decoder, item_encoder, sha256_of, uploadable_size
from agent.archive.upload_policy import (
    HELD_RECHECK_S,
    ErrorKind,
    Failure,
    ItemState,
    retention_expired,
    seconds_until_due,
)
from agent.archive.wav import partial_path
from agent.errors import ArchiveError, DamagedRecordingError, InputError, UploadTooLargeError, WrongKeyError
from agent.ids import appointment_id_problem, is_item_id
from agent.settings import UploadSettings

log = logging.getLogger(__name__)

__all__ = ["HELD_RECHECK_S", "QueuedAudio", "UploadItem", "UploadQueue", "sha256_of"]
"""Names other modules import from here (the item and its audio live in :mod:`agent.archive.upload_item`)."""


class UploadQueue:
    """The queue folder; every method reads or writes the disk directly (no cache), so several processes agree."""

    def __init__(
        self,
        settings: UploadSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        keys: ArchiveKeys | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        """The device key: seals MP3 encodings, opens sealed recordings (hashing, encoding, uploading); None when
        ``archive.encrypt`` is off."""
        self.on_event: Callable[[str, UploadItem], None] | None = None
        """Hears ``upload_confirmed`` and ``deleted`` (retention) per item: the visit audit trail."""
        self.clock = clock
        self.rng = rng
        self.directory = Path(settings.queue_dir)
        self.dead_dir = self.directory / "dead"
        self.quarantine_dir = self.directory / "quarantine"
        try:
            ensure_private_dir(self.dead_dir)
        except OSError as exc:
            raise ArchiveError(f"cannot create upload queue folder {self.directory}: {describe_os_error(exc)}") from exc

    # --- reading ---------------------------------------------------------------------------------------------

    def items(self) -> list[UploadItem]:
        """Live items (pending, blocked, done), oldest first. Unusable files are quarantined, never deleted."""
        found = []
        for legacy in self.directory.glob("*.json.unreadable"):  # what older versions set aside
            self._quarantine(legacy, "set aside as unreadable by an earlier version of the agent")
        for path in self.directory.glob("*.json"):
            item = self._load(path)
            if item is None:
                continue
            if (self.dead_dir / f"{item.item_id}.reason.txt").exists():
                self._dead_letter(item, self._reason_on_file(item))  # finish a dead-lettering cut by a crash
                continue
            found.append(item)
        return sorted(found, key=lambda i: (i.created_at, i.item_id))

    def dead_items(self) -> list[UploadItem]:
        loaded = (self._load(p) for p in self.dead_dir.glob("*.json"))
        return sorted((i for i in loaded if i is not None), key=lambda i: (i.created_at, i.item_id))

    def find(self, appointment_id: str) -> UploadItem | None:
        for item in [*self.items(), *self.dead_items()]:
            if item.appointment_id == appointment_id:
                return item
        return None

    def quarantined(self) -> list[Quarantined]:
        """Item files the queue could not use, each with its reason (kept for a person)."""
        return list_quarantine(self.quarantine_dir)

    def _load(self, path: Path) -> UploadItem | None:
        """The item in ``path``, or None when it vanished or had to be quarantined."""
        item_id = path.name.removesuffix(".json")
        if not is_item_id(item_id):
            self._quarantine(path, "the file name is not a queue item id")
            return None
        try:
            item = read_state(path, item_decoder)
        except FileNotFoundError:
            return None  # removed by another process between listing and reading
        except Unreadable as exc:
            self._quarantine(path, f"unreadable queue item: {exc}")
            return None
        except OSError as exc:  # permission, I/O error: not the file's fault, so not quarantined
            raise ArchiveError(f"cannot read upload queue item {path}: {describe_os_error(exc)}") from exc
        problem = appointment_id_problem(item.appointment_id)
        if problem is None and not Path(item.audio_path).is_absolute():
            problem = "its audio path is not absolute"
        if problem is not None:
            self._quarantine(path, f"unusable queue item: {problem}")
            return None
        if item.item_id != item_id:
            log.warning("upload queue item %s holds another id inside; its file name counts", item_id)
            item.item_id = item_id
        return item

    def _quarantine(self, path: Path, reason: str) -> None:
        try:
            quarantine(path, self.quarantine_dir, reason)
        except OSError as exc:
            raise ArchiveError(f"cannot quarantine the unusable queue file {path}: {describe_os_error(exc)}") from exc

    # --- writing ---------------------------------------------------------------------------------------------

    def save(self, item: UploadItem) -> None:
        if not is_item_id(item.item_id):  # never a path built from anything else (``../`` ...)
            raise ArchiveError("refusing to save an upload queue item whose id is not 32 hex digits")
        folder = self.dead_dir if item.state is ItemState.DEAD else self.directory
        try:
            write_atomic(folder / f"{item.item_id}.json", item_encoder.encode(item))
        except OSError as exc:
            raise ArchiveError(f"cannot write upload queue item: {exc.strerror}") from exc

    def digest_of(self, path: Path) -> PlainDigest:
        """Size and SHA-256 of what uploading ``path`` sends (a sealed file is decrypted to hash it, in memory)."""
        if is_sealed(path):
            return plain_digest(path, self.keys.opener("hashing a sealed recording") if self.keys else None)
        return PlainDigest(path.stat().st_size, sha256_of(path))

    def audio_of(self, item: UploadItem) -> QueuedAudio:
        return QueuedAudio(Path(item.audio_path), item.size, item.sha256, self.keys)

    def enqueue(self, appointment_id: str, wav_path: Path, *, digest: PlainDigest | None = None) -> UploadItem:
        """Queue a finished visit for upload; idempotent per appointment (returns the existing item).

        Blocking: hashes the file and, when it is over ``max_bytes``, encodes it to MP3 (minutes for a long visit).
        The agent must own ``wav_path`` (its archive or its copy): a dead letter moves it, retention deletes it.
        ``digest``: what the writer recorded when it finished the file (else it is taken from the file now).
        """
        problem = appointment_id_problem(appointment_id)
        if problem is not None:
            raise InputError(problem)
        wav_path = Path(os.path.abspath(wav_path))
        existing = self.find(appointment_id)
        if existing is not None and existing.held and Path(existing.audio_path) == wav_path:
            return self.release(existing, digest=digest)
        if existing is not None:
            if Path(existing.audio_path) != wav_path and Path(existing.source_path) != wav_path:
                log.warning(
                    "appointment %s already queued as item %s; %s not queued",
                    appointment_id,
                    existing.item_id,
                    wav_path.name,
                )
            return existing
        try:
            taken = digest if digest is not None else self.digest_of(wav_path)
        except OSError as exc:
            raise ArchiveError(f"cannot read visit recording {wav_path.name}: {exc.strerror}") from exc
        now = self.clock()
        item = UploadItem(
            item_id=uuid.uuid4().hex,
            appointment_id=appointment_id,
            audio_path=str(wav_path),
            sha256=taken.sha256,
            size=taken.size,
            created_at=now,
            next_attempt_at=now,
            owned=True,
        )
        self.save(item)  # first, so a crash while encoding still leaves the visit queued
        log.info("queued item %s (%d bytes) for upload", item.item_id, item.size)
        self.make_uploadable(item)
        return item

    def enqueue_held(self, appointment_id: str, wav_path: Path) -> UploadItem:
        """Queue a visit that is still recording (its WAV is ``wav_path`` once finished), held until
        :meth:`release`; idempotent per appointment. Cheap: no hashing (the file is still growing)."""
        problem = appointment_id_problem(appointment_id)
        if problem is not None:
            raise InputError(problem)
        existing = self.find(appointment_id)
        if existing is not None:
            return existing
        now = self.clock()
        item = UploadItem(item_id=uuid.uuid4().hex, appointment_id=appointment_id,
                          audio_path=os.path.abspath(wav_path), sha256="", size=0, created_at=now,
                          next_attempt_at=now, held=True, owned=True)  # fmt: skip
        self.save(item)
        log.info("queued item %s, held until its visit stops recording", item.item_id)
        return item

    def release(self, item: UploadItem, *, digest: PlainDigest | None = None) -> UploadItem:
        """Make a held item uploadable once no recorder holds its file; returns the item as it is now on disk.

        Still held when the visit is recording (its ``.partial`` is locked). A ``.partial`` left by a recorder
        that died is repaired first. Serialised across processes (the visit's end and an upload runner may both
        try): the item is read again under the lock, and one already released is returned as it is.
        """
        with self._locked(".release.lock"):
            current = self._load(self.directory / f"{item.item_id}.json")
            if current is None or not current.held:
                return current if current is not None else item
            final = Path(current.audio_path)
            partial = partial_path(final)
            if partial.exists() and not final.exists():
                if is_being_recorded(partial):
                    return current
                try:
                    digest = repair_partial(partial, identity=self.keys.identity if self.keys else None).digest
                except ArchiveError as exc:
                    if partial.exists():  # else its writer renamed it just now: the final file is there
                        log.error("upload item %s: its recording cannot be repaired yet: %s", current.item_id, exc)
                        return current
            try:
                taken = digest if digest is not None else self.digest_of(final)
                current.size, current.sha256 = taken.size, taken.sha256
            except FileNotFoundError:
                pass  # make_uploadable dead-letters it with the reason "missing"
            except OSError as exc:
                raise ArchiveError(f"cannot read visit recording {final.name}: {exc.strerror}") from exc
            current.held = False
            self.save(current)
            log.info("upload item %s released (%d bytes): its visit stopped recording", current.item_id, current.size)
            self.make_uploadable(current)  # by the one caller that released it (encoding twice would collide)
        return current

    def make_uploadable(self, item: UploadItem) -> Failure | None:
        """Encode the item's WAV to MP3 if it is over the upload limit and not encoded yet; check the file.

        Updates and saves the item. An unencodable or missing file dead-letters the item (returns the failure);
        a transient problem (disk full) is returned for the caller to back off.
        """
        if item.size > self.settings.max_bytes and not item.source_path and not item.owned:
            failure = Failure(ErrorKind.TOO_LARGE)  # encoding would write beside a file that is not ours
            self.dead_letter(item, failure.text())
            return failure
        if item.size > self.settings.max_bytes and not item.source_path:
            from agent.archive.encode import encode_recording  # lameenc and wave: only for a visit over the limit

            try:
                mp3, encoded = encode_recording(Path(item.audio_path), self.settings, keys=self.keys)
                item.size, item.sha256 = encoded.size, encoded.sha256
            except (UploadTooLargeError, InputError, FileNotFoundError) as exc:
                log.error("upload item %s cannot be encoded: %s", item.item_id, exc)
                failure = Failure(ErrorKind.TOO_LARGE)
                self.dead_letter(item, failure.text())
                return failure
            except (ArchiveError, OSError) as exc:
                log.error("upload item %s: encoding failed: %s", item.item_id, exc)
                return Failure(ErrorKind.OTHER)
            item.source_path, item.audio_path = item.audio_path, str(mp3)
            self.save(item)
        path = Path(item.audio_path)
        if not path.is_file() or uploadable_size(path) != item.size:
            damage = self._damage_of(path) if path.is_file() else None
            if damage is not None:
                log.error("upload item %s not uploaded: %s", item.item_id, damage)  # names the file and the chunk
            failure = Failure(ErrorKind.MISSING_AUDIO if damage is None else ErrorKind.DAMAGED_AUDIO)
            self.dead_letter(item, failure.text())
            return failure
        return None

    def _damage_of(self, path: Path) -> str | None:
        """Why a sealed file of the wrong length does not open (the first damaged chunk), or None."""
        if not is_sealed(path) or self.keys is None or self.keys.identity is None:
            return None
        try:
            plain_digest(path, self.keys.identity)
        except (DamagedRecordingError, WrongKeyError) as exc:
            return str(exc)
        return None

    def dead_letter(self, item: UploadItem, reason: str) -> UploadItem:
        """Move the item and its audio to ``dead/`` with a reason file. Never deletes audio."""
        try:
            write_atomic(self.dead_dir / f"{item.item_id}.reason.txt", (reason + "\n").encode())
        except OSError as exc:
            raise ArchiveError(f"cannot write dead-letter reason: {exc.strerror}") from exc
        return self._dead_letter(item, reason)

    def _dead_letter(self, item: UploadItem, reason: str) -> UploadItem:
        # Each step is idempotent, so a crash anywhere is finished by items() on the next load.
        try:
            item.audio_path = self._move_into_dead(item, item.audio_path)
            if item.source_path:
                item.source_path = self._move_into_dead(item, item.source_path)
        except OSError as exc:
            raise ArchiveError(f"cannot move audio to the dead-letter folder: {exc.strerror}") from exc
        item.state, item.dead_reason = ItemState.DEAD, reason
        self.save(item)
        (self.directory / f"{item.item_id}.json").unlink(missing_ok=True)
        fsync_directory(self.directory)
        log.error("upload item %s (appointment %s) dead-lettered: %s", item.item_id, item.appointment_id, reason)
        return item

    def _move_into_dead(self, item: UploadItem, path_text: str) -> str:
        source = Path(path_text)
        if source.parent == self.dead_dir or not item.owned:
            return path_text  # a file the agent did not create stays where its owner put it
        target = self.dead_dir / f"{item.item_id}{source.suffix}"
        if source.exists():
            shutil.move(source, target)  # rename on one file system, copy + remove across file systems
            fsync_directory(self.dead_dir)
        return str(target)

    def _reason_on_file(self, item: UploadItem) -> str:
        try:
            return (self.dead_dir / f"{item.item_id}.reason.txt").read_text().strip()
        except OSError:
            return "dead-lettered"

    def purge_expired(self, now: float | None = None) -> int:
        """Delete audio and record of confirmed uploads whose retention expired; returns how many."""
        now = self.clock() if now is None else now
        purged = 0
        for item in self.items():
            if not retention_expired(item.state, item.uploaded_at, now, self.settings):
                continue
            for path_text in (item.audio_path, item.source_path) if item.owned else ():
                if path_text:
                    destroy(Path(path_text))  # a sealed file's key header is overwritten first
            (self.directory / f"{item.item_id}.json").unlink(missing_ok=True)
            purged += 1
            log.info("upload item %s: retention expired, local audio deleted", item.item_id)
            if self.on_event is not None:
                self.on_event("deleted", item)
        return purged

    def _locked(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the flock of ``name`` in the queue folder (waits for it)."""
        try:
            fd = locks.open_lock_file(self.directory / name)
        except OSError as exc:
            raise ArchiveError(f"cannot lock the upload queue: {exc.strerror}") from exc
        return locks.held(fd)

    def uploading(self) -> contextlib.AbstractContextManager[bool]:
        """Hold the queue's upload lock if free (yields True), else yield False at once."""
        return locks.held_if_free(self.directory / ".lock")

    def next_wake(self, now: float) -> float:
        """Seconds from ``now`` until something is due (an attempt or a retention expiry), at most the cap."""
        return seconds_until_due(self.items(), now, self.settings)
