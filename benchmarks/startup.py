"""Scenario ``startup`` (issue 11): what a command costs to start, and what the idle daemon holds in memory.

``medisync-agent status`` is what IT's shell and monitoring run on the device, often every few seconds: its CPU
(user + system of the whole process, from the kernel via ``wait4``, so interpreter start and every import count)
is measured with the daemon not running (the one-line error, exit 69) and with the daemon running (a real answer
over the control socket). Then the idle daemon's resident memory (``VmRSS``) with its microphone open: the
PulseAudio virtual microphone when PulseAudio is installed (the device's path through PortAudio), otherwise a
synthetic source (named in the notes).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks.env import have_pulse, poll, virtual_mic
from benchmarks.results import ScenarioResult

SYNTH = "synth:noise=3/2/-25+tone=300/1/-12+silence/1*100000"
"""A synthetic source that runs for days in real time (used when PulseAudio is missing)."""


def agent_command() -> list[str]:
    """The console script pip installs beside the interpreter (what the device runs), else ``python -m agent``."""
    script = Path(sys.executable).with_name("medisync-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def child_cpu_s(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """User + system CPU seconds of one run of ``cmd`` (the kernel's accounting, all threads) and its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, proc.returncode


def cpu_runs(cmd: list[str], env: dict[str, str], runs: int, expect: int) -> list[float]:
    values = []
    for _ in range(runs):
        cpu, code = child_cpu_s(cmd, env)
        if code != expect:
            raise RuntimeError(f"{' '.join(cmd)} exited {code}, expected {expect}")
        values.append(cpu)
    return values


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def write_config(path: Path, work: Path, source: str) -> None:
    """A daemon that is idle: no visit, an empty upload queue, MediSync unreachable (nothing dials at idle)."""
    path.write_text(f"""
[audio]
source = "{source}"
[api]
api_url = "http://127.0.0.1:9/api"
speech_url = "ws://127.0.0.1:9"
email = "bench@example.org"
[archive]
directory = "{work / 'recordings'}"
key_file = "{work / 'keys' / 'archive.key'}"
recipient_file = "{work / 'keys' / 'archive.recipient'}"
[upload]
queue_dir = "{work / 'uploads'}"
[daemon]
control_socket = "{work / 'run' / 'control.sock'}"
""")


@contextmanager
def idle_daemon(work: Path, source: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    from agent.archive.keys import init_keys
    from agent.settings import ArchiveSettings

    config = work / "agent.toml"
    write_config(config, work, source)
    init_keys(ArchiveSettings(key_file=str(work / "keys" / "archive.key"),
                              recipient_file=str(work / "keys" / "archive.recipient")))  # fmt: skip
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen([*agent_command(), "daemon", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=log, env={**env, "MEDISYNC_PASSWORD": "not-used-while-idle"})  # fmt: skip
    try:
        poll(lambda: b"ready:" in (work / "daemon.log").read_bytes() or proc.poll() is not None, "the daemon's READY")
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited {proc.returncode}: {(work / 'daemon.log').read_text()[-2000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def startup(runs: int, settle_s: float) -> ScenarioResult:
    res = ScenarioResult("startup", f"CPU to start `medisync-agent status` ({runs} runs each); the idle daemon's "
                         "RSS", "python -m benchmarks --only startup")  # fmt: skip
    res.repeats = runs
    status = [*agent_command(), "status"]
    # A short folder: a Unix socket path must stay under 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="msb-", dir="/tmp"))
    try:
        with ExitStack() as stack:
            env = dict(os.environ)
            source = SYNTH
            if have_pulse():
                mic = stack.enter_context(virtual_mic())
                env.update(mic.env)
                source = "mic"
            sock = str(work / "run" / "control.sock")
            res.add("`status`, daemon not running (exit 69), user+sys", cpu_runs([*status, "--socket", sock], env, runs,
                    69), "CPU-s", "<= 0.3")  # fmt: skip
            res.add("`--help`, user+sys", cpu_runs([*agent_command(), "--help"], env, runs, 0), "CPU-s")
            daemon = stack.enter_context(idle_daemon(work, source, env))
            res.add("`status`, daemon running (its answer), user+sys", cpu_runs([*status, "--socket", sock], env, runs,
                    0), "CPU-s", "<= 0.3")  # fmt: skip
            time.sleep(settle_s)  # idle: the microphone open, no visit; let start-up allocations settle
            samples = []
            for _ in range(5):
                samples.append(rss_mb(daemon.pid))
                time.sleep(0.2)
            res.add(f"daemon RSS idle, microphone open ({settle_s:g} s after READY)", [statistics.median(samples)],
                    "MB", "<= 60")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    where = "the PulseAudio virtual microphone (null sink monitor, 48 kHz mono) through PortAudio" if source == "mic" \
        else f"a synthetic source ({SYNTH}; PulseAudio not installed)"  # fmt: skip
    command = " ".join(os.path.relpath(word) if word.startswith(os.getcwd()) else word for word in agent_command())
    res.notes.append(f"command: {command}; daemon source: {where}; MediSync unreachable (no visit, "
                     "empty queue); CPU from wait4 (the same figures as /usr/bin/time -f '%U %S'), median of the runs")
    return res
