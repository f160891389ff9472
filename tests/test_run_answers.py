"""``medisync-agent run`` records whatever MediSync answers: every documented shape, every kind of garbage.

The real CLI as a process against the local server, whose ``rest_shape`` and ``garble_next`` knobs answer like
servers written from MediSync's other documents, or like a broken proxy or backend. In every case the visit is
recorded and read back sample for sample, the person sees one WARNING naming what failed (never a traceback, a
token or the password), and the recording is uploaded when uploads can still work or stays queued (exit 75).
"""

from __future__ import annotations

import re
import wave
from pathlib import Path

import pytest

from agent.server.knobs import REST_SHAPES, GarbageKind, RestShape
from tests.plugins.archive import record_in_process, wav_pcm
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, recording_files, stored_recording

VISIT_SECONDS = 3
CONFIRM_TIMEOUT_S = 1.0
"""``api.confirm_timeout_s`` where a test wants the checks cut short (a stall); others leave generous defaults."""
STALL_TIMEOUT_S = 5.0
"""``api.timeout_s`` where a test wants a stalled request to time out."""
STALL_S = 60.0
"""A stalled answer comes this late: after any deadline of the agent's."""
WARNING = "MediSync did not confirm the visit"


@pytest.fixture
def visit_wav(tmp_path_factory: pytest.TempPathFactory, dialogue_pcm: bytes) -> tuple[Path, bytes]:
    """A short 16 kHz visit and what the pipeline archives of it."""
    folder = tmp_path_factory.mktemp("visit")
    path = folder / "visit.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(dialogue_pcm[: VISIT_SECONDS * 32000])
    return path, record_in_process(f"file:{path}", folder / "expected.wav")


def agent_home(tmp_path: Path, server: RunningServer, api_url: str | None = None, **api: float) -> AgentHome:
    """An agent whose deadlines are generous (loaded or emulated machines are slow) unless ``api`` says else."""
    return AgentHome(tmp_path / "agent", api_url=api_url or server.api_url, speech_url=server.speech_url,
                     email=server.email, password=server.password,
                     settings={"api": {"confirm_timeout_s": 60.0, "timeout_s": 30.0, **api}})  # fmt: skip


def run_visit(home: AgentHome, appointment: str, wav: Path, *extra: str) -> tuple[int, str]:
    done = home.run("run", "--appointment", appointment, "--source", f"file:{wav}", "--pace", "fast", *extra)
    return done.returncode, done.stderr


def assert_recorded(home: AgentHome, expected: bytes, stderr: str, password: str) -> Path:
    """The visit's archive holds every sample; nothing a person must not see was printed."""
    assert "Traceback" not in stderr and password not in stderr and "Bearer" not in stderr, stderr
    [wav] = home.wavs()
    assert wav_pcm(wav) == expected
    assert home.partials() == [] and home.journals() == []
    return wav


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


@pytest.mark.parametrize("shape", REST_SHAPES)
def test_every_answer_shape_records_and_uploads(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes], shape: RestShape
) -> None:
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.answer_shape(shape)
    home = agent_home(tmp_path, medisync_server)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 0, stderr
    assert warnings(stderr) == [], stderr  # every shape is a correct answer: nothing to warn about
    assert re.search(r"upload\s+uploaded and confirmed", stderr)
    assert re.search(r"stream confirmed by server\s+yes", stderr), stderr
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


GARBAGE: tuple[GarbageKind, ...] = ("not_json", "array", "wrong_types", "empty", "html", "server_error",
                                    "bad_encoding", "stall")  # fmt: skip
BEFORE_THE_VISIT = {
    "login": ("/api/login",),
    "subscription and appointment": ("/api/settings/subscription", "/api/appointments/get"),
}


@pytest.mark.parametrize("asked", list(BEFORE_THE_VISIT))
@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_before_the_visit_warns_once_and_records(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes], kind: GarbageKind, asked: str
) -> None:
    appointment = medisync_server.create_appointment()
    for path in BEFORE_THE_VISIT[asked]:
        medisync_server.knobs.garble_next(path, kind, delay_s=STALL_S)
    cut_short = {"confirm_timeout_s": CONFIRM_TIMEOUT_S} if kind == "stall" else {}
    home = agent_home(tmp_path, medisync_server, **cut_short)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 0, stderr  # the garbage came once: the stream and the upload caught up
    [warning] = warnings(stderr)
    assert WARNING in warning and "recording anyway" in warning
    if kind == "stall":
        assert f"no answer within {CONFIRM_TIMEOUT_S:g} s" in warning
    else:
        for what in asked.split(" and "):
            assert f"{what}: " in warning, warning
    assert re.search(r"upload\s+uploaded and confirmed", stderr)
    assert re.search(r"stream confirmed by server\s+yes", stderr), stderr
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


REFUSALS = {
    "429 on login": ("/api/login", {"status": 429, "retry_after": 30}, "login: rate limited (HTTP 429)"),
    "503 on login": ("/api/login", {"status": 503}, "login: server error (HTTP 503)"),
    "false envelope on the subscription": ("/api/settings/subscription", {"kind": "envelope"},
                                           "subscription: refused (HTTP 200)"),
    "429 on the appointment": ("/api/appointments/get", {"status": 429}, "appointment: rate limited (HTTP 429)"),
    "500 on the appointment": ("/api/appointments/get", {"status": 500}, "appointment: server error (HTTP 500)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_answers_that_are_not_definite_warn_once_and_record(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes], case: str
) -> None:
    """Only a refused password and an unknown appointment stop a visit; a 429, a 5xx or a ``success: false``
    about something else are no reason to lose it."""
    path, fault, reason = REFUSALS[case]
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.fail_next(path, **fault)  # type: ignore[arg-type]
    home = agent_home(tmp_path, medisync_server)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 0, stderr
    [warning] = warnings(stderr)
    assert f"{WARNING} ({reason}): recording anyway" in warning, warning
    assert "Injected failure" not in warning  # the server's own words stay out of the log
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


def test_garbage_for_good_still_records_and_queues(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes]
) -> None:
    """Every REST answer garbage (and the speech socket down too): recorded, queued, delivered once MediSync heals."""
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.garble_next("/api/", "html", 10_000)
    medisync_server.knobs.refuse_handshake(503, count=-1)
    home = agent_home(tmp_path, medisync_server)

    code, stderr = run_visit(home, appointment, visit_wav[0], "--set", "stream.end_timeout_s=1")

    assert code == 75, stderr
    warning = warnings(stderr)[0]
    assert "login: POST login: response is an HTML page, not JSON" in warning
    assert "queued: will be retried" in stderr
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    [item] = home.items()
    assert item["state"] == "pending"

    medisync_server.knobs.reset()
    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


UPLOAD = "/api/recordings/add"


@pytest.mark.parametrize("kind", ["not_json", "array", "wrong_types", "empty", "html", "bad_encoding"])
def test_unreadable_upload_answer_is_checked_against_the_server(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes], kind: GarbageKind
) -> None:
    """The server stored the upload but its answer is garbage: the agent asks what it holds, and it is done."""
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.garble_next(UPLOAD, kind)
    home = agent_home(tmp_path, medisync_server)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 0, stderr
    assert re.search(r"upload\s+uploaded and confirmed", stderr)
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert len(recording_files(medisync_server)) == 1
    [item] = home.items()
    assert item["state"] == "done"


@pytest.mark.parametrize("kind", ["server_error", "stall"])
def test_failed_upload_answer_stays_queued_and_is_reconciled_later(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes], kind: GarbageKind
) -> None:
    """5xx or no answer after the server stored it: queued (exit 75); the retry meets "already exists" and
    compares, so the visit is delivered exactly once."""
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.garble_next(UPLOAD, kind, delay_s=STALL_S)
    home = agent_home(tmp_path, medisync_server, timeout_s=STALL_TIMEOUT_S)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 75, stderr
    assert "queued: will be retried" in stderr
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    [item] = home.items()
    assert item["state"] == "pending"

    retried = home.run("uploads", "retry", "--now")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
    assert len(recording_files(medisync_server)) == 1
    [item] = home.items()
    assert item["state"] == "done"


def test_upload_answer_for_another_appointment_is_not_done(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes]
) -> None:
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.garble_next(UPLOAD, "other_appointment")
    home = agent_home(tmp_path, medisync_server)

    code, stderr = run_visit(home, appointment, visit_wav[0])

    assert code == 75, stderr
    assert "uploaded and confirmed" not in stderr
    assert "NOT uploaded: moved to the dead-letter folder (audio kept)" in stderr
    assert "Traceback" not in stderr and medisync_server.password not in stderr
    listed = home.run("uploads", "list")
    assert "names another appointment" in listed.stdout, listed.stdout
    dead = sorted((home.queue_dir / "dead").glob("*.wav"))
    assert [wav_pcm(p) for p in dead] == [visit_wav[1]]  # the audio is kept, whole


def test_api_url_without_api_suffix_records_and_uploads(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes]
) -> None:
    appointment = medisync_server.create_appointment()
    home = agent_home(tmp_path, medisync_server, api_url=medisync_server.urls.base_url)

    code, stderr = run_visit(home, appointment, visit_wav[0], "--api-url", medisync_server.urls.base_url + "/")

    assert code == 0, stderr
    assert warnings(stderr) == [], stderr
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)


def test_login_404_names_the_url_records_and_queues(
    medisync_server: RunningServer, tmp_path: Path, visit_wav: tuple[Path, bytes]
) -> None:
    appointment = medisync_server.create_appointment()
    wrong = medisync_server.urls.base_url + "/not-medisync"
    home = agent_home(tmp_path, medisync_server, api_url=wrong)

    code, stderr = run_visit(home, appointment, visit_wav[0], "--no-stream")

    assert code == 75, stderr
    warning, *later = warnings(stderr)
    assert all("agent.archive.upload_runner: upload item" in line for line in later), later  # the queue's own
    assert f"{wrong}/api/login answered HTTP 404" in warning and "https://app.medisync.me/api" in warning
    assert "not found for this account" not in stderr  # the appointment is not blamed
    wav = assert_recorded(home, visit_wav[1], stderr, medisync_server.password)
    [item] = home.items()
    assert item["state"] == "pending"  # a wrong URL is no reason to give the visit up

    retried = home.run("uploads", "retry", "--now", "--set", f"api.api_url={medisync_server.urls.base_url}")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
