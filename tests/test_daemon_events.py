"""The device state through the daemon's real control socket (a subprocess against the local MediSync server):
several followers and ``status --follow`` see idle -> recording -> offline (speech stream cut through a real TCP
proxy) -> recording -> uploading -> idle, a follower that never reads holds nothing up, the daemon's stop ends
every stream with a clear line (the CLI exits 69), and the state hook gets each change (a hanging and a failing
hook are one WARNING line each; the hook never sees the daemon's environment); ``status --follow`` ends with
exit 130 on Ctrl-C and 69 when the daemon is killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.control import DaemonStatus, Follow, GetStatus, StartVisit, StopVisit, encode_request
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer

pytestmark = pytest.mark.slow


class LineFollower:
    """A follower on its own socket, reading every line in a thread."""

    def __init__(self, control: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(control))
        self.sock.sendall(encode_request(Follow()))
        self.lines: list[dict[str, object]] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.sock.makefile("rb") as stream:
            for line in stream:
                self.lines.append(json.loads(line))
        self.ended.set()

    def states(self) -> list[object]:
        return [e.get("state") for e in list(self.lines)]

    def saw(self, state: str, reason: str | None = None) -> bool:
        return any(e.get("state") == state and reason in (None, e.get("reason")) for e in list(self.lines))


def recorded(daemon: DaemonProcess, seconds: float = 0.5) -> None:
    """Wait until the visit holds some audio: one stopped before any is refused ("captured no audio")."""
    poll(lambda: (daemon.ask(GetStatus()).status or DaemonStatus()).visit_seconds >= seconds, f"{seconds} s recorded")


def test_followers_see_each_change_and_the_stop(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer,
    tcp_proxy: Callable[[str, int], TcpProxy],
) -> None:  # fmt: skip
    target = urlsplit(medisync_server.speech_url)
    assert target.hostname is not None and target.port is not None
    proxy = tcp_proxy(target.hostname, target.port)
    daemon = start_daemon(env={"MEDISYNC_AGENT_API_SPEECH_URL": proxy.url()})
    daemon.wait_ready()
    cli = follow_cli(daemon.control)
    assert cli.stdout is not None
    first = json.loads(cli.stdout.readline())  # the CLI follows before anything changes
    followers = [LineFollower(daemon.control) for _ in range(2)]
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(str(daemon.control))
    stuck.sendall(encode_request(Follow()))  # never reads a byte
    poll(lambda: all(f.states()[:1] == ["idle"] for f in followers), "the current state as the first line")

    appointment = medisync_server.create_appointment()
    started = daemon.ask(StartVisit(appointment_id=appointment))
    assert started.ok, started.error
    poll(lambda: (daemon.ask(GetStatus()).status or started.status).connection == "streaming", "the stream")
    proxy.cut_after_client_bytes(1)  # every new connection fails at once: the stream stays down
    proxy.cut()
    poll(lambda: all(f.saw("offline", "speech stream disconnected") for f in followers), "offline")
    proxy.cut_after_client_bytes(None)
    poll(lambda: all(f.states()[-1:] == ["recording"] for f in followers), "recording again after the outage")
    recorded(daemon)
    assert daemon.ask(StopVisit()).ok
    poll(lambda: all(f.saw("uploading") and f.states()[-1] == "idle" for f in followers), "uploaded, idle")

    rc, _ = daemon.terminate()
    assert rc == 0
    print("states seen:", " ".join(f"{e.get('state')}({e.get('reason')})" for e in followers[0].lines))
    for f in followers:
        assert f.ended.wait(20)
        assert f.lines[-1] == {"ok": False, "error": "the daemon is stopping"}
        events = f.lines[:-1]
        assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
        states = f.states()[:-1]
        assert states.index("recording") < states.index("offline") < len(states) - 1 - states[::-1].index("uploading")
        session = started.status.session_id if started.status else ""
        assert {e["session_id"] for e in events if e["state"] in ("recording", "offline")} == {session}
        assert appointment not in json.dumps(f.lines)  # ids only: never the appointment
    stuck.settimeout(20)
    taken = b"".join(iter(lambda: stuck.recv(65536), b""))  # what the follower that never read was sent
    stuck.close()
    assert taken.splitlines()[-1] == b'{"ok":false,"error":"the daemon is stopping"}'
    assert len(taken.splitlines()) == len(followers[0].lines)  # everything, though it read nothing until now
    out, err = cli.communicate(timeout=20)
    assert cli.returncode == 69, err
    assert err.strip() == "medisync-agent: error: the daemon is stopping"
    printed = [first, *(json.loads(line) for line in out.splitlines())]
    assert [e["state"] for e in printed] == followers[0].states()[:-1]  # one line per change, the same changes


HOOK = """
import json, os, sys, time
event = json.loads(sys.stdin.read())
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"state": os.environ["MEDISYNC_STATE"], "event": event, "env": sorted(os.environ)}) + "\\n")
if event["state"] == "recording":
    time.sleep(60)
if event["state"] == "uploading":
    sys.exit("the LED is on fire")
"""


def test_hook_gets_each_change_and_a_hanging_or_failing_one_is_a_warning(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer, tmp_path: Path
) -> None:
    seen = tmp_path / "hook.jsonl"
    argv = [sys.executable, "-c", HOOK, str(seen)]
    daemon = start_daemon(extra=f"[device]\nstate_hook = {json.dumps(argv)}\nstate_hook_timeout_s = 1.0\n")
    daemon.wait_ready()

    def states() -> list[str]:
        return [json.loads(line)["state"] for line in seen.read_text().splitlines()] if seen.exists() else []

    poll(lambda: states() == ["idle"], "the hook for the first state")
    appointment = medisync_server.create_appointment()
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok
    poll(lambda: "recording" in states(), "the hook for recording")
    assert daemon.ask(GetStatus()).ok  # the hook hangs; the daemon does not
    recorded(daemon)
    assert daemon.ask(StopVisit()).ok
    daemon.wait_for_log("did not finish within 1 s (killed)")
    poll(lambda: states()[-1:] == ["idle"] and "uploading" in states(), "the hook for uploading, then idle")
    daemon.wait_for_log("exit status 1: the LED is on fire")
    rc, _ = daemon.terminate()
    assert rc == 0
    log = daemon.joined_log()
    warnings = [line for line in log.splitlines() if "state hook" in line]
    assert len(warnings) == 1 + states().count("uploading"), warnings  # one line per failed run
    assert all(" WARNING agent.hook: " in line for line in warnings), warnings
    assert "for state recording failed: did not finish within 1 s (killed)" in warnings[0]
    assert all("for state uploading failed: exit status 1: the LED is on fire" in w for w in warnings[1:])
    assert medisync_server.password not in seen.read_text()
    for line in seen.read_text().splitlines():
        entry = json.loads(line)
        assert entry["state"] == entry["event"]["state"]
        assert not {"MEDISYNC_PASSWORD", "CREDENTIALS_DIRECTORY"} & set(entry["env"])


def test_uploads_failing_between_visits_show_offline_until_they_go_through(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    medisync_server.server.knobs.fail_next("/api/recordings/add", 3, status=503)  # then it takes the upload
    daemon = start_daemon()
    daemon.wait_ready()
    follower = LineFollower(daemon.control)
    assert daemon.ask(StartVisit(appointment_id=medisync_server.create_appointment())).ok
    poll(lambda: follower.saw("recording"), "recording")
    recorded(daemon)
    assert daemon.ask(StopVisit()).ok
    poll(lambda: follower.saw("offline", "MediSync unreachable, uploads waiting"), "offline between visits")
    poll(lambda: follower.states()[-1:] == ["idle"], "idle once the upload went through", deadline_s=60)
    states = follower.states()
    assert states.index("recording") < states.index("offline") < len(states) - 1
    rc, _ = daemon.terminate()
    assert rc == 0


def _default_sigint() -> None:
    # A shell that starts a job in the background ignores SIGINT for it, and a child keeps that; the follower
    # gets Ctrl-C as it would at a terminal whatever started the test run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def follow_cli(control: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent", "status", "--follow", "--socket", str(control)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip


def test_follow_ends_with_a_clear_line_on_ctrl_c_and_on_kill_9(start_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = start_daemon()
    daemon.wait_ready()
    interrupted, orphaned = follow_cli(daemon.control), follow_cli(daemon.control)
    for proc in (interrupted, orphaned):
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["state"] == "idle"  # the current state comes first
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=20)
    assert (interrupted.returncode, err) == (130, "medisync-agent: interrupted\n")
    daemon.proc.kill()  # kill -9: no stop line, the connection just ends
    daemon.proc.wait(20)
    _, err = orphaned.communicate(timeout=20)
    assert orphaned.returncode == 69
    assert err == ("medisync-agent: error: the daemon ended the event stream (it stopped, or this follower fell too "
                   "far behind)\n")  # fmt: skip


def test_microphone_warnings_ride_on_the_event_stream(start_daemon: Callable[..., DaemonProcess]) -> None:
    """-30 dBFS noise and digital silence, 6 s each: ``mic_silent`` is raised and cleared on the stream, idle."""
    daemon = start_daemon("synth:noise/6/-30+silence/6*100000")
    daemon.wait_ready()
    follower = LineFollower(daemon.control)

    def warnings() -> list[object]:
        return [e.get("warnings") for e in list(follower.lines)]

    poll(lambda: ["mic_silent"] in warnings(), "mic_silent on the event stream", deadline_s=40)
    raised = warnings().index(["mic_silent"])
    poll(lambda: [] in warnings()[raised:], "mic_silent cleared on the event stream", deadline_s=40)
    assert all(e.get("state") == "idle" for e in follower.lines)  # a warning, not a state of its own
    rc, _ = daemon.terminate()
    assert rc == 0
