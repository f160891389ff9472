"""The daemon (a real subprocess, driven through its control socket) after a visit that ended during a speech
outage: the visit's stream drains in the background while the next visit records at once; ``status`` shows it;
a stop ends it within ``stop_timeout_s`` and says in one line how much only the upload holds."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.archive.upload_queue import UploadQueue
from agent.control import DaemonStatus, GetStatus, StartVisit, StopVisit
from agent.settings import UploadSettings
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.server import RunningServer
from tests.plugins.visit import wav_samples

pytestmark = pytest.mark.slow

LONG_GRACE = {"MEDISYNC_AGENT_STREAM_END_TIMEOUT_S": "120"}
"""Streams wait long for confirmation: what ends them here is the server coming back, or the daemon stopping."""


def status(daemon: DaemonProcess) -> DaemonStatus:
    answer = daemon.ask(GetStatus()).status
    assert answer is not None
    return answer


def archive_pcm(path: Path) -> bytes:
    return wav_samples(path)  # the archive is sealed: decrypted by Debian's age first


def record_during_outage(daemon: DaemonProcess, server: RunningServer, appointment: str) -> str:
    """Start a visit while the speech server refuses every handshake; returns its session id once at least one
    second of speech waits in its send ring."""
    server.knobs.refuse_handshake(503, count=-1)
    started = daemon.ask(StartVisit(appointment_id=appointment))
    assert started.ok and started.status is not None, started.error
    poll(lambda: status(daemon).ring_fill_s >= 1.0, "a second of speech waiting in the ring")
    return started.status.session_id


def test_the_next_visit_starts_while_the_last_ones_stream_drains(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    daemon = start_daemon(env=LONG_GRACE)
    daemon.wait_ready()
    first, second = medisync_server.create_appointment(), medisync_server.create_appointment()
    session = record_during_outage(daemon, medisync_server, first)

    asked = time.monotonic()
    stopped = daemon.ask(StopVisit())
    started = daemon.ask(StartVisit(appointment_id=second))
    waited = time.monotonic() - asked

    assert stopped.ok and "upload queued" in stopped.message and "live stream still confirming" in stopped.message
    assert started.ok and started.status is not None, started.error
    assert waited < 20.0  # the backlog would have held both answers for end_timeout_s = 120 s
    now = status(daemon)
    assert now.state == "recording" and now.draining_streams == 1 and now.draining_seconds >= 1.0
    shown = subprocess.run([sys.executable, "-m", "agent", "status", "--socket", str(daemon.control)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "ended visits' streams: 1 still confirming" in shown.stdout, shown.stdout
    [first_wav] = sorted(daemon.archive_dir.glob("visit-*.wav"))  # the second visit is still a .partial

    medisync_server.knobs.refuse_handshake(503, count=0)  # the speech server is back
    poll(lambda: status(daemon).draining_streams == 0, "the first visit's stream to drain", deadline_s=60)

    daemon.wait_for_log("live stream of the ended visit confirmed by the server")
    audio = medisync_server.session_audio(session)
    assert audio.closed_last_seq is not None and audio.gaps == [] and audio.runs
    pcm = archive_pcm(first_wav)
    assert all(pcm[start * 2 : start * 2 + len(run)] == run for start, run in audio.runs)  # the visit's own audio
    assert sum(len(run) for _, run in audio.runs) == len(set().union(
        *(range(start, start + len(run) // 2) for start, run in audio.runs))) * 2  # nothing stored twice
    assert status(daemon).state == "recording"  # the second visit went on throughout
    assert daemon.ask(StopVisit()).ok
    rc, _ = daemon.terminate()
    assert rc == 0 and "Traceback" not in daemon.joined_log()


def test_a_stop_ends_draining_streams_in_time_and_says_what_only_the_upload_holds(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    daemon = start_daemon(env=LONG_GRACE)
    daemon.wait_ready()
    appointment = medisync_server.create_appointment()
    record_during_outage(daemon, medisync_server, appointment)
    assert daemon.ask(StopVisit()).ok
    assert status(daemon).draining_streams == 1

    rc, seconds = daemon.terminate()

    assert rc == 0 and seconds < 10.0  # the configured stop_timeout_s
    log = daemon.joined_log()
    [line] = [line for line in log.splitlines() if "had not confirmed" in line]
    assert "ended 1 live stream(s)" in line and "the queued uploads hold it" in line
    assert appointment not in log and "Traceback" not in log
    queue = UploadQueue(UploadSettings(queue_dir=str(daemon.queue_dir)))
    assert queue.find(appointment) is not None
