"""Held upload items: a visit queued while it still records (its archive stopped on a full disk) is never uploaded
from a file being written, is released by the visit's end, and after a crash by the runner (repairing the file)."""

from __future__ import annotations

import asyncio
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.archive.resilient import ResilientArchiveWriter
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import HELD_RECHECK_S, UploadQueue, sha256_of
from agent.archive.upload_runner import drain
from agent.audio.types import Frame
from agent.settings import ArchiveSettings, UploadSettings
from tests.plugins.archive import REPO
from tests.test_upload_queue import Clock
from tests.test_upload_runner import ScriptedUploader

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def frames(seconds: float) -> list[Frame]:
    pcm = np.random.default_rng(3).integers(-9000, 9000, size=int(seconds * 16000), dtype=np.int16)
    return [Frame(start, pcm[start : start + 320].tobytes()) for start in range(0, len(pcm), 320)]


def samples(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


async def test_held_item_waits_for_the_recording_and_is_released_by_the_visit_end(tmp_path: Path) -> None:
    clock = Clock()
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "queue")), clock=clock)
    final = tmp_path / "visit.wav"
    writer = ResilientArchiveWriter.create(final, ArchiveSettings())
    writer.write_frames(frames(1.0))
    held = queue.enqueue_held("appt-1", final)
    assert held.held and held.state is ItemState.PENDING
    assert queue.enqueue_held("appt-1", final).item_id == held.item_id  # idempotent per appointment
    uploader = ScriptedUploader()

    report = await drain(queue, uploader, force=True)  # the file is still being written (its lock is held)
    assert uploader.calls == [] and report.uploaded == report.dead == []
    [item] = queue.items()
    assert item.held and item.state is ItemState.PENDING
    assert queue.next_wake(clock.now) == pytest.approx(HELD_RECHECK_S)  # rechecked, not a busy loop

    writer.write_frames(frames(2.0)[50:])
    writer.finish()
    released = queue.enqueue("appt-1", final)  # what the visit's end does
    assert (released.item_id, released.held) == (held.item_id, False)
    assert (released.size, released.sha256) == (final.stat().st_size, sha256_of(final))
    report = await drain(queue, uploader)
    assert report.uploaded == [held.item_id] and uploader.calls == [("appt-1", final)]


CRASHING_RECORDER = """
import os, sys
import numpy as np
from agent.archive.resilient import ResilientArchiveWriter
from agent.audio.types import Frame
from agent.settings import ArchiveSettings
pcm = np.random.default_rng(3).integers(-9000, 9000, size=24000, dtype=np.int16)
writer = ResilientArchiveWriter.create(sys.argv[1], ArchiveSettings(header_interval_s=10.0))
for start in range(0, len(pcm), 320):
    writer.write_frames([Frame(start, pcm[start:start + 320].tobytes())])
os._exit(0)  # dies mid-visit: no finish, a stale header, the lock gone with the process
"""


async def test_held_item_of_a_recorder_that_died_is_repaired_released_and_uploaded(tmp_path: Path) -> None:
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "queue")), clock=Clock())
    final = tmp_path / "visit.wav"
    held = queue.enqueue_held("appt-2", final)
    crashed = await asyncio.create_subprocess_exec(sys.executable, "-c", CRASHING_RECORDER, str(final), cwd=REPO)
    assert await asyncio.wait_for(crashed.wait(), 60) == 0
    assert not final.exists() and (tmp_path / "visit.wav.partial").exists()
    uploader = ScriptedUploader()

    report = await drain(queue, uploader)

    assert report.uploaded == [held.item_id] and uploader.calls == [("appt-2", final)]
    assert not (tmp_path / "visit.wav.partial").exists()
    expected = np.random.default_rng(3).integers(-9000, 9000, size=24000, dtype=np.int16).tobytes()
    assert samples(final) == expected  # repaired from its length, every sample kept
    [item] = queue.items()
    assert (item.held, item.state, item.size) == (False, ItemState.DONE, final.stat().st_size)
