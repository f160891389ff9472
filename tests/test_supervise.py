"""Supervised background work: a worker that dies is logged in one line, restarted with backoff and goes on
uploading; the queue items that used to kill the upload worker (deeply nested, torn, ``../`` id, a FIFO) no
longer do. Against the local MediSync server over loopback; sleeps are injected, nothing waits for real.
The daemon as a process with these faults: test_daemon_supervision.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from agent.api.medisync import MediSyncClient
from agent.api.secret import Credentials, Secret
from agent.archive import upload_runner
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.settings import ApiSettings, UploadSettings
from agent.supervise import WorkerHealth, describe_failure, restart_delay, supervise
from tests.plugins.server import RunningServer
from tests.test_upload_queue import make_wav


def test_restart_delay_doubles_up_to_the_cap() -> None:
    assert [restart_delay(n, first_s=1.0, cap_s=60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(10_000) == 60.0  # never overflows


def test_failure_is_described_in_one_short_line() -> None:
    assert describe_failure(RuntimeError("disk\nsecond line")) == "RuntimeError: disk"
    assert describe_failure(KeyError()) == "KeyError"
    assert describe_failure(None) == "ended unexpectedly"
    assert len(describe_failure(ValueError("x" * 1000))) == 160


class Recorder:
    """Injected sleep: records the delays and never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(server: RunningServer) -> MediSyncClient:
    return MediSyncClient(ApiSettings(api_url=server.api_url, email=server.email),
                          Credentials(server.email, Secret(server.password)))  # fmt: skip


def test_worker_that_dies_is_logged_restarted_and_uploads(
    medisync_server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q")))
    (tmp_path / "a").mkdir()
    wav = make_wav(tmp_path / "a" / "visit.wav", 0.5)
    appointment = medisync_server.create_appointment()
    queue.enqueue(appointment, wav)
    health = WorkerHealth("upload_worker")
    sleep = Recorder()
    deaths = [RuntimeError("first death"), OSError(5, "Input/output error")]
    seen: list[str] = []

    async def main() -> None:
        async with client_for(medisync_server) as api:

            async def work() -> None:
                seen.append(health.describe())
                if deaths:
                    raise deaths.pop(0)
                await upload_runner.run(queue, api, sleep=sleep,
                                        until=lambda: queue.items()[0].state is ItemState.DONE)  # fmt: skip
                raise asyncio.CancelledError  # what stopping the daemon does

            await supervise(work, health, sleep=sleep)

    caplog.set_level(logging.DEBUG, logger="agent.supervise")
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())

    assert queue.items()[0].state is ItemState.DONE
    assert medisync_server.server.store.recording(appointment) is not None
    assert health.restarts == 2 and health.reason == "OSError: [Errno 5] Input/output error"
    assert seen == ["running", "running", "running"]
    assert sleep.delays[:2] == [1.0, 2.0]  # backoff between the restarts
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "agent.supervise"]
    assert [r.getMessage() for r in errors] == [
        "upload_worker stopped (RuntimeError: first death); restarting it in 1 s",
        "upload_worker stopped (OSError: [Errno 5] Input/output error); restarting it in 2 s",
    ]
    assert all(r.exc_info is None for r in errors)  # the traceback only at DEBUG
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.name == "agent.supervise"]
    assert len(debug) == 2 and all(r.exc_info is not None for r in debug)


def test_health_while_waiting_to_restart() -> None:
    health = WorkerHealth("upload_worker")
    states: list[str] = []

    async def sleep(seconds: float) -> None:
        states.append(health.describe())
        raise asyncio.CancelledError

    async def work() -> None:
        raise ValueError("bad item")

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(supervise(work, health, sleep=sleep))
    assert states == ["restarting (ValueError: bad item)"] and health.restarts == 1


def write_bad_items(queue_dir: Path, audio: Path, appointment: str) -> dict[str, Path]:
    """The queue items a power cut or an attacker leaves, as files beside the good ones."""
    good = {"appointment_id": appointment, "audio_path": str(audio), "sha256": "0" * 64,
            "size": audio.stat().st_size, "created_at": 1.0, "owned": True}  # fmt: skip
    deep = queue_dir / ("a" * 32 + ".json")
    deep.write_bytes(b'{"item_id": "x", "z": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")  # 40 kB: within the size cap
    torn = queue_dir / ("b" * 32 + ".json")
    torn.write_bytes(json.dumps({"item_id": "b" * 32, **good}).encode()[:50])
    fifo = queue_dir / ("c" * 32 + ".json")
    os.mkfifo(fifo)
    escaping = queue_dir / ("d" * 32 + ".json")
    escaping.write_text(json.dumps({"item_id": "../../escaped", **good}))
    return {"deep": deep, "torn": torn, "fifo": fifo, "escaping": escaping}


def test_bad_items_that_used_to_kill_the_worker_do_not(medisync_server: RunningServer, tmp_path: Path) -> None:
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q")))
    (tmp_path / "a").mkdir()
    first, second = medisync_server.create_appointment(), medisync_server.create_appointment()
    escaping_audio = make_wav(tmp_path / "a" / "visit-1.wav", 0.3, seed=5)
    write_bad_items(queue.directory, escaping_audio, first)
    queue.enqueue(second, make_wav(tmp_path / "a" / "visit-2.wav", 0.3, seed=6))

    async def main() -> None:
        async with client_for(medisync_server) as api:
            await upload_runner.run(queue, api, sleep=Recorder(), until=lambda: upload_runner.settled(queue))

    asyncio.run(main())  # before: RecursionError (deep), a hang (FIFO), a write outside the queue (../)

    assert sorted(i.appointment_id for i in queue.items() if i.state is ItemState.DONE) == sorted([first, second])
    assert len(queue.quarantined()) == 3
    assert not list(tmp_path.rglob("escaped*"))
