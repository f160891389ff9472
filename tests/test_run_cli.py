"""``medisync-agent run`` as a real process against the local MediSync server over real sockets.

The speech socket goes through a real TCP proxy; credentials come from a 0600 password file named in the TOML
configuration (or from the environment). What the run printed, archived and uploaded is checked against
independent readers (stdlib ``wave``, sox's ``soxi``) and against the bytes the server stored.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.plugins.archive import DIALOGUE, record_in_process, soxi_samples
from tests.plugins.keys import uploaded_bytes
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, poll, recording_files, stored_recording, wav_samples

TRANSCRIPT_LINE = re.compile(r"^\[SPEAKER_\d+ \| (\d+\.\d{3}) --> (\d+\.\d{3})\]: \S")


def speech_proxy(tcp_proxy: Callable[[str, int], TcpProxy], server: RunningServer) -> TcpProxy:
    target = urlsplit(server.speech_url)
    assert target.hostname is not None and target.port is not None
    return tcp_proxy(target.hostname, target.port)


def home_for(tmp_path: Path, server: RunningServer, speech_url: str | None = None, **kw: object) -> AgentHome:
    return AgentHome(tmp_path / "agent", api_url=server.api_url, speech_url=speech_url or server.speech_url,
                     email=server.email, password=server.password, **kw)  # type: ignore[arg-type]  # fmt: skip


def run_visit(home: AgentHome, appointment: str, *extra: str, source: Path = DIALOGUE,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return home.run("run", "--appointment", appointment, "--source", f"file:{source}", "--pace", "fast", *extra,
                    env=env)  # fmt: skip


@pytest.mark.slow
def test_run_streams_archives_and_uploads_through_a_proxy(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path, dialogue_pcm: bytes
) -> None:
    proxy = speech_proxy(tcp_proxy, medisync_server)
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()

    done = run_visit(home, appointment, "--speech-url", proxy.url(), "--api-url", medisync_server.api_url)

    assert done.returncode == 0, done.stderr
    transcript = [m for line in done.stdout.splitlines() if (m := TRANSCRIPT_LINE.match(line))]
    assert len(transcript) >= 5, done.stdout  # the dialogue has several utterances, each answered live
    times = [(float(m.group(1)), float(m.group(2))) for m in transcript]
    assert all(0 <= a < b <= len(dialogue_pcm) / 2 / 16000 + 0.01 for a, b in times)  # on the visit timeline
    assert proxy.connections >= 1  # the stream really went through the proxy
    assert re.search(r"upload\s+uploaded and confirmed", done.stderr)
    assert re.search(r"stream confirmed by server\s+yes", done.stderr), done.stderr
    [wav] = home.wavs()
    assert home.partials() == [] and home.journals() == []
    assert wav_samples(wav) == dialogue_pcm  # the whole visit, sample for sample, per the stdlib reader
    assert soxi_samples(wav) == len(dialogue_pcm) // 2  # and sox accepts it with the same length
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert len(recording_files(medisync_server)) == 1
    [item] = home.items()
    assert item["state"] == "done" and item["appointment_id"] == appointment


def test_credentials_from_the_environment(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = AgentHome(tmp_path / "agent", api_url="http://127.0.0.1:9/api", speech_url=medisync_server.speech_url,
                     email="", password=None)  # fmt: skip
    appointment = medisync_server.create_appointment()
    env = {"MEDISYNC_EMAIL": medisync_server.email, "MEDISYNC_PASSWORD": medisync_server.password,
           "MEDISYNC_AGENT_API_API_URL": medisync_server.api_url}  # fmt: skip

    done = run_visit(home, appointment, "--no-stream", "--duration", "3", env=env)

    assert done.returncode == 0, done.stderr
    assert "live stream" in done.stderr and "uploaded and confirmed" in done.stderr
    [wav] = home.wavs()
    assert len(wav_samples(wav)) == 3 * 16000 * 2
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert medisync_server.password not in done.stderr + done.stdout


def test_unknown_appointment_is_one_line_and_records_nothing(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = home_for(tmp_path, medisync_server)

    done = run_visit(home, "000000000000000000000000")

    assert done.returncode not in (0, 75)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medisync-agent: error: "), done.stderr
    assert "appointment 000000000000000000000000 not found" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert home.wavs() == home.partials() == home.journals() == [] and home.items() == []


def test_wrong_password_is_one_clear_line(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password="not-the-password")  # fmt: skip
    appointment = medisync_server.create_appointment()

    done = run_visit(home, appointment)

    assert done.returncode not in (0, 75)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medisync-agent: error: "), done.stderr
    assert "refused the login" in lines[0]
    assert "not-the-password" not in done.stderr
    assert home.wavs() == home.partials() == [] and home.items() == []


def test_password_file_readable_by_others_is_refused(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = home_for(tmp_path, medisync_server)
    home.password_file.chmod(0o644)

    done = run_visit(home, medisync_server.create_appointment())

    assert done.returncode not in (0, 75)
    assert done.stderr.strip().splitlines() == [
        f"medisync-agent: error: password file {home.password_file} is accessible by group or others (mode 0644); "
        f"run: chmod 600 {home.password_file}"
    ]
    assert home.wavs() == []


@pytest.mark.slow
def test_inactive_subscription_records_and_queues_then_uploads_after_reactivation(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()
    medisync_server.server.set_subscription(medisync_server.email, False)

    done = run_visit(home, appointment, "--duration", "10")

    assert done.returncode == 75, done.stderr  # recorded, but the upload has to wait
    assert "subscription inactive" in done.stderr
    assert re.search(r"live stream\s+off", done.stderr)  # never dialled
    assert "queued: MediSync says the subscription is inactive" in done.stderr
    [wav] = home.wavs()
    assert len(wav_samples(wav)) == 10 * 16000 * 2
    [item] = home.items()
    assert item["state"] == "blocked"
    assert medisync_server.server.store.recording(appointment) is None

    medisync_server.server.set_subscription(medisync_server.email, True)
    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    [item] = home.items()
    assert item["state"] == "done"


def test_second_visit_for_an_already_recorded_appointment_is_refused(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()
    first = run_visit(home, appointment, "--no-stream", "--duration", "2")
    assert first.returncode == 0, first.stderr

    again = run_visit(home, appointment, "--no-stream", "--duration", "3")

    # MediSync keeps one recording per appointment: a second one could never be delivered, and must not be
    # reported as "uploaded and confirmed" (that was the first visit's upload).
    assert again.returncode not in (0, 75)
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medisync-agent: error: "), again.stderr
    assert f"appointment {appointment} already has a recorded visit" in lines[0]
    [wav] = home.wavs()
    assert len(wav_samples(wav)) == 2 * 16000 * 2
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_medisync_unreachable_records_anyway_and_the_upload_waits(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    down = closed_port()
    home = AgentHome(tmp_path / "agent", api_url=f"http://127.0.0.1:{down}/api", speech_url=f"ws://127.0.0.1:{down}",
                     email=medisync_server.email, password=medisync_server.password,
                     settings={"stream": {"end_timeout_s": 1.0}})  # fmt: skip
    appointment = medisync_server.create_appointment()

    done = run_visit(home, appointment, "--duration", "4")

    assert done.returncode == 75, done.stderr
    assert "recording anyway" in done.stderr and "queued: will be retried" in done.stderr
    assert re.search(r"stream confirmed by server\s+no", done.stderr)
    [wav] = home.wavs()
    assert len(wav_samples(wav)) == 4 * 16000 * 2
    [item] = home.items()
    assert item["state"] == "pending"

    retried = home.run("uploads", "retry", "--now", "--set", f"api.api_url={medisync_server.api_url}")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


def wav_prefix(source: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` sample frames of ``source`` as their own WAV file."""
    with wave.open(str(source), "rb") as src, wave.open(str(out), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(frames))
    return out


@pytest.mark.slow
def test_ctrl_c_ends_the_visit_cleanly_and_uploads_what_was_recorded(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()
    log = tmp_path / "run.log"
    proc = home.popen("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "realtime",
                      log=log)  # fmt: skip
    poll(lambda: any(p.stat().st_size > 44 + 2 * 32000 for p in home.partials()) or proc.poll() is not None,
         "two seconds recorded")  # fmt: skip
    proc.send_signal(signal.SIGINT)

    assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and re.search(r"upload\s+uploaded and confirmed", text)
    [wav] = home.wavs()
    samples = wav_samples(wav)
    assert 2 * 32000 <= len(samples) < len(dialogue_pcm)  # stopped early, at the signal
    # The archive is the pipeline's output for exactly the input read before the stop, the resampler's flushed
    # tail included (computed without the audio that would have followed: ~31 ms at 22.05 kHz, so it differs from
    # the whole dialogue's output there). The realtime file source reads 20 ms blocks (441 frames -> 320 samples).
    blocks = round(len(samples) / 2 / 320)
    prefix = wav_prefix(DIALOGUE, blocks * 441, tmp_path / "prefix.wav")
    assert samples == record_in_process(f"file:{prefix}", tmp_path / "expected.wav")
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert home.partials() == [] and home.journals() == []


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "x" * 300, "a b"])
def test_malformed_appointment_id_is_one_line(medisync_server: RunningServer, tmp_path: Path, bad: str) -> None:
    home = home_for(tmp_path, medisync_server)

    done = run_visit(home, bad, "--no-stream", "--duration", "1")

    assert done.returncode not in (0, 75)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medisync-agent: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert home.wavs() == home.partials() == [] and home.items() == []


def test_new_appointment_for_a_patient_is_created_recorded_and_uploaded(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    token, uid = medisync_server.login()
    reply = httpx.post(f"{medisync_server.api_url}/patients/add", params={"uid": uid},
                       headers={"Authorization": f"Bearer {token}"},
                       json={"firstName": "Test", "lastName": "Patient", "dateOfBirth": "1980-01-01"})  # fmt: skip
    patient = reply.json()["data"]["_id"]
    home = home_for(tmp_path, medisync_server)

    done = home.run("run", "--new-appointment-for", patient, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                    "--duration", "2", "--no-stream")  # fmt: skip

    assert done.returncode == 0, done.stderr
    found = re.search(r"recording appointment (\w+);", done.stderr)
    assert found is not None, done.stderr
    [wav] = home.wavs()
    assert stored_recording(medisync_server, found.group(1)) == uploaded_bytes(wav)


def test_run_against_a_basic_mode_server_transcribes_each_utterance_once(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    medisync_server.knobs.force_basic = True  # MediSync as documented: no resume subprotocol
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()

    done = run_visit(home, appointment)

    assert done.returncode == 0, done.stderr
    assert re.search(r"live stream\s+basic, done", done.stderr), done.stderr
    transcript = [line for line in done.stdout.splitlines() if TRANSCRIPT_LINE.match(line)]
    assert len(transcript) >= 5 and len(set(transcript)) == len(transcript)  # whole utterances, none doubled
    assert all(n == 1 for n in medisync_server.basic_chunk_counts().values())
    [wav] = home.wavs()
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
