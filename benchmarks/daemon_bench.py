"""Scenario ``daemon`` (issue 11): the daemon measured the way the device runs it.

``medisync-agent daemon`` is started as a process (the console script, microphone = the PulseAudio null-sink monitor
at 48 kHz mono through PortAudio, the dialogue looping into the sink), a visit is started and stopped through its
control socket (:func:`agent.commands.visit.ask_daemon`, what ``medisync-agent visit start/stop`` sends), and
``ffmpeg -f pulse -i <monitor> -ac 1 -ar 16000`` captures the same monitor in the same windows. Per profile:

- visit running: daemon and ffmpeg CPU from ``/proc/<pid>/stat`` over the same steady window (visit start + 5 s to
  the end of the window), per audio-hour (real time: one wall second is one second of audio), and the daemon's RSS;
- idle with the microphone open (after the visit and its stream ended): the same, in a second window.

Latency (capture-to-wire per sample, as in ``live``) comes from a second daemon run of each profile under
:mod:`benchmarks.daemon_proc` (the probe in the daemon's own process), so the CPU and RSS figures above are the
plain daemon's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.api.medisync import MediSyncClient
from agent.api.models import NewAppointment, NewPatient
from agent.api.secret import Credentials, Secret
from agent.archive.keys import init_keys
from agent.commands.visit import ask_daemon
from agent.control import GetStatus, StartVisit, StopVisit
from agent.settings import ApiSettings, ArchiveSettings
from benchmarks import rss
from benchmarks.analysis import sample_latencies
from benchmarks.env import EMAIL, PASSWORD, ServerProc, poll, proc_cpu_s, thread_counters
from benchmarks.results import ScenarioResult, percentiles
from benchmarks.startup import agent_command

SETTLE_S = 5.0
"""Seconds after a visit starts (or ends) before a CPU window opens."""


def write_config(path: Path, work: Path, srv: ServerProc, profile: dict[str, dict[str, Any]]) -> None:
    sections: dict[str, dict[str, Any]] = {
        "audio": {"source": "mic:pulse"},
        "api": {"api_url": srv.api_url, "speech_url": srv.speech_url, "email": EMAIL},
        "archive": {"directory": str(work / "recordings"), "key_file": str(work / "keys" / "archive.key"),
                    "recipient_file": str(work / "keys" / "archive.recipient")},
        "upload": {"queue_dir": str(work / "uploads")},
        "daemon": {"control_socket": str(work / "run" / "control.sock")},
    }  # fmt: skip
    for section, values in profile.items():
        sections.setdefault(section, {}).update(values)
    text = ""
    for section, values in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in values.items())
    path.write_text(text)


async def _appointment(srv: ServerProc) -> str:
    api = ApiSettings(api_url=srv.api_url, speech_url=srv.speech_url, email=EMAIL)
    async with MediSyncClient(api, Credentials(EMAIL, Secret(PASSWORD))) as client:
        await client.login()
        patient = await client.add_patient(NewPatient(firstName="Bench", lastName="Daemon", dateOfBirth="1970-01-01"))
        appointment = await client.add_appointment(
            NewAppointment(name="Benchmark visit", date="2026-01-01", time="09:00", patient_id=patient.id))
        return appointment.id


@contextmanager
def running_daemon(work: Path, env: dict[str, str], trace: Path | None) -> Any:
    cmd = [*agent_command(), "daemon", "--config", str(work / "agent.toml")]
    if trace is not None:
        cmd = [sys.executable, "-m", "benchmarks.daemon_proc", str(trace), "daemon", "--config",
               str(work / "agent.toml")]  # fmt: skip
    log_path = work / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**env, "MEDISYNC_PASSWORD": PASSWORD})
    try:
        poll(lambda: b"ready:" in log_path.read_bytes() or proc.poll() is not None, "the daemon's READY", 60)
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _window(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU-s per hour of each process over the next ``seconds``; ``threads``: the daemon's busiest threads."""
    c0, t0, th0 = {n: proc_cpu_s(p) for n, p in pids.items()}, time.monotonic(), thread_counters(pids["daemon"])
    time.sleep(seconds)
    c1, t1, th1 = {n: proc_cpu_s(p) for n, p in pids.items()}, time.monotonic(), thread_counters(pids["daemon"])
    out: dict[str, Any] = {n: (c1[n] - c0[n]) * 3600.0 / (t1 - t0) for n in pids}
    threads, woken = [], 0
    for key, (cpu, switches) in th1.items():
        cpu0, switches0 = th0.get(key, (0.0, 0))
        woken += switches - switches0
        threads.append((round((cpu - cpu0) * 3600.0 / (t1 - t0), 1), round((switches - switches0) / (t1 - t0), 1),
                        key.split(":", 1)[1]))  # fmt: skip
    out["threads"] = sorted(threads, reverse=True)[:5]
    out["wakeups"] = woken / (t1 - t0)
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its parts: RssAnon (the process's own heap) and RssFile (mapped files: libraries, shared)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def _start_ffmpeg(monitor: str) -> subprocess.Popen[bytes]:
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "pulse", "-i", monitor, "-ac", "1", "-ar", "16000",
           "-f", "null", "-"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def daemon_run(srv: ServerProc, work: Path, env: dict[str, str], monitor: str, profile: dict[str, dict[str, Any]],
               visit_s: float, idle_s: float, *, traced: bool) -> dict[str, Any]:  # fmt: skip
    """One daemon process: a visit (CPU window beside ffmpeg), then idle (another window); figures and trace."""
    work.mkdir(parents=True, exist_ok=True)
    init_keys(ArchiveSettings(key_file=str(work / "keys" / "archive.key"),
                              recipient_file=str(work / "keys" / "archive.recipient")))  # fmt: skip
    write_config(work / "agent.toml", work, srv, profile)
    sock = str(work / "run" / "control.sock")
    trace = work / "trace.json" if traced else None
    out: dict[str, Any] = {}
    appointment = asyncio.run(_appointment(srv))
    ff = _start_ffmpeg(monitor)
    try:
        with running_daemon(work, env, trace) as proc:
            pids = {"daemon": proc.pid, "ffmpeg": ff.pid}
            started = ask_daemon(sock, StartVisit(appointment_id=appointment))
            if not started.ok:
                raise RuntimeError(f"visit not started: {started.error}")
            time.sleep(SETTLE_S)
            out["visit"] = _window(pids, visit_s)
            out["rss_visit"] = memory_mb(proc.pid)
            out["smaps_visit"] = rss.breakdown(proc.pid)
            stopped = ask_daemon(sock, StopVisit(), timeout_s=60)
            if not stopped.ok:
                raise RuntimeError(f"visit not stopped: {stopped.error}")
            poll(lambda: (s := ask_daemon(sock, GetStatus()).status) is not None and s.draining_streams == 0,
                 "the visit's stream to end", 60)  # fmt: skip
            time.sleep(SETTLE_S)
            out["idle"] = _window(pids, idle_s)
            out["rss_idle"] = memory_mb(proc.pid)
            out["smaps_idle"] = rss.breakdown(proc.pid)
    finally:
        ff.terminate()
        ff.wait()
    if trace is not None:
        r = json.loads(trace.read_text())
        connected = min((t for t, _ in r["readies"]), default=0.0) + 1.0
        out["latency_ms"] = (sample_latencies(r, since=connected) * 1000).tolist()
        out["latency_path_ms"] = (sample_latencies(r, since=connected, without_lookback=True) * 1000).tolist()
        out["lookback_share"] = sum(n for _, n in r["lookback"]) / max(1, sum(n for _, n, _ in r["frames"]))
    return out


def daemon_env(mic_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **mic_env}


def ratio(daemon: float, ffmpeg: float) -> list[float]:
    """[daemon / ffmpeg]; none (reported n/a, no verdict) when ffmpeg used no CPU tick the window could see: a
    --quick window of a few seconds can be shorter than ffmpeg's first 10 ms of CPU."""
    return [daemon / ffmpeg] if ffmpeg > 0 else []


def scenario(profiles: dict[str, dict[str, dict[str, Any]]], wav: Path, work: Path, visit_s: float,
             idle_s: float) -> ScenarioResult:  # fmt: skip
    from benchmarks.env import server_process, virtual_mic

    res = ScenarioResult("daemon", "the daemon as the device runs it: a visit through the control socket, then "
                         "idle, beside ffmpeg capturing the same microphone", "python -m benchmarks --only daemon")
    with server_process(work / "server") as srv, virtual_mic(48000, 1) as mic:
        mic.feed_loop(wav)
        env = daemon_env(mic.env)
        plain = daemon_run(srv, work / "plain", env, mic.monitor, profiles["efficient"], visit_s, idle_s,
                           traced=False)  # fmt: skip
        traced = {name: daemon_run(srv, work / name, env, mic.monitor, profile, visit_s, 1.0, traced=True)
                  for name, profile in profiles.items()}  # fmt: skip
    v, i = plain["visit"], plain["idle"]
    res.add("efficient, visit running: daemon CPU per audio-hour", [v["daemon"]], "CPU-s", "<= 30")
    res.add("efficient, visit running: ffmpeg CPU per audio-hour, same window", [v["ffmpeg"]], "CPU-s")
    res.add("efficient, visit running: daemon/ffmpeg ratio", ratio(v["daemon"], v["ffmpeg"]), "", "<= 1.4")
    res.add("idle, microphone open: daemon CPU per audio-hour", [i["daemon"]], "CPU-s")
    res.add("idle, microphone open: ffmpeg CPU per audio-hour, same window", [i["ffmpeg"]], "CPU-s")
    res.add("idle, microphone open: daemon/ffmpeg ratio", ratio(i["daemon"], i["ffmpeg"]), "", "<= 0.6")
    for when, window in (("efficient, visit running", v), ("idle, microphone open", i)):
        res.add(f"{when}: daemon wake-ups (voluntary context switches, all threads)", [window["wakeups"]], "1/s")
    for when, mem in (("visit running", plain["rss_visit"]), ("idle after the visit", plain["rss_idle"])):
        res.add(f"daemon RSS, {when}", [mem["VmRSS"]], "MB", "<= 60")
        res.add(f"daemon RSS, {when}: anonymous (the process's own memory)", [mem["RssAnon"]], "MB")
        res.add(f"daemon RSS, {when}: file-backed (mapped libraries, shared)", [mem["RssFile"]], "MB")
    for when, key in (("visit running", "smaps_visit"), ("idle after the visit", "smaps_idle")):
        res.notes.append(f"daemon memory by mapping, {when} (MB, /proc/PID/smaps; python -m benchmarks.rss): "
                         + rss.summary(plain[key]))  # fmt: skip
    for when, window in (("visit", v), ("idle", i)):
        res.notes.append(f"busiest daemon threads, {when} (CPU-s per audio-hour, wake-ups/s, name): "
                         + "; ".join(f"{c:g}, {w:g}/s, {n}" for c, w, n in window["threads"]))  # fmt: skip
    targets = {"low-latency": ("<= 80", "<= 60"), "efficient": ("", "<= 150")}
    for name, r in traced.items():
        cpu_target, p95_target = targets.get(name, ("", ""))
        p50, p95, p99 = percentiles(r["latency_ms"])
        res.add(f"{name} (probe run): daemon CPU per audio-hour, visit running", [r["visit"]["daemon"]], "CPU-s",
                cpu_target)  # fmt: skip
        res.add(f"{name} (probe run): daemon/ffmpeg ratio, same window",
                [r["visit"]["daemon"] / r["visit"]["ffmpeg"]], "")  # fmt: skip
        res.add(f"{name}: capture-to-wire p50", [p50], "ms")
        res.add(f"{name}: capture-to-wire p95", [p95], "ms", p95_target)
        res.add(f"{name}: capture-to-wire p99", [p99], "ms")
        res.add(f"{name}: capture-to-wire p95 without the voice gate's look-back samples",
                [percentiles(r["latency_path_ms"])[1]], "ms")  # fmt: skip
        res.add(f"{name}: share of the timeline the gate passed late by design (pre-roll, onset)",
                [100 * r["lookback_share"]], "%")  # fmt: skip
    res.notes.append(f"windows: {visit_s:g} s with the visit running (from {SETTLE_S:g} s after the start), "
                     f"{idle_s:g} s idle (from {SETTLE_S:g} s after the stream ended); one daemon process per run; "
                     "profiles: " + "; ".join(f"{n}: {p}" for n, p in profiles.items()))  # fmt: skip
    res.notes.append("CPU and RSS rows without '(probe run)' are the plain console script `medisync-agent daemon`; "
                     "latency comes from a run of each profile under benchmarks/daemon_proc.py (probe in-process)")
    return res
