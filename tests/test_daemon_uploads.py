"""The daemon's upload-queue count (:mod:`agent.daemon_uploads`): no timer of its own, asked by the daemon's tick
every ``QUEUE_POLL_S`` seconds, ``VISIT_POLL_S`` while a visit records, and at once when a visit is queued (issue
11: a count costs the loop the worker thread's answer, not a timer wake-up as well). A real queue directory, the
items queued through a second queue object as ``uploads add`` in another process does."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Callable
from pathlib import Path

from agent.archive.upload_queue import UploadQueue
from agent.daemon_uploads import QUEUE_POLL_S, VISIT_POLL_S, Uploads
from agent.settings import UploadSettings


class CountedUploads(Uploads):
    looks = 0

    def _look_at_queue(self) -> bool:
        new = super()._look_at_queue()
        self.looks += 1  # in the count's worker thread, once the counts are in place
        return new


def queue_a_visit(queue: UploadQueue, archive: Path, appointment_id: str) -> None:
    path = archive / f"{appointment_id}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\1\0" * 1600)
    queue.enqueue(appointment_id, path)


async def until(done: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while not done():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


async def unchanged(uploads: CountedUploads, looks: int) -> None:
    """The count stays as it is while the loop runs for a while (a timer of its own would count again)."""
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert uploads.looks == looks, "counted without being asked"


def test_the_queue_is_counted_when_the_tick_asks_and_at_once_when_a_visit_is_queued(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    settings = UploadSettings(queue_dir=str(tmp_path / "queue"))
    other = UploadQueue(settings)  # `uploads add` in another process

    async def main() -> None:
        uploads = CountedUploads(UploadQueue(settings), archive)
        wake = uploads._wake  # the worker's: set when another process queued an item
        task = asyncio.create_task(uploads.count())
        await until(lambda: uploads.looks == 1, "no count at the start")
        assert uploads.counts.pending == 0
        queue_a_visit(other, archive, "apt-1")
        await unchanged(uploads, 1)
        uploads.tick(100.0, recording=True)  # the first tick asks at once
        await until(lambda: uploads.looks == 2 and wake.is_set(), "no count at the first tick, or no upload")
        assert uploads.counts.pending == 1
        wake.clear()
        queue_a_visit(other, archive, "apt-2")
        uploads.tick(100.0 + QUEUE_POLL_S, recording=True)  # a visit records: not yet
        uploads.tick(100.0 + VISIT_POLL_S - 1.0, recording=True)
        await unchanged(uploads, 2)
        uploads.tick(100.0 + VISIT_POLL_S, recording=True)
        await until(lambda: uploads.looks == 3 and wake.is_set(), "no count a visit's poll after the last")
        assert uploads.counts.pending == 2
        uploads.tick(100.0 + VISIT_POLL_S + QUEUE_POLL_S / 2, recording=False)  # idle: every QUEUE_POLL_S
        await unchanged(uploads, 3)
        uploads.tick(100.0 + VISIT_POLL_S + QUEUE_POLL_S, recording=False)
        await until(lambda: uploads.looks == 4, "no count an idle poll after the last")
        queue_a_visit(uploads.queue, archive, "apt-3")  # the daemon queued a visit: the count shows it at once
        uploads.wake()
        await until(lambda: uploads.looks == 5, "no count when a visit was queued")
        assert uploads.counts.pending == 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
