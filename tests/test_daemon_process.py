"""The daemon as a real subprocess against the local MediSync server: visits through the control socket, uploads,
SIGTERM in the middle of a visit, sd_notify on a test-owned NOTIFY_SOCKET, the CLI commands that talk to it."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.control import GetStatus, StartVisit, StopVisit
from agent.settings import UploadSettings
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer

pytestmark = pytest.mark.slow


def stored_bytes(server: RunningServer, appointment_id: str) -> bytes | None:
    rec = server.server.store.recording(appointment_id)
    return None if rec is None else (server.server.store.recordings_dir / rec.file_name).read_bytes()


def only_wav(directory: Path) -> Path:
    wavs = sorted(directory.glob("*.wav"))
    assert len(wavs) == 1, wavs
    return wavs[0]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_visit_through_control_socket_is_uploaded_byte_identical(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    daemon = start_daemon()
    daemon.wait_ready()
    mode = stat.S_IMODE(daemon.control.stat().st_mode)
    assert mode == 0o660
    appointment = medisync_server.create_appointment()

    started = daemon.ask(StartVisit(appointment_id=appointment))
    assert started.ok, started.error
    assert started.status is not None and started.status.state == "recording"
    poll(lambda: (daemon.ask(GetStatus()).status or started.status).visit_seconds >= 1.5, "1.5 s recorded")
    again = daemon.ask(StartVisit(appointment_id=appointment))
    assert not again.ok and "already recording" in again.error

    stopped = daemon.ask(StopVisit())
    assert stopped.ok, stopped.error
    assert "upload queued" in stopped.message
    ended = stopped.status  # the ended visit's figures, from the snapshot status read while it ran
    assert ended is not None and ended.state == "idle" and ended.appointment_id == appointment
    assert ended.visit_seconds >= 1.5 and ended.session_id == started.status.session_id

    archive = only_wav(daemon.archive_dir)
    poll(lambda: stored_bytes(medisync_server, appointment) is not None, "the upload to reach the server")
    assert stored_bytes(medisync_server, appointment) == uploaded_bytes(archive)
    with wave.open(io.BytesIO(uploaded_bytes(archive))) as w:  # decrypted by age
        assert w.getframerate() == 16000 and w.getnframes() >= 1.5 * 16000
    status = daemon.ask(GetStatus()).status
    assert status is not None and status.state == "idle" and status.device_state == "open"
    second = daemon.ask(StartVisit(appointment_id=appointment))  # one recording per appointment
    assert not second.ok and "already has a recorded visit" in second.error
    assert daemon.ask(GetStatus()).status.state == "idle"  # type: ignore[union-attr]
    assert appointment not in daemon.joined_log()  # ids stay out of the log
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()  # sealed, uploaded (opened with the device key) ...
    assert "libcrypto" in maps and "/cryptography/" not in maps  # ... through ssl's libcrypto, not cryptography's

    text = cli("status", "--socket", str(daemon.control))
    assert text.returncode == 0 and "state:" in text.stdout and "idle" in text.stdout
    rc, _ = daemon.terminate()
    assert rc == 0
    assert not daemon.control.exists()


def test_sigterm_mid_visit_leaves_valid_wav_and_queued_upload(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    # The recordings endpoint fails for a while, so the upload can only be queued, not done, before exit.
    medisync_server.server.knobs.fail_next("/api/recordings/add", 1000, status=500)
    daemon = start_daemon()
    daemon.wait_ready()
    appointment = medisync_server.create_appointment()
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok
    poll(lambda: (daemon.ask(GetStatus()).status).visit_seconds >= 2.0, "2 s recorded")  # type: ignore[union-attr]

    rc, seconds = daemon.terminate()
    print(f"exit after SIGTERM mid-visit: {seconds:.2f} s (stop timeout 10 s)")
    assert rc == 0
    assert seconds < 10.0
    archive = only_wav(daemon.archive_dir)
    with wave.open(io.BytesIO(uploaded_bytes(archive))) as w:  # decrypted by age
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
        assert w.getnframes() >= 2.0 * 16000
        assert len(w.readframes(w.getnframes())) == 2 * w.getnframes()
    queue = UploadQueue(UploadSettings(queue_dir=str(daemon.queue_dir)))
    item = queue.find(appointment)
    assert item is not None and item.state is ItemState.PENDING
    assert not list(daemon.archive_dir.glob("*.partial"))
    assert "STOPPING" not in daemon.joined_log()  # no NOTIFY_SOCKET: notifications are no-ops


def test_cli_without_daemon_names_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nope.sock"
    for args in (["status"], ["visit", "stop"], ["visit", "start", "--appointment", "a1"]):
        done = cli(*args, "--socket", str(sock))
        assert done.returncode == 69
        assert done.stderr.strip() == f"medisync-agent: error: the daemon is not running (no control socket at {sock})"


def test_daemon_help() -> None:
    done = cli("daemon", "--help")
    assert done.returncode == 0 and "control socket" in done.stdout and "SIGTERM" in done.stdout


def test_metrics_and_sighup_reload_waits_for_the_visit(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    import os
    import signal
    import socket
    import time


    with socket.socket() as probe:  # config rules refuse port 0; take a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.time()
    daemon = start_daemon(extra=f'metrics_address = "127.0.0.1:{port}"')
    daemon.wait_ready()

    def metric(name: str) -> float:
        return daemon.metric(name, default=0.0)  # a figure not exported yet reads 0

    def frames_captured() -> float:
        return metric("frames_captured_total")

    # Disk free for the archive (statvfs of its file system, f_bavail) and when the daemon started.
    poll(lambda: metric("archive_disk_free_bytes") > 0, "archive_disk_free_bytes from the queue poll")
    st = os.statvfs(daemon.archive_dir if daemon.archive_dir.exists() else daemon.archive_dir.parent)
    assert abs(metric("archive_disk_free_bytes") - st.f_bavail * st.f_frsize) < 0.01 * st.f_blocks * st.f_frsize
    assert abs(metric("archive_disk_free_ratio") - st.f_bavail / st.f_blocks) < 0.01
    assert started - 1 <= metric("start_time_seconds") <= time.time()

    first = frames_captured()
    poll(lambda: frames_captured() > first, "frames_captured to grow between visits")
    appointment = medisync_server.create_appointment()
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_log("will be reloaded when the current visit ends")
    assert daemon.ask(GetStatus()).status.pending_reload  # type: ignore[union-attr]
    poll(lambda: metric("bytes_sent_total") > 0, "the visit's audio to be streamed")
    assert daemon.ask(StopVisit()).ok
    # Counters that span visits: the audio the visit streamed and its confirmed upload.
    poll(lambda: metric("uploads_completed_total") >= 1, "uploads_completed_total to count the visit")
    assert metric("bytes_sent_total") > 0 and metric("upload_failures_total") == 0
    daemon.wait_for_log("configuration reloaded")
    daemon.proc.send_signal(signal.SIGHUP)
    poll(lambda: sum("configuration reloaded" in line for line in daemon.log) >= 2, "an idle reload at once")
    assert daemon.terminate()[0] == 0
    assert appointment not in daemon.joined_log()
