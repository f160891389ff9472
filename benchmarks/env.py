"""What the scenarios run against: the local server as its own process, an outage proxy, a PulseAudio null sink,
agent processes, and OS-level CPU/RSS readings of any process (``/proc/<pid>/stat``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.agent_proc import AgentConfig

EMAIL = "bench@example.org"
PASSWORD = "bench-password-not-secret"
DIALOGUE = Path(__file__).resolve().parent.parent / "agent" / "data" / "dialogue.wav"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads) in seconds, from the kernel."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_counters(pid: int) -> dict[str, tuple[float, int]]:
    """``tid:name`` -> (CPU seconds, voluntary context switches) of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[f"{tid}:{name}"] = ((int(fields[11]) + int(fields[12])) / CLK_TCK, switches)
    return out


def poll(condition: Any, what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    api_url: str
    speech_url: str

    @property
    def port(self) -> int:
        return int(self.speech_url.rsplit(":", 1)[1])

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)


@contextmanager
def server_process(data_dir: Path) -> Iterator[ServerProc]:
    """``medisync-agent serve --no-fsync --transcriber placeholder``: neither the server's disk cost nor its
    recogniser's CPU is what the scenarios measure (the recogniser would compete with the agent for the cores)."""
    cmd = [sys.executable, "-m", "agent", "serve", "--port", "0", "--no-fsync", "--transcriber", "placeholder",
           "--data-dir", str(data_dir)]  # fmt: skip
    env = {**os.environ, "MEDISYNC_SERVER_USERS": f"{EMAIL}:{PASSWORD}"}  # never a password in the process list
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        while "speech" not in urls:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("server process exited before listening")
            key, _, value = line.partition(": ")
            urls[key] = value.strip()
        yield ServerProc(proc, urls["api"], urls["speech"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class OutageProxy:
    """TCP proxy in its own thread; ``down()`` aborts every link and closes the listener (a connect is refused, as
    on a lost link) until ``up()`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._down = False
        self._server: asyncio.Server | None = None
        self.port = 0
        self.down_at = self.up_at = 0.0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        async def main() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            await asyncio.Event().wait()

        with contextlib.suppress(RuntimeError):  # the loop was stopped by close()
            self._loop.run_until_complete(main())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    async def _set_down(self, down: bool) -> None:
        self._down = down
        if down:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
        else:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    def down(self) -> None:
        self._switch(True)
        self.down_at = time.monotonic()

    def up(self) -> None:
        self._switch(False)
        self.up_at = time.monotonic()

    def _switch(self, down: bool) -> None:
        asyncio.run_coroutine_threadsafe(self._set_down(down), self._loop).result(5)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass
class AgentProc:
    proc: subprocess.Popen[str]
    result_path: Path
    started_at: float = 0.0

    def wait_event(self, event: str) -> None:
        """Read the agent's stdout up to its ``event`` line (``ready`` with wait_go, ``started``)."""
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            if line.startswith("{") and json.loads(line)["event"] == event:
                if event == "started":
                    self.started_at = json.loads(line)["t"]
                return
        raise RuntimeError(f"agent exited early (code {self.proc.wait()})")

    def wait_started(self) -> None:
        self.wait_event("started")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        code = self.proc.wait(timeout)
        if code != 0:
            raise RuntimeError(f"agent process failed with exit code {code}")
        data: dict[str, Any] = json.loads(self.result_path.read_text())
        return data

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)


def spawn_agent(cfg: AgentConfig, work: Path, env: dict[str, str] | None = None) -> AgentProc:
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, result_path = work / "config.json", work / "result.json"
    cfg_path.write_bytes(msgspec.json.encode(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.agent_proc", str(cfg_path), str(result_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, **(env or {})})  # fmt: skip
    return AgentProc(proc, result_path)


def agent_config(server: ServerProc, work: Path, source: str, *, speech_url: str | None = None,
                 **kw: Any) -> AgentConfig:  # fmt: skip
    return AgentConfig(api_url=server.api_url, speech_url=speech_url or server.speech_url, email=EMAIL,
                       password=PASSWORD, work_dir=str(work), source=source, **kw)  # fmt: skip


# --- PulseAudio virtual microphone --------------------------------------------------------------------------------


def have_pulse() -> bool:
    return all(shutil.which(t) for t in ("pulseaudio", "pactl", "paplay"))


def _pactl(*args: str, check: bool = True) -> str:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, check=check, timeout=10).stdout


@dataclass
class VirtualMic:
    sink: str
    monitor: str
    env: dict[str, str]
    """Environment for a capturing process: PULSE_SOURCE picks our monitor (no global default changed)."""
    feeder: subprocess.Popen[bytes] | None = None

    def feed_loop(self, wav: Path) -> None:
        """Play ``wav`` into the sink over and over (a shell loop of paplay) until ``stop_feed``."""
        script = f'while true; do paplay --device={self.sink} "{wav}" || exit 1; done'
        self.feeder = subprocess.Popen(["sh", "-c", script], start_new_session=True)

    def stop_feed(self) -> None:
        if self.feeder is not None:
            os.killpg(self.feeder.pid, signal.SIGTERM)
            self.feeder.wait()
            self.feeder = None


@contextmanager
def virtual_mic(rate: int = 48000, channels: int = 1) -> Iterator[VirtualMic]:
    if subprocess.run(["pactl", "info"], capture_output=True, check=False).returncode != 0:
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1"], capture_output=True, check=False, timeout=10)
        poll(lambda: subprocess.run(["pactl", "info"], capture_output=True, check=False).returncode == 0,
             "pulseaudio")  # fmt: skip
    name = f"msync_bench_{os.getpid()}"
    module = _pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}", f"channels={channels}",
                    f"sink_properties=device.description={name}").strip()  # fmt: skip
    mic = VirtualMic(name, f"{name}.monitor", {"PULSE_SOURCE": f"{name}.monitor", "PULSE_SINK": name})
    try:
        poll(lambda: mic.monitor in _pactl("list", "short", "sources"), "null sink monitor")
        yield mic
    finally:
        mic.stop_feed()
        _pactl("unload-module", module, check=False)
