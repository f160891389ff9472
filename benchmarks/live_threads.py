"""Where a live agent's CPU goes, per thread: ``python -m benchmarks.live_threads [SECONDS] [PROFILE,...]``.

A shorter, diagnostic cousin of the live scenario (same server process, null-sink microphone, profiles, probe and
ffmpeg beside it): for each profile one agent runs SECONDS (default 40) and the steady window (start + 5 s to
end - 2 s) is read from ``/proc/<pid>/task/*``: CPU per audio-hour and voluntary context switches per second of
every thread, next to the whole process, ffmpeg and the capture-to-wire percentiles. Not part of RESULTS.md; the
figures in ``benchmarks/NOTES.md`` about threads and wake-ups come from it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.analysis import sample_latencies
from benchmarks.env import agent_config, proc_cpu_s, server_process, spawn_agent, thread_counters, virtual_mic
from benchmarks.results import percentiles
from benchmarks.scenarios import PROFILES, _start_ffmpeg, looped_dialogue

HOUR = 3600.0
SETTLE_S = 5.0


def run(seconds: float, names: list[str]) -> None:
    cache = Path(tempfile.gettempdir()) / "medisync-bench-cache"
    with tempfile.TemporaryDirectory() as tmp, server_process(Path(tmp) / "srv") as srv, virtual_mic(48000, 1) as mic:
        mic.feed_loop(looped_dialogue(cache, 600))
        for name in names:
            work = Path(tmp) / name
            cfg = agent_config(srv, work, "mic:pulse", duration_s=seconds, trace=True, **PROFILES[name])
            agent = spawn_agent(cfg, work, env=mic.env)
            ff = _start_ffmpeg(mic.monitor)
            agent.wait_started()
            time.sleep(SETTLE_S)
            pid, window = agent.proc.pid, seconds - SETTLE_S - 2.0
            c0, f0, t0, th0 = proc_cpu_s(pid), proc_cpu_s(ff.pid), time.monotonic(), thread_counters(pid)
            time.sleep(window)
            c1, f1, t1, th1 = proc_cpu_s(pid), proc_cpu_s(ff.pid), time.monotonic(), thread_counters(pid)
            r = agent.result(timeout=seconds + 60)
            ff.terminate()
            ff.wait()
            scale = HOUR / (t1 - t0)
            connected = min((t for t, _ in r["readies"]), default=r["t0"]) + 1.0
            p50, p95, p99 = percentiles(sample_latencies(r, since=connected) * 1000)
            wakes = r["voluntary_switches"] / r["wall_s"]
            print(f"{name}: agent {(c1 - c0) * scale:.1f} CPU-s per audio-hour, ffmpeg {(f1 - f0) * scale:.1f}, "
                  f"capture-to-wire p50/p95/p99 {p50:.0f}/{p95:.0f}/{p99:.0f} ms, {wakes:.0f} voluntary switches/s, "
                  f"confirmed {r['confirmed']}")  # fmt: skip
            for key, (cpu, switches) in sorted(th1.items()):
                cpu0, switches0 = th0.get(key, (0.0, 0))
                if cpu > cpu0 or switches - switches0 > 10:
                    print(f"   thread {key:28s} {(cpu - cpu0) * scale:6.1f} CPU-s/h "
                          f"{(switches - switches0) / (t1 - t0):6.1f} wake-ups/s")  # fmt: skip


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 40.0
    names = argv[1].split(",") if len(argv) > 1 else list(PROFILES)
    run(seconds, names)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
