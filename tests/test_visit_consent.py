"""Issue 13: consent at visit start, privacy pause on the daemon's control socket, and each bad input's answer.

Real processes: ``run`` and ``visit`` are the installed CLI; the daemon is ``medisync-agent daemon`` with a synthetic
microphone, against the local MediSync server. Each bad input is checked for the line a person sees, the exit code
and that nothing was recorded.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.audit_log import read_events
from agent.control import PauseVisit, ResumeVisit, StartVisit, StopVisit
from tests.plugins.archive import DIALOGUE
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, wav_samples
from tests.plugins.visit import poll as poll_for


def home_for(tmp_path: Path, server: RunningServer, **settings: dict[str, object]) -> AgentHome:
    return AgentHome(tmp_path / "agent", api_url=server.api_url, speech_url=server.speech_url, email=server.email,
                     password=server.password, settings=settings or None)  # fmt: skip


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_run_declined_records_nothing_but_the_audit_line(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()
    before = set(files_under(home.root))
    done = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast",
                    "--consent", "declined")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "consent declined: nothing recorded" in done.stderr
    assert set(files_under(home.root)) - before == {"audit/audit.jsonl", "audit/audit.lock"}
    lines = (home.root / "audit" / "audit.jsonl").read_text().splitlines()
    [event] = [json.loads(line) for line in lines]
    assert (event["event"], event["consent"], event["appointment"]) == ("consent", "declined", appointment)
    assert set(event) == {"at", "event", "visit", "appointment", "consent"}
    assert stat.S_IMODE((home.root / "audit" / "audit.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((home.root / "audit").stat().st_mode) == 0o700
    assert medisync_server.server.store.recording(appointment) is None


def test_run_without_a_required_answer_is_refused_with_exit_77(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = home_for(tmp_path, medisync_server, visit={"require_consent": True})
    before = set(files_under(home.root))
    for extra in ((), ("--consent", "not-asked")):
        done = home.run("run", "--appointment", "a1", "--source", f"file:{DIALOGUE}", "--pace", "fast", *extra)
        assert done.returncode == 77, done.stderr
        assert done.stderr.strip() == ("medisync-agent: error: consent required (visit.require_consent is on): ask "
                                       "the patient, then start with --consent given or --consent declined; nothing "
                                       "was recorded")  # fmt: skip
    assert set(files_under(home.root)) == before


def test_run_unknown_consent_value_exits_65(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = home_for(tmp_path, medisync_server)
    before = set(files_under(home.root))
    done = home.run("run", "--appointment", "a1", "--source", f"file:{DIALOGUE}", "--consent", "maybe")
    assert done.returncode == 65
    assert done.stderr.strip() == "medisync-agent: error: unknown consent 'maybe': use given, declined or not-asked"
    assert set(files_under(home.root)) == before


def test_visit_start_unknown_consent_value_exits_65_without_asking_the_daemon(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "visit", "start", "--appointment", "a1", "--consent",
                           "yes please", "--socket", str(tmp_path / "none.sock")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 65
    assert done.stderr.strip() == ("medisync-agent: error: unknown consent 'yes please': use given, declined or "
                                   "not-asked")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def visit_cli(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "agent", "visit", *args, "--socket", str(daemon.control)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_daemon_pause_resume_consent_and_their_refusals(start_daemon: Callable[..., DaemonProcess],
                                                        medisync_server: RunningServer) -> None:
    daemon = start_daemon(extra="[visit]\nrequire_consent = true\n",
                          env={"MEDISYNC_AGENT_DAEMON_METRICS_ADDRESS": f"127.0.0.1:{free_port()}"})
    daemon.wait_ready()
    metric = daemon.metric

    audit_dir = daemon.archive_dir.parent / "audit"

    code, _, err = visit_cli(daemon, "pause")
    assert (code, err.strip()) == (1, "medisync-agent: error: no visit is recording: nothing to pause")
    code, _, err = visit_cli(daemon, "resume")
    assert (code, err.strip()) == (1, "medisync-agent: error: no visit is paused: nothing to resume")

    appointment = medisync_server.create_appointment()
    code, _, err = visit_cli(daemon, "start", "--appointment", appointment)
    assert code == 77 and "consent required (visit.require_consent is on)" in err
    assert daemon.ask(StartVisit(appointment_id=appointment)).code == 77
    assert not daemon.archive_dir.exists() or not any(daemon.archive_dir.glob("visit-*"))

    declined = daemon.ask(StartVisit(appointment_id=appointment, consent="declined"))
    assert declined.ok and "consent declined: nothing recorded" in declined.message
    assert declined.status is not None and declined.status.state == "idle"
    assert not daemon.archive_dir.exists() or not any(daemon.archive_dir.glob("visit-*"))
    poll(lambda: metric("visits_declined_total") == 1.0, "visits_declined_total 1")

    started = daemon.ask(StartVisit(appointment_id=appointment, consent="given"))
    assert started.ok, started.error
    code, _, err = visit_cli(daemon, "resume")
    assert (code, err.strip()) == (1, "medisync-agent: error: the visit is not paused: nothing to resume")
    paused = daemon.ask(PauseVisit())
    assert paused.ok and paused.status is not None and paused.status.state == "paused"
    poll(lambda: metric("visit_paused") == 1.0, "visit_paused 1")
    shown = subprocess.run([sys.executable, "-m", "agent", "status", "--socket", str(daemon.control)],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "state:" in shown.stdout and "paused" in shown.stdout
    assert "PAUSED, nothing recorded or sent" in shown.stdout
    code, out, _ = visit_cli(daemon, "pause")
    assert code == 1
    code, out, _ = visit_cli(daemon, "resume")
    assert code == 0 and "resumed" in out and "state:" in out
    assert daemon.ask(ResumeVisit()).ok is False
    poll(lambda: metric("visit_paused") == 0.0 and metric("paused_seconds_total") > 0.0, "paused_seconds_total")
    stopped = daemon.ask(StopVisit())
    assert stopped.ok, stopped.error
    session = started.status.session_id if started.status else ""

    def audited() -> list[str]:
        return [f"{e.event}:{e.consent}" for e in read_events(audit_dir).events]

    poll(lambda: "archived:" in audited(), "the archived audit line")
    names = audited()
    assert names[0] == "consent:declined"
    assert names[1:] == ["consent:given", "started:", "paused:", "resumed:", "gap:", "stopped:", "archived:"]
    visit_events = [e for e in read_events(audit_dir).events if e.visit == session]
    assert [e.event for e in visit_events] == ["consent", "started", "paused", "resumed", "gap", "stopped", "archived"]
    rc, _ = daemon.terminate()
    assert rc == 0


def test_run_p_key_pauses_and_resumes_the_visit(medisync_server: RunningServer, tmp_path: Path,
                                                dialogue_pcm: bytes) -> None:
    home = home_for(tmp_path, medisync_server)
    appointment = medisync_server.create_appointment()
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(home.argv("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}"),
                                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                env=home.env())  # fmt: skip
    assert proc.stdin is not None

    def audited(name: str) -> bool:
        return name in [e.event for e in read_events(home.root / "audit").events]

    poll_for(lambda: audited("started"), "the visit to start")
    poll_for(lambda: b"press p to pause" in log_path.read_bytes(), "the pause key prompt")
    proc.stdin.write(b"p\n")
    proc.stdin.flush()
    poll_for(lambda: audited("paused"), "the pause")
    poll_for(lambda: b"PAUSED for privacy" in log_path.read_bytes(), "the pause line")
    time.sleep(2.0)  # two seconds of the visit paused (the file source runs at real time)
    proc.stdin.write(b"p\n")
    proc.stdin.flush()
    poll_for(lambda: audited("resumed"), "the resume")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) in (0, 75), log_path.read_text()
    events = read_events(home.root / "audit").events
    [gap] = [e for e in events if e.event == "gap"]
    assert gap.reason == "paused" and gap.start is not None and gap.end is not None
    assert gap.end - gap.start >= 1.5 * 16000
    [wav] = home.wavs()
    archive = np.frombuffer(wav_samples(wav), dtype="<i2")
    expected = np.frombuffer(dialogue_pcm, dtype="<i2")[: len(archive)]
    assert not archive[gap.start : gap.end].any()
    assert np.array_equal(archive[: gap.start], expected[: gap.start])
    assert np.array_equal(archive[gap.end :], expected[gap.end :])
