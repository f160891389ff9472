"""Uploading the queue: one pass over due items (:func:`drain`) or a loop until cancelled (:func:`run`).

The adapter between :mod:`agent.archive.upload_queue` (disk), :mod:`agent.archive.upload_policy` (decisions) and the
MediSync client (anything with the :class:`Uploader` method). Clock and random come from the queue, ``sleep`` is
injected, so tests drive hours of backoff in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.api.multipart import AudioBody
from agent.archive.upload_policy import (
    ACCOUNT_WIDE,
    Block,
    DeadLetter,
    Decision,
    Done,
    ErrorKind,
    Failure,
    ItemState,
    Retry,
    after_failure,
    after_success,
    classify,
    is_due,
)
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.errors import AgentError, ApiError, DamagedRecordingError, WrongKeyError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Upload progress callback: (bytes sent, total bytes)."""


class RecordingInfo(Protocol):
    """A stored recording (``agent.api.models.Recording`` fits)."""

    @property
    def id(self) -> str: ...


class UploadOutcome(Protocol):
    """What a successful upload returns (``agent.api.recordings.UploadResult`` fits)."""

    @property
    def recording(self) -> RecordingInfo | None:
        """MediSync's answer; None when the recording was already there (reconciled as the same bytes)."""

    @property
    def already_present(self) -> bool: ...


class Uploader(Protocol):
    """The part of the MediSync client the queue needs (``agent.api.medisync.MediSyncClient`` fits).

    ``upload_recording`` raises the :mod:`agent.errors` ApiError family; it logs in again by itself once after
    a 401, and resolves "already exists" itself (same bytes on the server: success; different:
    :class:`~agent.errors.RecordingMismatchError`).
    """

    async def upload_recording(
        self, appointment_id: str, path: Path | AudioBody, *, progress: Progress | None = None
    ) -> UploadOutcome: ...




@dataclass
class DrainReport:
    """What one pass over the queue did."""

    busy: bool = False
    """Another process held the upload lock; nothing was tried."""
    uploaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    stopped_early: bool = False
    """An account-wide failure (429, 5xx, unreachable, 401, 403) ended the pass; later items were not tried."""
    resume_at: float | None = None
    """After an account-wide failure: no item should be tried before this time (seconds since the epoch)."""


ProgressFor = Callable[[UploadItem], Progress]


def _no_progress(sent: int, total: int) -> None:
    return None


async def drain(
    queue: UploadQueue,
    uploader: Uploader,
    *,
    force: bool = False,
    progress_for: ProgressFor | None = None,
) -> DrainReport:
    """Try every due item once (every pending or blocked item with ``force``). Returns what happened.

    A 401 here is an ordinary failure: the HTTP client already logged in again and retried once.
    """
    report = DrainReport()
    with queue.uploading() as locked:
        if not locked:
            report.busy = True
            return report
        # Longest-waiting first, so one item that keeps failing cannot starve the others.
        # Disk work goes to a thread: fsync on an SD card can take long enough to stall the live stream.
        for item in sorted(await asyncio.to_thread(queue.items), key=lambda i: (i.next_attempt_at, i.created_at)):
            eligible = item.state in (ItemState.PENDING, ItemState.BLOCKED)
            if not (eligible and (force or is_due(item.state, item.next_attempt_at, queue.clock(), queue.settings))):
                continue
            if item.held:  # its visit may still be recording: never upload a file that is being written
                item = await asyncio.to_thread(queue.release, item)
                if item.state is ItemState.DEAD:  # released, but its audio is missing
                    _tally(report, item)
                if item.held or item.state is not ItemState.PENDING:
                    continue
            progress = progress_for(item) if progress_for is not None else _no_progress
            failure = await _attempt(queue, item, uploader, progress)
            _tally(report, item)
            if failure is not None and failure.kind in ACCOUNT_WIDE:
                report.stopped_early, report.resume_at = True, item.next_attempt_at
                break
    return report


def _tally(report: DrainReport, item: UploadItem) -> None:
    lists = {
        ItemState.DONE: report.uploaded,
        ItemState.PENDING: report.failed,
        ItemState.BLOCKED: report.blocked,
        ItemState.DEAD: report.dead,
    }
    lists[item.state].append(item.item_id)


async def _attempt(
    queue: UploadQueue, item: UploadItem, uploader: Uploader, progress: Progress
) -> Failure | None:
    """One attempt; updates and saves the item. Returns the failure, if any."""
    # Normally a no-op; encodes when enqueue was cut short by a crash while encoding.
    failure = await asyncio.to_thread(queue.make_uploadable, item)
    if failure is not None:
        if item.state is not ItemState.DEAD:
            decision = _decide(queue, item, failure)
            await asyncio.to_thread(_apply_failure, queue, item, failure, decision)
        return failure
    audio = queue.audio_of(item)  # a sealed file is decrypted while it streams, checked against the item's digest
    try:
        outcome = await uploader.upload_recording(item.appointment_id, audio, progress=progress)
    except (DamagedRecordingError, WrongKeyError) as exc:
        log.error("upload item %s not uploaded: %s", item.item_id, exc)  # names the file and the chunk
        failure = Failure(ErrorKind.DAMAGED_AUDIO) if queue.keys is not None else Failure(ErrorKind.OTHER)
    except AgentError as exc:
        failure = classify(exc) if isinstance(exc, ApiError) else Failure(ErrorKind.OTHER)
    except Exception:
        log.exception("upload item %s: unexpected error", item.item_id)
        failure = Failure(ErrorKind.OTHER)
    else:
        done = after_success(queue.clock(), queue.settings)
        item.state, item.uploaded_at = ItemState.DONE, done.uploaded_at
        item.recording_id = outcome.recording.id if outcome.recording is not None else item.recording_id
        item.last_error = ""
        await asyncio.to_thread(queue.save, item)
        how = "already on MediSync (same bytes)" if outcome.already_present else "uploaded"
        log.info("upload item %s: %s (%d bytes)", item.item_id, how, item.size)
        return None
    await asyncio.to_thread(_apply_failure, queue, item, failure, _decide(queue, item, failure))
    return failure


def _decide(queue: UploadQueue, item: UploadItem, failure: Failure) -> Decision:
    return after_failure(
        failure,
        attempts=item.attempts + 1,
        now=queue.clock(),
        rng=queue.rng,
        settings=queue.settings,
    )


def _apply_failure(queue: UploadQueue, item: UploadItem, failure: Failure, decision: Decision) -> None:
    item.attempts += 1
    item.last_error = failure.text()
    match decision:
        case DeadLetter(reason=reason):
            queue.dead_letter(item, reason)
            return
        case Block(at=at):
            item.state, item.next_attempt_at = ItemState.BLOCKED, at
        case Retry(at=at):
            item.state, item.next_attempt_at = ItemState.PENDING, at
        case Done():  # never follows a failure
            item.state, item.next_attempt_at = ItemState.PENDING, queue.clock() + queue.settings.backoff_first_s
    queue.save(item)
    log.warning(
        "upload item %s: %s; next attempt in %.0f s",
        item.item_id,
        item.last_error,
        item.next_attempt_at - queue.clock(),
    )


Sleep = Callable[[float], Awaitable[None]]


async def run(
    queue: UploadQueue,
    uploader: Uploader,
    *,
    sleep: Sleep = asyncio.sleep,
    wake: asyncio.Event | None = None,
    until: Callable[[], bool] | None = None,
    progress_for: ProgressFor | None = None,
    on_report: Callable[[DrainReport], None] | None = None,
) -> None:
    """Upload due items, purge expired audio, sleep until the next is due; repeat until cancelled or ``until()``.

    ``wake`` (set by whoever enqueues) cuts a sleep short; ``on_report`` sees each pass's report (for metrics).
    """
    while True:
        report = await drain(queue, uploader, progress_for=progress_for)
        if on_report is not None:
            on_report(report)
        await asyncio.to_thread(queue.purge_expired)
        if until is not None and until():
            return
        now = queue.clock()
        delay = await asyncio.to_thread(queue.next_wake, now)
        if report.resume_at is not None:
            delay = max(delay, report.resume_at - now)  # the server said no: do not try the next item at once
        if report.busy:
            delay = max(delay, queue.settings.backoff_first_s)  # another process is uploading
        await _sleep_or_wake(sleep, delay, wake)


async def _sleep_or_wake(sleep: Sleep, delay: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await sleep(delay)
        return
    sleeper = asyncio.ensure_future(sleep(delay))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            task.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
    wake.clear()


def settled(queue: UploadQueue) -> bool:
    """No item left that a retry could still upload (all done, dead or blocked)."""
    return all(item.state is not ItemState.PENDING for item in queue.items())
