"""On every start: nothing a crash or power cut left behind is lost, skipped in silence, or uploaded wrongly.

:func:`recover` (``run``, ``daemon``, every ``uploads`` command, ``demo``), in this order:

1. Each visit journal whose visit is not running (its lock is free): its ``.partial`` is repaired and the recording
   queued for the journal's appointment. A journal that cannot be read (emptied, torn, garbage, nested too deeply,
   naming another file) is quarantined; its recording then has no appointment (step 3).
2. Each ``.partial`` no journal accounts for (the journal was deleted or quarantined) and no live process records:
   repaired. One whose header is torn gets the writer's own header (it is our file); one that cannot be repaired is
   quarantined with its audio. Recordings holding no audio at all (0 samples) are removed: nothing to keep.
3. Loading the queue quarantines unusable items (see :mod:`agent.archive.upload_queue`). Items of older versions
   (no ``owned`` flag) whose audio lies in the archive folder are marked as the agent's, so retention still
   deletes their audio once uploaded; any other file they name stays where it is, whatever happens to the item.

Then :func:`find_orphans` lists the audio in the archive (and dead-letter) folder that neither a journal nor a queue
item accounts for: ``uploads list`` shows each with the ``uploads assign FILE APPOINTMENT`` command that queues it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.archive.journal import archive_name_for, find_journals, is_live, journal_path_for, read_journal
from agent.archive.repair import (
    RepairResult,
    final_path_of,
    find_partials,
    is_being_recorded,
    parse_layout,
    repair_partial,
)
from agent.archive.sealed import PlainDigest, is_sealed, plain_size
from agent.archive.storage import (
    Quarantined,
    Unreadable,
    describe_os_error,
    list_quarantine,
    quarantine,
    remove_stale_temps,
)
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.archive.wav import PARTIAL_SUFFIX
from agent.errors import AgentError, ArchiveError, WrongKeyError
from agent.ids import appointment_id_problem

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a")
STALE_TEMP_S = 3600.0
"""Our temporary files (``.<name>.<id>.tmp``) older than this are leftovers of a crash mid-write."""


@dataclass(frozen=True, slots=True)
class Orphan:
    """Audio in the agent's storage that no visit journal or queue item accounts for: it needs an appointment."""

    path: Path
    size: int
    seconds: float | None
    """Duration of a WAV, None for other formats or an unreadable header."""


@dataclass
class Recovery:
    queued: list[UploadItem] = field(default_factory=list)
    """Interrupted visits queued for upload now."""
    orphans: list[Orphan] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    """Everything in the quarantine folders (this start's and earlier ones)."""
    discarded: list[str] = field(default_factory=list)
    """Names of recordings removed because they held no audio at all."""
    problems: list[str] = field(default_factory=list)
    """One line each: what could not be settled now and stays for the next start."""


def quarantine_dir_of(archive_dir: Path) -> Path:
    return archive_dir / "quarantine"


def recover(archive_dir: Path, queue: UploadQueue, *, now: float | None = None) -> Recovery:
    """Settle what earlier runs left in ``archive_dir`` and the queue (see module doc). Blocking: use a thread."""
    report = Recovery()
    now = time.time() if now is None else now
    if archive_dir.is_dir():
        remove_stale_temps(archive_dir, STALE_TEMP_S, now)
        for journal_path in find_journals(archive_dir):
            try:
                _recover_journal(journal_path, archive_dir, queue, report)
            except AgentError as exc:
                report.problems.append(f"{journal_path.name}: {exc}")
                log.error("could not recover the visit of %s now (%s); it stays for the next start",
                          journal_path.name, exc)  # fmt: skip
        for partial in find_partials(archive_dir):
            _repair_unjournaled(partial, archive_dir, queue, report)
    remove_stale_temps(queue.directory, STALE_TEMP_S, now)
    _adopt_archive_items(archive_dir, queue)  # loading the queue also quarantines what cannot be used
    queue.dead_items()
    report.orphans = find_orphans(archive_dir, queue)
    report.quarantined = quarantined(archive_dir, queue)
    return report


def _adopt_archive_items(archive_dir: Path, queue: UploadQueue) -> None:
    archive = os.path.realpath(archive_dir)
    for item in queue.items():
        if not item.owned and os.path.dirname(os.path.realpath(item.audio_path)) == archive:
            item.owned = True  # an older version's visit: the agent wrote it into its own archive
            queue.save(item)


def _recover_journal(path: Path, archive_dir: Path, queue: UploadQueue, report: Recovery) -> None:
    if is_live(path):
        return  # its visit is recording right now (another process)
    expected = archive_dir / archive_name_for(path)
    try:
        journal = read_journal(path)
    except FileNotFoundError:
        return
    except Unreadable as exc:
        _quarantine(path, archive_dir, f"unreadable visit journal: {exc}")
        return  # its recording is repaired below and listed as needing an appointment
    except OSError as exc:
        raise ArchiveError(f"cannot read {path.name}: {describe_os_error(exc)}") from exc
    problem = appointment_id_problem(journal.appointment_id)
    if problem is None and journal.wav != expected.name:
        problem = "it names another recording than its own file name does"
    if problem is not None:
        _quarantine(path, archive_dir, f"unusable visit journal: {problem}")
        return
    wav, digest = _finished_recording(expected, archive_dir, queue)
    if wav is None and (quarantine_dir_of(archive_dir) / (expected.name + PARTIAL_SUFFIX)).exists():
        _quarantine(path, archive_dir, f"its recording could not be repaired (quarantined as {expected.name}.partial)")
        return
    if wav is None:
        log.warning("visit journal %s names no recording on disk (the visit captured nothing); removed", path.name)
    elif _frames(wav) == 0:
        _discard(wav, report)
    else:
        _queue_recording(journal.appointment_id, wav, queue, report, digest)
    path.unlink(missing_ok=True)


def _finished_recording(expected: Path, archive_dir: Path,
                        queue: UploadQueue) -> tuple[Path | None, PlainDigest | None]:  # fmt: skip
    """The journal's recording, its ``.partial`` repaired first (and the digest repair took); None if neither exists
    (or it was quarantined)."""
    partial = expected.with_name(expected.name + PARTIAL_SUFFIX)
    if partial.exists():
        if is_being_recorded(partial):
            raise ArchiveError(f"{partial.name} is held by a running process")
        try:
            result = _repair(partial, queue, canonical=True)
        except ArchiveError as exc:
            _set_aside_unrepairable(partial, archive_dir, exc)
            return (expected if expected.is_file() else None), None
        log.warning("repaired %s left by an interrupted visit%s", result.final.name,
                    f" ({result.loss})" if result.loss else "")  # fmt: skip
        return result.final, result.digest
    return (expected if expected.is_file() else None), None


def _repair(partial: Path, queue: UploadQueue, *, canonical: bool) -> RepairResult:
    """Repair with the device key when the queue holds it (a sealed file needs it: WrongKeyError without)."""
    return repair_partial(partial, canonical=canonical, identity=queue.keys.identity if queue.keys else None)


def _queue_recording(appointment_id: str, wav: Path, queue: UploadQueue, report: Recovery,
                     digest: PlainDigest | None) -> None:  # fmt: skip
    existing = queue.find(appointment_id)
    if existing is None:
        report.queued.append(queue.enqueue(appointment_id, wav, digest=digest))
        log.warning("queued the upload of interrupted visit %s", wav.name)
    elif os.path.realpath(wav) not in {os.path.realpath(p) for p in (existing.audio_path, existing.source_path) if p}:
        log.error("the appointment of interrupted visit %s has another recording queued (item %s): this one "
                  "needs an appointment", wav.name, existing.item_id[:8])  # fmt: skip


def _repair_unjournaled(partial: Path, archive_dir: Path, queue: UploadQueue, report: Recovery) -> None:
    if not partial.name.endswith(".wav" + PARTIAL_SUFFIX):
        return  # an MP3 encoding cut short: the queue encodes again
    if journal_path_for(final_path_of(partial)).exists() or is_being_recorded(partial):
        return  # its visit runs, or its journal could not be settled and stays for the next start
    try:
        result = _repair(partial, queue, canonical=partial.name.startswith("visit-"))
    except WrongKeyError as exc:
        report.problems.append(f"{partial.name}: {exc}")
        return  # sealed, and no key here to repair it: it stays for a start that has the key
    except ArchiveError as exc:
        _set_aside_unrepairable(partial, archive_dir, exc)
        return
    if result.frames == 0:
        _discard(result.final, report)
    else:
        log.warning("repaired %s (%.1f s), left without a visit journal: it needs an appointment "
                    "(medisync-agent uploads assign)", result.final.name, result.seconds)  # fmt: skip


def _set_aside_unrepairable(partial: Path, archive_dir: Path, exc: ArchiveError) -> None:
    """Remove a ``.partial`` of ours holding no audio at all, quarantine any other (its audio kept)."""
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return
    if size <= 44 and partial.name.startswith("visit-") and not is_sealed(partial):  # not even a header of ours
        partial.unlink(missing_ok=True)
        log.warning("%s held no audio (%d bytes); removed", partial.name, size)
        return
    _quarantine(partial, archive_dir, str(exc))


def _quarantine(path: Path, archive_dir: Path, reason: str) -> None:
    try:
        quarantine(path, quarantine_dir_of(archive_dir), reason)
    except OSError as exc:
        raise ArchiveError(f"cannot quarantine {path}: {describe_os_error(exc)}") from exc


def _discard(wav: Path, report: Recovery) -> None:
    wav.unlink(missing_ok=True)
    report.discarded.append(wav.name)
    log.warning("%s held no audio (0 samples): removed, nothing to upload", wav.name)


def _frames(wav: Path) -> int | None:
    """Sample frames of a WAV by its size (not its header's claims), None if it is not a readable WAV. A sealed
    visit archive is measured by its plaintext length (no key needed): 16 kHz mono s16 after a 44-byte header."""
    try:
        if is_sealed(wav):
            return max(0, plain_size(wav) - 44) // 2
        with open(wav, "rb") as f:
            layout = parse_layout(f.read(64 * 1024), wav.name)
            size = os.fstat(f.fileno()).st_size
    except (OSError, ArchiveError):
        return None
    return max(0, size - layout.data_offset) // layout.block_align


def _seconds(wav: Path) -> float | None:
    if is_sealed(wav):
        frames = _frames(wav)
        return None if frames is None else frames / 16000
    try:
        with open(wav, "rb") as f:
            layout = parse_layout(f.read(64 * 1024), wav.name)
    except (OSError, ArchiveError):
        return None
    frames = _frames(wav)
    return None if frames is None else frames / layout.sample_rate


def quarantined(archive_dir: Path, queue: UploadQueue) -> list[Quarantined]:
    return list_quarantine(quarantine_dir_of(archive_dir)) + queue.quarantined()


def find_orphans(archive_dir: Path, queue: UploadQueue) -> list[Orphan]:
    """Audio in the archive and dead-letter folders that no journal or queue item accounts for."""
    accounted = {
        os.path.realpath(p) for item in [*queue.items(), *queue.dead_items()]
        for p in (item.audio_path, item.source_path) if p
    }  # fmt: skip
    folders = [queue.dead_dir]
    if archive_dir.is_dir():
        folders.insert(0, archive_dir)
        accounted |= {os.path.realpath(archive_dir / archive_name_for(j)) for j in find_journals(archive_dir)}
    orphans = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            final = path.with_name(path.name.removesuffix(PARTIAL_SUFFIX))
            if path.name.startswith(".") or not path.is_file() or path.is_symlink():
                continue
            if not final.name.lower().endswith(AUDIO_SUFFIXES) or os.path.realpath(final) in accounted:
                continue
            if path.name.endswith(PARTIAL_SUFFIX) and (not path.name.endswith(".wav" + PARTIAL_SUFFIX)
                                                       or is_being_recorded(path)):  # fmt: skip
                continue
            seconds = _seconds(path) if path.suffix.lower() == ".wav" else None
            orphans.append(Orphan(path, path.stat().st_size, seconds))
    return orphans


def is_orphan(path: Path, archive_dir: Path, queue: UploadQueue) -> bool:
    real = os.path.realpath(path)
    return any(os.path.realpath(o.path) == real for o in find_orphans(archive_dir, queue))
