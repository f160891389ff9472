"""The upload runner against a scripted uploader (the seam the real client plugs into): state changes on disk."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.api.multipart import AudioBody
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.archive.upload_runner import Progress, drain, run, settled
from agent.errors import (
    AuthError,
    InputError,
    NotFoundError,
    RateLimitError,
    RecordingMismatchError,
    ServerError,
    SubscriptionError,
)
from agent.settings import UploadSettings
from tests.test_upload_queue import Clock, make_wav

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Rec:
    id: str


@dataclass(frozen=True)
class Outcome:
    recording: Rec | None
    already_present: bool = False


class ScriptedUploader:
    """Raises the scripted exceptions in order, then succeeds; records every call."""

    def __init__(self, *script: BaseException) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, Path]] = []

    async def upload_recording(self, appointment_id: str, path: Path | AudioBody, *,
                               progress: Progress | None = None) -> Outcome:  # fmt: skip
        self.calls.append((appointment_id, path if isinstance(path, Path) else path.path))
        if progress is not None:
            progress(0, 10)
            progress(10, 10)
        if self.script:
            raise self.script.pop(0)
        return Outcome(Rec(f"rec-{appointment_id}"))


class FakeSleep:
    """Advances the fake clock instead of waiting."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay


def audio_exists(path: str) -> bool:
    return Path(path).is_file()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> UploadQueue:
    settings = UploadSettings(queue_dir=str(tmp_path / "q"), backoff_first_s=4.0, backoff_cap_s=64.0)
    return UploadQueue(settings, clock=clock, rng=lambda: 0.5)


def add(queue: UploadQueue, tmp_path: Path, appointment: str, clock: Clock) -> str:
    clock.now += 1  # distinct created times: a stable order
    return queue.enqueue(appointment, make_wav(tmp_path / f"{appointment}.wav", 0.1)).item_id


async def test_success_marks_done_with_recording_id_and_progress(
    queue: UploadQueue, tmp_path: Path, clock: Clock
) -> None:
    item_id = add(queue, tmp_path, "apt-1", clock)
    seen: list[tuple[int, int]] = []
    report = await drain(queue, ScriptedUploader(), progress_for=lambda item: lambda s, t: seen.append((s, t)))
    assert report.uploaded == [item_id]
    [item] = queue.items()
    assert (item.state, item.recording_id, item.uploaded_at, item.last_error) == (
        ItemState.DONE,
        "rec-apt-1",
        clock.now,
        "",
    )
    assert seen == [(0, 10), (10, 10)]


async def test_server_error_then_success_with_backoff(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    uploader = ScriptedUploader(ServerError("boom", status=500), ServerError("boom", status=503))
    sleep = FakeSleep(clock)
    await run(queue, uploader, sleep=sleep, until=lambda: settled(queue))
    # rng 0.5: half of 4 s, then half of 8 s.
    assert sleep.delays == [2.0, 4.0]
    assert len(uploader.calls) == 3
    assert queue.items()[0].state is ItemState.DONE


async def test_retry_after_is_honoured(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    sleep = FakeSleep(clock)
    await run(
        queue,
        ScriptedUploader(RateLimitError("slow down", retry_after=30.0)),
        sleep=sleep,
        until=lambda: settled(queue),
    )
    assert sleep.delays == [30.0]


async def test_account_wide_failure_stops_the_pass(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    first = add(queue, tmp_path, "apt-1", clock)
    add(queue, tmp_path, "apt-2", clock)
    uploader = ScriptedUploader(ServerError("boom", status=502))
    report = await drain(queue, uploader)
    assert report.stopped_early and report.failed == [first]
    assert report.resume_at == clock.now + 2.0
    assert [c[0] for c in uploader.calls] == ["apt-1"]
    # Next pass: the item that waited longest goes first, so a failing one cannot starve the rest.
    clock.now += 2.0
    await drain(queue, uploader)
    assert [c[0] for c in uploader.calls] == ["apt-1", "apt-2", "apt-1"]


async def test_not_found_and_mismatch_dead_letter_others_continue(
    queue: UploadQueue, tmp_path: Path, clock: Clock
) -> None:
    a = add(queue, tmp_path, "apt-1", clock)
    b = add(queue, tmp_path, "apt-2", clock)
    c = add(queue, tmp_path, "apt-3", clock)
    uploader = ScriptedUploader(NotFoundError("gone", status=404), RecordingMismatchError("different"))
    report = await drain(queue, uploader)
    assert report.dead == [a, b] and report.uploaded == [c]
    dead = {i.item_id: i for i in queue.dead_items()}
    assert dead[a].dead_reason == "appointment not found on MediSync (HTTP 404)"
    assert dead[b].dead_reason == "MediSync holds a different recording for this appointment"
    assert all(audio_exists(i.audio_path) for i in dead.values())


async def test_subscription_blocks_and_keeps(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    uploader = ScriptedUploader(SubscriptionError("pay", status=403))
    report = await drain(queue, uploader)
    [item] = queue.items()
    assert report.blocked == [item.item_id]
    assert (item.state, item.next_attempt_at) == (ItemState.BLOCKED, clock.now + 64.0)
    assert await drain(queue, uploader) == type(report)()  # not due yet: nothing tried
    await drain(queue, uploader, force=True)  # `uploads retry --now`
    assert queue.items()[0].state is ItemState.DONE


async def test_401_is_an_ordinary_failure_never_a_loop(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    """The HTTP client logs in again and retries once by itself (one 401 path); a 401 reaching the queue waits."""
    add(queue, tmp_path, "apt-1", clock)
    uploader = ScriptedUploader(*(AuthError("expired", status=401) for _ in range(5)))
    await drain(queue, uploader)
    assert len(uploader.calls) == 1
    [item] = queue.items()
    assert (item.state, item.attempts, item.last_error) == (
        ItemState.PENDING,
        1,
        "login refused or token expired (HTTP 401)",
    )


async def test_missing_audio_is_dead_lettered(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    (tmp_path / "apt-1.wav").unlink()
    uploader = ScriptedUploader()
    report = await drain(queue, uploader)
    assert len(report.dead) == 1 and uploader.calls == []
    assert queue.dead_items()[0].dead_reason == "local audio file missing or changed"


async def test_unexpected_errors_back_off_and_are_logged(
    queue: UploadQueue, tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    add(queue, tmp_path, "apt-1", clock)
    await drain(queue, ScriptedUploader(RuntimeError("bug"), InputError("odd")))
    [item] = queue.items()
    assert (item.state, item.attempts, item.last_error) == (ItemState.PENDING, 1, "upload failed")
    assert "unexpected error" in caplog.text


async def test_cancellation_propagates_and_keeps_the_item(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    with pytest.raises(asyncio.CancelledError):
        await drain(queue, ScriptedUploader(asyncio.CancelledError()))
    [item] = queue.items()
    assert (item.state, item.attempts) == (ItemState.PENDING, 0)


async def test_busy_when_another_process_uploads(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    add(queue, tmp_path, "apt-1", clock)
    with UploadQueue(queue.settings).uploading() as held:
        assert held
        report = await drain(queue, ScriptedUploader())
    assert report.busy and queue.items()[0].state is ItemState.PENDING


async def test_wake_event_cuts_the_sleep(queue: UploadQueue, tmp_path: Path, clock: Clock) -> None:
    wake = asyncio.Event()
    uploader = ScriptedUploader()
    slept = asyncio.Event()

    async def sleep(delay: float) -> None:
        slept.set()
        await asyncio.Event().wait()  # sleeps "forever": only the wake event can end it

    task = asyncio.create_task(run(queue, uploader, sleep=sleep, wake=wake, until=lambda: bool(uploader.calls)))
    await slept.wait()
    add(queue, tmp_path, "apt-1", clock)
    wake.set()
    await asyncio.wait_for(task, 10)
    assert queue.items()[0].state is ItemState.DONE
