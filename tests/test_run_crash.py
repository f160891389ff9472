"""Visits that end badly: ``kill -9`` of the real ``medisync-agent run`` process, and a lost upload response.

Faults are real: SIGKILL of the process, a TCP proxy that holds the upload's bytes (so the process is killed with
the visit queued but not uploaded), and a proxy that lets the upload through and resets the connection as the
answer comes back. The next start (``uploads retry`` or a new ``run``) must deliver the visit, exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.plugins.archive import DIALOGUE, soxi_samples
from tests.plugins.keys import uploaded_bytes
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.visit import (
    AgentHome,
    poll,
    recording_files,
    stored_recording,
    wav_samples,
)


def api_port(server: RunningServer) -> int:
    port = urlsplit(server.api_url).port
    assert port is not None
    return port


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, "the agent exited before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_after_the_visit_before_the_upload_then_retry_uploads_once(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path, dialogue_pcm: bytes
) -> None:
    api_proxy = tcp_proxy("127.0.0.1", api_port(medisync_server))
    home = AgentHome(tmp_path / "agent", api_url=f"http://127.0.0.1:{api_proxy.port}/api",
                     speech_url=medisync_server.speech_url, email=medisync_server.email,
                     password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()
    log = tmp_path / "run.log"
    proc = home.popen("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast", log=log)
    poll(lambda: home.journals() != [] or proc.poll() is not None, "the visit to start")
    api_proxy.delay_s = 3600.0  # login is done; from now on nothing reaches MediSync's REST API: the upload hangs
    poll(lambda: home.items() != [] or proc.poll() is not None, "the visit to be queued for upload")
    kill_9(proc)

    [wav] = home.wavs()
    assert wav_samples(wav) == dialogue_pcm  # the visit had ended: the archive is whole
    # The kill may fall before or after the visit journal is removed; both must end with one upload.
    [item] = home.items()
    assert item["state"] == "pending" and item["appointment_id"] == appointment
    assert medisync_server.server.store.recording(appointment) is None

    retried = home.run("uploads", "retry", "--now", "--set", f"api.api_url={medisync_server.api_url}")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    [item] = home.items()
    assert item["state"] == "done"
    # A new visit later: it finds the first visit delivered (a leftover journal is settled, not queued again).
    second = medisync_server.create_appointment()
    again = home.run("run", "--appointment", second, "--source", f"file:{DIALOGUE}", "--pace", "fast", "--duration",
                     "1", "--api-url", medisync_server.api_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "interrupted earlier visit" not in again.stderr and home.journals() == []
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert len(recording_files(medisync_server)) == 2  # one per appointment: the first is held once
    assert [i["state"] for i in home.items()] == ["done", "done"]


@pytest.mark.slow
def test_kill_9_during_the_visit_then_next_run_repairs_queues_and_uploads_it(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    first, second = medisync_server.create_appointment(), medisync_server.create_appointment()
    proc = home.popen("run", "--appointment", first, "--source", f"file:{DIALOGUE}", "--pace", "realtime",
                      log=tmp_path / "first.log")  # fmt: skip
    two_seconds = 44 + 2 * 16000 * 2
    poll(lambda: any(p.stat().st_size > two_seconds for p in home.partials()) or proc.poll() is not None,
         "two seconds of the visit on disk")  # fmt: skip
    kill_9(proc)
    [partial] = home.partials()
    on_disk = (partial.stat().st_size - 44) // 2
    assert home.journals() != [] and home.items() == []

    done = home.run("run", "--appointment", second, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                    "--duration", "2")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert re.search(r"queued an interrupted earlier visit for upload", done.stderr)
    assert home.partials() == [] and home.journals() == []
    repaired = home.archive / partial.name.removesuffix(".partial")
    samples = wav_samples(repaired)
    assert soxi_samples(repaired) == len(samples) // 2
    assert len(samples) // 2 >= on_disk - 16000  # at most the last second before the kill may be unsynced
    assert samples == dialogue_pcm[: len(samples)]  # every sample kept is the visit's own, at its index
    assert stored_recording(medisync_server, first) == uploaded_bytes(repaired)
    assert len(stored_recording(medisync_server, second)) > 2 * 16000 * 2
    assert len(recording_files(medisync_server)) == 2
    assert sorted(i["state"] for i in home.items()) == ["done", "done"]


@pytest.mark.slow
def test_lost_upload_response_is_resolved_as_already_there(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path
) -> None:
    proxy = tcp_proxy("127.0.0.1", api_port(medisync_server))
    home = AgentHome(tmp_path / "agent", api_url=proxy.url("http") + "/api", speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    appointment = medisync_server.create_appointment()
    proxy.lose_response_to(b"POST /api/recordings/add")  # the server stores the upload; its answer is lost

    done = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast")

    assert done.returncode == 75, done.stderr
    assert proxy.marked_requests == 1 and proxy.responses_lost == 1
    assert "queued: will be retried" in done.stderr
    [wav] = home.wavs()
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)  # it did arrive

    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    [item] = home.items()
    assert item["state"] == "done"
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert len(recording_files(medisync_server)) == 1  # reconciled, never a second copy
