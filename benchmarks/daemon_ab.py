"""Daemon A/B (issue 11): the plain efficient daemon run of ``--only daemon`` for several checkouts, back to back.

    .venv/bin/python -m benchmarks.daemon_ab [--profile NAME] VISIT_S IDLE_S LABEL=CHECKOUT[@PROFILE] ...

Each ``CHECKOUT`` is a folder holding ``agent/`` (e.g. a ``git worktree`` of main beside this branch); its daemon
runs as ``python -c`` from that folder (``python -m`` would put the current folder first on ``sys.path``), with the
same local server, null sink, dialogue and ffmpeg for all of them, one after the other. Prints per run: daemon
and ffmpeg CPU per audio-hour, their ratio, the daemon's wake-ups per second (voluntary context switches of all its
threads), its busiest threads, and the load average. Not part of RESULTS.md: the machine is shared, compare
checkouts only within one invocation. ``--profile``: a profile of :data:`benchmarks.scenarios.PROFILES` (default
``efficient``) or :data:`~benchmarks.scenarios.COMPARISON_PROFILES`; ``@PROFILE`` after a checkout: that run's own.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import daemon_bench
from benchmarks.env import server_process, virtual_mic
from benchmarks.scenarios import COMPARISON_PROFILES, PROFILES, looped_dialogue

CACHE = Path(tempfile.gettempdir()) / "medisync-bench-cache"  # the one `python -m benchmarks` uses

LAUNCH = "import sys; from agent.cli import main; sys.exit(main())"


def command_in(checkout: str) -> list[str]:
    return ["sh", "-c", f'cd "$0" && exec "{sys.executable}" -c "{LAUNCH}" "$@"', checkout]


def main(argv: list[str]) -> int:
    profile = "efficient"
    if argv[:1] == ["--profile"]:
        profile, argv = argv[1], argv[2:]
    visit_s, idle_s = float(argv[0]), float(argv[1])
    checkouts = dict(arg.split("=", 1) for arg in argv[2:])
    work = Path(tempfile.mkdtemp(prefix="medisync-daemon-ab-"))
    try:
        run_all(checkouts, work, visit_s, idle_s, profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_all(checkouts: dict[str, str], work: Path, visit_s: float, idle_s: float, profile: str = "efficient") -> None:
    wav = looped_dialogue(CACHE, 600)
    with server_process(work / "server") as srv, virtual_mic(48000, 1) as mic:
        mic.feed_loop(wav)
        for label, spec in checkouts.items():
            checkout, _, own = spec.partition("@")
            settings = {**PROFILES, **COMPARISON_PROFILES}[own or profile]
            daemon_bench.agent_command = lambda c=checkout: command_in(c)  # type: ignore[attr-defined,misc]
            r = daemon_bench.daemon_run(srv, work / f"{label}-{time.time():.0f}", daemon_bench.daemon_env(mic.env),
                                        mic.monitor, settings, visit_s, idle_s, traced=False)  # fmt: skip
            v, i = r["visit"], r["idle"]
            print(f"{label}: load {os.getloadavg()[0]:.2f}; visit {v['daemon']:.1f} CPU-s/h, ffmpeg {v['ffmpeg']:.1f}, "
                  f"ratio {v['daemon'] / v['ffmpeg']:.2f}, {v['wakeups']:.1f} wake-ups/s; idle {i['daemon']:.1f}, "
                  f"ffmpeg {i['ffmpeg']:.1f}, ratio {i['daemon'] / i['ffmpeg']:.2f}, {i['wakeups']:.1f} wake-ups/s\n"
                  f"  threads visit {v['threads']}\n  threads idle {i['threads']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
