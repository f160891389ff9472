"""The daemon as a real process keeps uploading through bad queue items and a dying upload worker, without a
restart: what ``status`` and the metrics say about the worker's health while it dies and after it recovers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.archive.upload_queue import UploadQueue
from agent.control import DaemonStatus, GetStatus, StartVisit, StopVisit
from agent.settings import UploadSettings
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.test_supervise import write_bad_items
from tests.test_upload_queue import make_wav

pytestmark = pytest.mark.slow
DEADLINE_S = 90.0


def status(daemon: DaemonProcess) -> DaemonStatus:
    answer = daemon.ask(GetStatus()).status
    assert answer is not None
    return answer


def stored(server: RunningServer, appointment: str) -> bytes | None:
    rec = server.server.store.recording(appointment)
    return None if rec is None else (server.server.store.recordings_dir / rec.file_name).read_bytes()


def record_a_visit(daemon: DaemonProcess, appointment: str) -> None:
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok
    poll(lambda: status(daemon).visit_seconds >= 1.0, "1 s recorded")
    stopped = daemon.ask(StopVisit())
    assert stopped.ok and "upload queued" in stopped.message, stopped.error


def archived(daemon: DaemonProcess, appointment: str) -> bytes:
    item = UploadQueue(UploadSettings(queue_dir=str(daemon.queue_dir))).find(appointment)
    assert item is not None
    return uploaded_bytes(Path(item.audio_path))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_bad_items_and_a_dying_upload_worker_do_not_stop_uploads(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer, tmp_path: Path
) -> None:
    daemon = start_daemon(extra=f'metrics_address = "127.0.0.1:{free_port()}"')
    daemon.wait_ready()
    metric = daemon.metric

    # Items that used to kill the worker (deep nesting, a FIFO), a torn one, one whose id escapes the folder.
    daemon.archive_dir.mkdir(exist_ok=True)
    first = medisync_server.create_appointment()
    audio = make_wav(daemon.archive_dir / "visit-20260101T000000Z-00000001.wav", 0.5, seed=4)
    write_bad_items(daemon.queue_dir, audio, first)
    poll(lambda: stored(medisync_server, first) is not None, "the item with '../' in its id to upload", DEADLINE_S)
    assert stored(medisync_server, first) == uploaded_bytes(audio)
    assert not list(daemon.queue_dir.parent.rglob("escaped*"))

    second = medisync_server.create_appointment()
    record_a_visit(daemon, second)
    poll(lambda: stored(medisync_server, second) is not None, "the next visit to upload", DEADLINE_S)
    assert stored(medisync_server, second) == archived(daemon, second)
    now = status(daemon)
    assert (now.upload_worker, now.worker_restarts, now.quarantined) == ("running", 0, 3)

    # The worker dies for real: its lock file became a folder (IsADirectoryError on every pass).
    lock = daemon.queue_dir / ".lock"
    lock.unlink()
    lock.mkdir()
    third = medisync_server.create_appointment()
    record_a_visit(daemon, third)
    poll(lambda: status(daemon).upload_worker.startswith("restarting (IsADirectoryError"), "status to say so")
    poll(lambda: metric("upload_worker_up") == 0.0, "the metrics to show the worker down")
    lock.rmdir()
    poll(lambda: stored(medisync_server, third) is not None, "the visit to upload after the restart", DEADLINE_S)
    assert stored(medisync_server, third) == archived(daemon, third)

    poll(lambda: status(daemon).upload_worker == "running", "the worker to run again")
    after = status(daemon)
    assert after.worker_restarts >= 1 and after.quarantined == 3
    poll(lambda: metric("upload_worker_up") == 1.0, "the metrics to show the worker up again")  # refreshed per tick
    assert metric("worker_restarts_total") >= 1 and metric("uploads_quarantined") == 3.0
    text = subprocess.run([sys.executable, "-m", "agent", "status", "--socket", str(daemon.control)],
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert re.search(r"uploader: +running; [1-9]\d* background restart\(s\)", text), text
    assert "0 recording(s) need an appointment, 3 file(s) quarantined" in text

    assert daemon.terminate()[0] == 0
    log = daemon.joined_log()
    assert re.search(r"ERROR agent\.supervise: upload_worker stopped \(IsADirectoryError: .*\); restarting it in", log)
    assert "Traceback" not in log and "RecursionError" not in log
    for appointment in (first, second, third):
        assert appointment not in log


def test_recording_left_without_journal_is_listed_and_assigned_while_the_daemon_runs(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    daemon = start_daemon()
    daemon.wait_ready()
    daemon.archive_dir.mkdir(exist_ok=True)
    partial = daemon.archive_dir / "visit-20260101T000000Z-0000beef.wav.partial"
    partial.write_bytes(make_wav(daemon.archive_dir / "source.tmp.wav", 0.5, seed=8).read_bytes())
    (daemon.archive_dir / "source.tmp.wav").unlink()

    def uploads(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", "uploads", args[0], "--config", str(daemon.config),
                               *args[1:]], capture_output=True, text=True, timeout=60)  # fmt: skip

    listed = uploads("list")
    wav = partial.with_name(partial.name.removesuffix(".partial"))
    assert listed.returncode == 0 and f"medisync-agent uploads assign {wav} APPOINTMENT" in listed.stdout
    poll(lambda: status(daemon).needs_appointment == 1, "status to count the recording")

    appointment = medisync_server.create_appointment()
    assert uploads("assign", wav.name, appointment).returncode == 0
    poll(lambda: stored(medisync_server, appointment) is not None, "the daemon to upload it, woken by the new item")
    assert stored(medisync_server, appointment) == uploaded_bytes(wav)
    poll(lambda: status(daemon).needs_appointment == 0, "status to drop the count")
    assert daemon.terminate()[0] == 0
