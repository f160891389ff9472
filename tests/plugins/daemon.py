"""Fixtures for the daemon tests (owner: H-daemon): the daemon as a real subprocess, a test-owned NOTIFY_SOCKET,
and a private PulseAudio server whose sine source plays the microphone and can be unplugged.

``start_daemon(source=..., watchdog_usec=None, extra=None, env=None, umask=-1)`` -> :class:`DaemonProcess`
(stopped at teardown)
``notify_socket`` -> :class:`NotifyListener` (datagram socket the test owns; ``.wait_for("READY=1")``)
``private_pulse`` -> :class:`PrivatePulse` (own pulseaudio with only our modules: ``.plug()``, ``.unplug()``)

A private PulseAudio server (not the shared per-user one) is used for device loss because with nothing else
loaded, removing its only source really ends the capture stream (the shared server would move our stream to
another test's source instead), which is what unplugging a USB microphone does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.commands.visit import ask_daemon
from agent.control import Request, Response
from tests.plugins.server import RunningServer

DEADLINE_S = 20.0
SYNTH_MIC = "synth:noise=3/2/-25+tone=300/1/-12+silence/1*100000"
"""A synthetic source that runs for days in real time: noise, a tone and silence, repeated."""


def poll(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def short_tmp_dir() -> Path:
    """Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix="msd-", dir="/tmp"))


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))

    def lines(self, since: float = 0.0) -> list[str]:
        with self._lock:
            return [line for t, line in self.messages if t >= since]

    def wait_for(self, line: str, since: float = 0.0, deadline_s: float = DEADLINE_S) -> float:
        """Arrival time of the first ``line`` received after ``since``."""
        found: list[float] = []

        def arrived() -> bool:
            with self._lock:
                found.extend(t for t, got in self.messages if got == line and t >= since)
            return bool(found)

        poll(arrived, f"{line} on NOTIFY_SOCKET", deadline_s)
        return found[0]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[str]
    control: Path
    archive_dir: Path
    queue_dir: Path
    config: Path
    log: list[str] = field(default_factory=list)
    _pump: threading.Thread | None = None

    def start_pump(self) -> None:
        assert self.proc.stderr is not None
        stream = self.proc.stderr

        def pump() -> None:
            for line in stream:
                self.log.append(line.rstrip("\n"))

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def ask(self, request: Request) -> Response:
        return ask_daemon(str(self.control), request, timeout_s=DEADLINE_S)

    def metric(self, name: str, default: float | None = None) -> float:
        """``medisync_agent_<name>`` as the daemon's metrics endpoint (started with metrics on) serves it now;
        ``default`` when it is not there yet, else an AssertionError."""
        url = re.search(r"metrics on (http://\S+)", self.wait_for_log("metrics on http://"))
        assert url is not None
        text = httpx.get(url.group(1), timeout=10).text
        found = re.search(rf"^medisync_agent_{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        if found is None and default is not None:
            return default
        assert found is not None, name
        return float(found.group(1))

    def wait_for_log(self, text: str, deadline_s: float = DEADLINE_S) -> str:
        found: list[str] = []

        def seen() -> bool:
            found.extend(line for line in list(self.log) if text in line)
            if not found and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before logging {text!r}:\n"
                                     + "\n".join(self.log))
            return bool(found)

        poll(seen, f"daemon log line {text!r}", deadline_s)
        return found[0]

    def wait_ready(self) -> None:
        self.wait_for_log("ready:")
        poll(lambda: self.control.exists(), "the control socket")

    def terminate(self, deadline_s: float = DEADLINE_S) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds until the process was gone)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(deadline_s)
        return rc, time.monotonic() - started

    def joined_log(self) -> str:
        if self._pump is not None:
            self._pump.join(2.0)
        return "\n".join(self.log)


def write_config(path: Path, server: RunningServer, work: Path, source: str, extra: str = "") -> None:
    path.write_text(
        f"""
[audio]
source = "{source}"
[api]
api_url = "{server.api_url}"
speech_url = "{server.speech_url}"
email = "{server.email}"
timeout_s = 10.0
[archive]
directory = "{work / 'recordings'}"
[upload]
queue_dir = "{work / 'uploads'}"
backoff_first_s = 0.5
[stream]
end_timeout_s = 5.0
backoff_first_s = 0.1
backoff_cap_s = 0.5
[daemon]
control_socket = "{work / 'run' / 'control.sock'}"
stop_timeout_s = 10.0
device_retry_cap_s = 0.5
{extra}
"""
    )


@pytest.fixture
def start_daemon(medisync_server: RunningServer) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(source: str = SYNTH_MIC, *, env: dict[str, str] | None = None, extra: str = "",
              password: str | None = None, umask: int = -1) -> DaemonProcess:  # fmt: skip
        work = short_tmp_dir()
        config = work / "agent.toml"
        write_config(config, medisync_server, work, source, extra)
        inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env = {**inherited, "MEDISYNC_PASSWORD": password or medisync_server.password, **(env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "agent", "daemon", "--config", str(config)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=full_env,
                                umask=umask)  # fmt: skip
        daemon = DaemonProcess(proc, work / "run" / "control.sock", work / "recordings", work / "uploads", config)
        daemon.start_pump()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
        shutil.rmtree(daemon.config.parent, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    work = short_tmp_dir()
    listener = NotifyListener(work / "notify.sock")
    yield listener
    listener.close()
    shutil.rmtree(work, ignore_errors=True)


@dataclass
class PrivatePulse:
    server: str
    """``unix:/path``: PULSE_SERVER for processes that should use this server."""
    tone: Path
    """A long 440 Hz WAV (-10 dBFS) played into the sink while plugged."""
    source_module: str = ""
    player: subprocess.Popen[bytes] | None = None

    def pactl(self, *args: str) -> str:
        env = {**os.environ, "PULSE_SERVER": self.server}
        return subprocess.run(["pactl", *args], capture_output=True, text=True, check=True, env=env,
                              timeout=DEADLINE_S).stdout.strip()  # fmt: skip

    def plug(self) -> None:
        """Load a null sink whose monitor is the "microphone" (the default source) and play a tone into it.

        (module-sine-source would be simpler but delivers in 2 s bursts; a null sink's monitor runs smoothly.)"""
        self.source_module = self.pactl("load-module", "module-null-sink", "sink_name=test_mic", "rate=48000",
                                        "channels=1")  # fmt: skip
        poll(lambda: "test_mic.monitor" in self.pactl("list", "short", "sources"), "the test_mic.monitor source")
        self.pactl("set-default-source", "test_mic.monitor")
        env = {**os.environ, "PULSE_SERVER": self.server}
        self.player = subprocess.Popen(["paplay", "--device=test_mic", str(self.tone)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def unplug(self) -> None:
        self.pactl("unload-module", self.source_module)
        poll(lambda: "test_mic" not in self.pactl("list", "short", "sources"), "test_mic to disappear")
        self.stop_player()

    def stop_player(self) -> None:
        if self.player is not None:
            self.player.kill()
            self.player.wait(DEADLINE_S)
            self.player = None


@pytest.fixture
def private_pulse() -> Iterator[PrivatePulse]:
    for tool in ("pulseaudio", "pactl", "paplay", "sox"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} missing: run tests/setup.sh (installs pulseaudio, pulseaudio-utils)")
    work = short_tmp_dir()
    sock = work / "pulse.sock"
    env = {**os.environ, "PULSE_RUNTIME_PATH": str(work / "rt"), "PULSE_STATE_PATH": str(work / "st"),
           "HOME": str(work)}  # fmt: skip
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes",
         "-L", f"module-native-protocol-unix socket={sock} auth-anonymous=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tone = work / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", str(tone), "synth", "120", "sine", "440",
                    "vol", "0.3"], check=True, timeout=DEADLINE_S)  # fmt: skip
    pulse = PrivatePulse(f"unix:{sock}", tone)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError("private pulseaudio exited at start")
        try:
            pulse.pactl("info")
        except subprocess.CalledProcessError:
            return False
        return True

    poll(answers, "the private pulseaudio server")
    pulse.plug()
    yield pulse
    pulse.stop_player()
    proc.terminate()
    proc.wait(DEADLINE_S)
    shutil.rmtree(work, ignore_errors=True)
