"""What a process's resident memory is made of: ``/proc/PID/smaps`` grouped by mapping (issue 11).

``python -m benchmarks.rss PID`` prints the breakdown of a running process (e.g. the daemon: ``pgrep -f 'medisync-agent
daemon'``); ``python -m benchmarks.rss --idle-daemon`` starts an idle daemon on the PulseAudio virtual microphone (as
the ``startup`` scenario does), waits, and prints its breakdown; ``--visit 20 10`` runs the ``daemon`` scenario's
plain daemon (a visit through the control socket, then idle) with shorter windows and prints both. The ``daemon``
scenario adds the same breakdown to its notes.

Groups: every file-backed mapping by its library (``libasound_module_pcm_a52.so``, ``_rust.abi3.so``, ...), the
anonymous mappings as one ``[anon]`` (malloc arenas, numpy's and Python's heaps, thread stacks' used pages),
``[heap]`` (the main brk heap) and ``[stack]``. Rss counts pages resident in this process, shared or not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ANON = "[anon]"


def group_name(path: str) -> str:
    """The group a mapping's path falls in: the file's name, or the kernel's bracketed name, or ``[anon]``."""
    if not path:
        return ANON
    if path.startswith("["):
        return "[stack]" if path.startswith("[stack") else path
    return os.path.basename(path.removesuffix(" (deleted)"))


CLEAN_FILE = "(clean file pages)"
"""Not a mapping: the part of the file-backed Rss that is unmodified file content (Shared_Clean + Private_Clean),
which the kernel can drop under memory pressure and read back when touched."""


def parse_smaps(text: str) -> dict[str, int]:
    """Rss in KiB per group (:func:`group_name`) from the text of ``/proc/PID/smaps``, plus :data:`CLEAN_FILE`."""
    out: dict[str, int] = defaultdict(int)
    current = ANON
    for line in text.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
            parts = line.split(maxsplit=5)
            current = group_name(parts[5].strip() if len(parts) > 5 else "")
        elif first == "Rss:":
            out[current] += int(line.split()[1])
        elif first in ("Shared_Clean:", "Private_Clean:") and not current.startswith("["):
            out[CLEAN_FILE] += int(line.split()[1])
    return dict(out)


def mappings(groups: dict[str, int]) -> dict[str, int]:
    """The groups that are mappings (without :data:`CLEAN_FILE`)."""
    return {k: v for k, v in groups.items() if k != CLEAN_FILE}


def breakdown(pid: int) -> dict[str, int]:
    return parse_smaps(Path(f"/proc/{pid}/smaps").read_text())


def top(groups: dict[str, int], n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` largest groups in MB, largest first, then the rest summed as ``(other)``."""
    ranked = sorted(mappings(groups).items(), key=lambda kv: kv[1], reverse=True)
    out = [(name, kib / 1024) for name, kib in ranked[:n]]
    rest = sum(kib for _, kib in ranked[n:])
    if rest:
        out.append((f"(other {len(ranked) - n})", rest / 1024))
    return out


def summary(groups: dict[str, int]) -> str:
    """One line: total, anonymous, file-backed (of it clean), then the largest groups (MB)."""
    maps = mappings(groups)
    anon = sum(v for k, v in maps.items() if k.startswith("["))
    total = sum(maps.values())
    head = (f"Rss {total / 1024:.1f} MB = anonymous {anon / 1024:.1f} + file-backed {(total - anon) / 1024:.1f} "
            f"(of it {groups.get(CLEAN_FILE, 0) / 1024:.1f} clean file pages)")
    return head + "; largest: " + ", ".join(f"{name} {mb:.1f}" for name, mb in top(groups, 12))


def _idle_daemon(settle_s: float) -> dict[str, int]:
    from benchmarks.env import virtual_mic
    from benchmarks.startup import idle_daemon

    work = Path(tempfile.mkdtemp(prefix="msr-", dir="/tmp"))
    with virtual_mic() as mic, idle_daemon(work, "mic", {**os.environ, **mic.env}) as proc:
        time.sleep(settle_s)  # let start-up allocations settle, as the startup scenario does
        return breakdown(proc.pid)


def _visit_daemon(visit_s: float, idle_s: float) -> dict[str, int]:
    """One plain run of the ``daemon`` scenario (efficient profile, shorter windows); prints both states' RSS."""
    from benchmarks.daemon_bench import daemon_run
    from benchmarks.env import server_process, virtual_mic
    from benchmarks.scenarios import PROFILES, looped_dialogue

    work = Path(tempfile.mkdtemp(prefix="msr-", dir="/tmp"))
    wav = looped_dialogue(Path(tempfile.gettempdir()) / "medisync-bench-cache", 600)
    with server_process(work / "server") as srv, virtual_mic(48000, 1) as mic:
        mic.feed_loop(wav)
        out = daemon_run(srv, work / "plain", {**os.environ, **mic.env}, mic.monitor, PROFILES["efficient"],
                         visit_s, idle_s, traced=False)  # fmt: skip
    print("visit running: " + summary(out["smaps_visit"]))
    print("idle after the visit: " + summary(out["smaps_idle"]))
    groups: dict[str, int] = out["smaps_idle"]
    return groups


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss", description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int, nargs="?", help="a running process (default: start an idle daemon)")
    parser.add_argument("--idle-daemon", action="store_true", help="start an idle daemon on the virtual microphone")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after READY before reading (idle daemon)")
    parser.add_argument("--visit", type=float, nargs=2, metavar=("VISIT_S", "IDLE_S"),
                        help="a daemon run of the daemon scenario (visit, then idle windows of these seconds)")
    args = parser.parse_args(argv)
    if args.pid is None and not args.idle_daemon and not args.visit:
        parser.error("give a PID, --idle-daemon or --visit VISIT_S IDLE_S")
    if args.visit:
        groups = _visit_daemon(*args.visit)
    else:
        groups = breakdown(args.pid) if args.pid is not None else _idle_daemon(args.settle)
    print("\n".join(f"{mb:7.1f} MB  {name}" for name, mb in top(groups, 40)))
    print(summary(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
