"""Upload queue + the real MediSync client against the local MediSync server over real HTTP on 127.0.0.1.

Faults come from the server's knobs (status codes with Retry-After, subscription off, expired tokens) and, for the
lost upload response, from a real TCP proxy that forwards the upload and cuts the connection as the answer starts.
Backoff runs on a fake clock with an injected sleep: hours of retries take milliseconds, nothing waits for real.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.archive.upload_runner import drain, run, settled
from agent.cli import main
from agent.settings import ApiSettings, UploadSettings
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.test_upload_queue import Clock, make_wav
from tests.test_upload_runner import FakeSleep

pytestmark = pytest.mark.anyio
EMAIL, PASSWORD = "uploader@example.org", "a long enough password"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(medisync_server: RunningServer) -> RunningServer:
    """H-server's in-process server (tests/plugins/server.py) with this module's own login."""
    medisync_server.server.add_user(EMAIL, PASSWORD)
    return medisync_server


def api_url(server: RunningServer) -> str:
    return server.api_url


def client(url: str, max_upload_bytes: int = UploadSettings().max_bytes) -> MediSyncClient:
    return MediSyncClient(
        ApiSettings(api_url=url, email=EMAIL), Credentials(EMAIL, Secret(PASSWORD)), max_upload_bytes=max_upload_bytes
    )


async def new_appointment(url: str) -> str:
    async with client(url) as api:
        patient = await api.add_patient(NewPatient(firstName="Test", lastName="Patient", dateOfBirth="1980-01-01"))
        appointment = await api.add_appointment(
            NewAppointment(name="Visit", date="2026-11-21", time="10:00", patient_id=patient.id)
        )
        return appointment.id


def file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def file_exists(path: str) -> bool:
    return Path(path).exists()


def stored_bytes(server: RunningServer, appointment_id: str) -> bytes:
    rec = server.server.store.recording(appointment_id)
    assert rec is not None, "the server holds no recording for the appointment"
    return (server.server.store.recordings_dir / rec.file_name).read_bytes()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> UploadQueue:
    settings = UploadSettings(queue_dir=str(tmp_path / "queue"), backoff_first_s=4.0, backoff_cap_s=64.0)
    return UploadQueue(settings, clock=clock, rng=lambda: 0.5)


def visit(tmp_path: Path, seconds: float = 2.0, seed: int = 1) -> Path:
    (tmp_path / "archive").mkdir(exist_ok=True)
    return make_wav(tmp_path / "archive" / f"visit-{seed}.wav", seconds, seed=seed)


async def test_upload_stores_identical_bytes(server: RunningServer, queue: UploadQueue, tmp_path: Path) -> None:
    appointment_id = await new_appointment(api_url(server))
    wav = visit(tmp_path)
    queue.enqueue(appointment_id, wav)
    async with client(api_url(server)) as api:
        report = await drain(queue, api)
    [item] = queue.items()
    assert report.uploaded == [item.item_id]
    assert item.state is ItemState.DONE
    assert stored_bytes(server, appointment_id) == wav.read_bytes()
    rec = server.server.store.recording(appointment_id)
    assert rec is not None and item.recording_id == rec.id
    assert wav.exists(), "kept until retention expires"


async def test_server_error_then_success_after_backoff(
    server: RunningServer, queue: UploadQueue, clock: Clock, tmp_path: Path
) -> None:
    appointment_id = await new_appointment(api_url(server))
    wav = visit(tmp_path)
    queue.enqueue(appointment_id, wav)
    server.server.knobs.fail_next("/api/recordings/add", 2, status=500)
    sleep = FakeSleep(clock)
    async with client(api_url(server)) as api:
        await run(queue, api, sleep=sleep, until=lambda: settled(queue))
    assert sleep.delays == [2.0, 4.0]  # full jitter at rng 0.5: half of 4 s, then half of 8 s
    assert queue.items()[0].state is ItemState.DONE
    assert stored_bytes(server, appointment_id) == wav.read_bytes()


async def test_rate_limit_retry_after_is_honoured(
    server: RunningServer, queue: UploadQueue, clock: Clock, tmp_path: Path
) -> None:
    appointment_id = await new_appointment(api_url(server))
    queue.enqueue(appointment_id, visit(tmp_path))
    server.server.knobs.fail_next("/api/recordings/add", 1, status=429, retry_after=30)
    sleep = FakeSleep(clock)
    async with client(api_url(server)) as api:
        await run(queue, api, sleep=sleep, until=lambda: settled(queue))
    assert sleep.delays == [30.0]
    assert queue.items()[0].state is ItemState.DONE


async def test_no_subscription_keeps_the_item_blocked(
    server: RunningServer, queue: UploadQueue, clock: Clock, tmp_path: Path
) -> None:
    appointment_id = await new_appointment(api_url(server))
    wav = visit(tmp_path)
    queue.enqueue(appointment_id, wav)
    server.server.set_subscription(EMAIL, False)
    async with client(api_url(server)) as api:
        report = await drain(queue, api)
        [item] = queue.items()
        assert report.blocked == [item.item_id]
        assert (item.state, item.next_attempt_at) == (ItemState.BLOCKED, clock.now + 64.0)
        assert item.last_error == "MediSync subscription required (HTTP 403)"
        assert wav.exists() and server.server.store.recording(appointment_id) is None
        server.server.set_subscription(EMAIL, True)
        clock.now += 64.0
        await drain(queue, api)
    assert queue.items()[0].state is ItemState.DONE
    assert stored_bytes(server, appointment_id) == wav.read_bytes()


async def test_unknown_appointment_is_dead_lettered_with_audio(
    server: RunningServer, queue: UploadQueue, tmp_path: Path
) -> None:
    wav = visit(tmp_path)
    original = wav.read_bytes()
    queue.enqueue("0123456789abcdef01234567", wav)
    async with client(api_url(server)) as api:
        report = await drain(queue, api)
    [dead] = queue.dead_items()
    assert report.dead == [dead.item_id] and queue.items() == []
    assert dead.dead_reason == "appointment not found on MediSync (HTTP 404)"
    assert file_bytes(dead.audio_path) == original


async def test_expired_token_costs_one_relogin(server: RunningServer, queue: UploadQueue, tmp_path: Path) -> None:
    appointment_id = await new_appointment(api_url(server))
    queue.enqueue(appointment_id, visit(tmp_path))
    async with client(api_url(server)) as api:
        await api.login()
        server.server.expire_tokens()
        await drain(queue, api)
        assert api.http.logins == 2
    assert queue.items()[0].state is ItemState.DONE


async def test_lost_response_then_already_exists_is_success_once(
    server: RunningServer, queue: UploadQueue, clock: Clock, tmp_path: Path, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    appointment_id = await new_appointment(api_url(server))
    wav = visit(tmp_path)
    queue.enqueue(appointment_id, wav)
    port = int(api_url(server).split(":")[2].split("/")[0])
    proxy = tcp_proxy("127.0.0.1", port)
    sleep = FakeSleep(clock)
    async with client(proxy.url("http") + "/api") as api:
        await api.login()
        proxy.lose_response_to(b"POST /api/recordings/add")
        await run(queue, api, sleep=sleep, until=lambda: settled(queue))
    assert proxy.responses_lost == 1 and sleep.delays == [2.0]
    [item] = queue.items()
    assert (item.state, item.attempts) == (ItemState.DONE, 1)
    assert stored_bytes(server, appointment_id) == wav.read_bytes()
    assert len([p for p in server.server.store.recordings_dir.iterdir() if p.is_file()]) == 1


async def test_different_recording_on_server_is_dead_lettered_not_overwritten(
    server: RunningServer, queue: UploadQueue, tmp_path: Path
) -> None:
    appointment_id = await new_appointment(api_url(server))
    other = visit(tmp_path, seed=2)
    async with client(api_url(server)) as api:
        await api.upload_recording(appointment_id, other)
        wav = visit(tmp_path, seed=3)
        original = wav.read_bytes()
        queue.enqueue(appointment_id, wav)
        await drain(queue, api)
    [dead] = queue.dead_items()
    assert dead.dead_reason == "MediSync holds a different recording for this appointment"
    assert file_bytes(dead.audio_path) == original
    assert stored_bytes(server, appointment_id) == other.read_bytes()


async def test_over_limit_visit_is_uploaded_as_mp3(server: RunningServer, clock: Clock, tmp_path: Path) -> None:
    appointment_id = await new_appointment(api_url(server))
    wav = visit(tmp_path, seconds=4.0)  # 128 kB of PCM
    settings = UploadSettings(queue_dir=str(tmp_path / "queue"), max_bytes=80_000)
    queue = UploadQueue(settings, clock=clock)
    item = queue.enqueue(appointment_id, wav)
    assert item.audio_path.endswith(".mp3")
    async with client(api_url(server), max_upload_bytes=settings.max_bytes) as api:
        await drain(queue, api)
    stored = stored_bytes(server, appointment_id)
    assert stored == file_bytes(item.audio_path)
    assert hashlib.sha256(stored).hexdigest() == item.sha256
    clock.now += settings.retention_hours * 3600
    assert queue.purge_expired() == 1
    assert not file_exists(str(wav)) and not file_exists(item.audio_path)


def test_cli_retry_uploads_with_progress_lines(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    appointment_id = asyncio.run(new_appointment(api_url(server)))
    wav = visit(tmp_path, seconds=3.0)
    monkeypatch.setenv("MEDISYNC_EMAIL", EMAIL)
    monkeypatch.setenv("MEDISYNC_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDISYNC_AGENT_CONFIG", str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text(
        f'[upload]\nqueue_dir = "{tmp_path / "queue"}"\n[archive]\ndirectory = "{tmp_path / "archive"}"\n'
        f'[api]\napi_url = "{api_url(server)}"\n'
    )
    assert main(["uploads", "add", appointment_id, str(wav)]) == 0  # copied into the archive folder, then queued
    assert main(["uploads", "retry"]) == 0
    out, err = capsys.readouterr()
    assert "1 uploaded, 0 failed" in out
    assert "100% of 0.1 MB sent" in err  # stderr is not a terminal here: progress as lines
    assert stored_bytes(server, appointment_id) == wav.read_bytes()
    assert main(["uploads", "list"]) == 0
    listing = capsys.readouterr().out
    assert appointment_id in listing and " done " in listing
