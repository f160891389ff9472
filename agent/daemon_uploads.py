"""The daemon's upload side: the worker that drains the queue between visits, and the counts ``status`` shows
(with the archive's free disk space, looked at in the same pass).

:func:`agent.archive.upload_runner.run` drains the upload queue, woken when a visit is queued (:meth:`wake`) or
another process queues an item (the queue count notices a new pending item). Both loops run supervised under the
daemon's :class:`~agent.supervise.SupervisedTasks` (names :data:`WORKER` and :data:`COUNTER`). The count has no
timer of its own: the daemon's tick says when one is due (:meth:`Uploads.tick`), so a count costs the loop one
wake-up (the worker thread's answer), not two, and fewer while a visit records (issue 11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.api.medisync import MediSyncClient
from agent.api.secret import load_credentials
from agent.archive import upload_runner
from agent.archive.recovery import find_orphans, quarantined, recover
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.malloc_bounds import give_back
from agent.metrics import disk_free
from agent.settings import AgentSettings

WORKER = "upload_worker"
log = logging.getLogger(__name__)

COUNTER = "queue_count"
QUEUE_POLL_S = 2.0
"""Seconds between counts of the upload queue (a directory listing), between visits."""
VISIT_POLL_S = 4.0
"""The same while a visit records: an item another process queued still shows in ``status`` within seconds."""


@dataclass(frozen=True)
class QueueCounts:
    pending: int = 0
    """Visits waiting in the upload queue."""
    needs_appointment: int = 0
    """Recordings no journal or queue item accounts for."""
    quarantined: int = 0
    """Unreadable files set aside."""
    disk_free_bytes: int = 0
    """Bytes free for the agent on the archive's file system (0 until the first look)."""
    disk_free_ratio: float = 1.0
    """Share of the archive's file system free for the agent, 0 to 1."""


@dataclass
class UploadTotals:
    """Counters since the daemon started, owned here (the runner reports each pass)."""

    completed: int = 0
    failures: int = 0


class Uploads:
    def __init__(self, queue: UploadQueue, archive_dir: Path, *, trim: Callable[[], object] = give_back) -> None:
        self.queue = queue
        self._trim = trim
        """Gives freed memory back to the kernel after a pass that uploaded (:func:`agent.malloc_bounds.give_back`)."""
        self.client: MediSyncClient | None = None
        self.counts = QueueCounts()
        self.totals = UploadTotals()
        self._archive_dir = archive_dir
        self._wake = asyncio.Event()
        self._count_due = asyncio.Event()
        self._asked_at = float("-inf")  # the tick's clock when it last asked for a count
        self._known_items: set[str] = set()
        self.unreachable = False
        """The last pass that tried an item stopped on an account-wide failure (unreachable, 5xx, 429, 401, 403)."""
        self.due = False
        """An item surely waits, though the count may not show it yet: a visit was just queued, or a pass failed."""

    async def recover(self) -> None:
        """At the start: repair and queue visits a crash cut short (:func:`~agent.archive.recovery.recover`)."""
        recovery = await asyncio.to_thread(recover, self._archive_dir, self.queue)
        for item in recovery.queued:
            log.warning("queued the upload of an interrupted earlier visit (%s)", item.item_id[:8])
        if recovery.orphans or recovery.quarantined:
            log.warning("%d recording(s) need an appointment, %d file(s) quarantined: see 'medisync-agent "
                        "uploads list'", len(recovery.orphans), len(recovery.quarantined))  # fmt: skip

    async def replaced(self, settings: AgentSettings) -> Uploads:
        """Uploads under new settings (the device key and the since-start counters carried over), a new client.

        Raises AgentError when the new credentials cannot be read; then this one stays in use."""
        credentials = load_credentials(settings.api)
        new = Uploads(UploadQueue(settings.upload, keys=self.queue.keys), Path(settings.archive.directory),
                      trim=self._trim)
        new.totals = self.totals
        new.client = MediSyncClient(settings.api, credentials, max_upload_bytes=settings.upload.max_bytes)
        return new

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def wake(self) -> None:
        """Upload now (a visit was queued); count now, so ``status`` shows it at once."""
        self.due = True
        self._wake.set()
        self._count_due.set()

    async def work(self) -> None:
        """The upload worker (supervised: if it dies, it is logged and started again with backoff)."""
        client = self.client
        assert client is not None
        await upload_runner.run(self.queue, client, wake=self._wake, on_report=self._count_report)

    def _count_report(self, report: upload_runner.DrainReport) -> None:
        self.totals.completed += len(report.uploaded)
        self.totals.failures += len(report.failed) + len(report.blocked) + len(report.dead)
        if report.stopped_early or report.uploaded:
            self.unreachable = report.stopped_early
        self.due = report.stopped_early
        if report.uploaded:
            self._trim()  # the visit's and the upload's buffers are freed now (issue 11, idle RSS after a visit)

    def tick(self, now: float, recording: bool) -> None:
        """The daemon's periodic look (monotonic ``now``): asks for a count every :data:`QUEUE_POLL_S` seconds,
        :data:`VISIT_POLL_S` while a visit records."""
        if now - self._asked_at >= (VISIT_POLL_S if recording else QUEUE_POLL_S) - 0.05:  # a tick may come early
            self._asked_at = now
            self._count_due.set()

    async def count(self) -> None:
        """Count the queue now and whenever :meth:`tick` or :meth:`wake` asks; wake the worker when another
        process queued an item."""
        while True:
            self._count_due.clear()  # an ask while the thread counts is answered by one more count
            if await asyncio.to_thread(self._look_at_queue):
                self._wake.set()  # another process queued an item (uploads add/assign): upload it now
            await self._count_due.wait()

    def _look_at_queue(self) -> bool:
        """Counts for ``status`` (in a worker thread); True when a pending item appeared since the last look."""
        queue = self.queue
        pending = {i.item_id for i in queue.items() if i.state is ItemState.PENDING}
        new = bool(pending - self._known_items)
        self._known_items = pending
        free_bytes, free_ratio = disk_free(self._archive_dir)
        self.counts = QueueCounts(pending=len(pending), needs_appointment=len(find_orphans(self._archive_dir, queue)),
                                  quarantined=len(quarantined(self._archive_dir, queue)),
                                  disk_free_bytes=free_bytes, disk_free_ratio=free_ratio)  # fmt: skip
        return new
