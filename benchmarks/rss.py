"""What a process's resident memory is made of: ``/proc/PID/smaps`` grouped by mapping (issue 11).

``python -m benchmarks.rss PID`` prints the breakdown of a running process (e.g. the daemon: ``pgrep -f 'medisync-agent
daemon'``); ``python -m benchmarks.rss --idle-daemon`` starts an idle daemon on the PulseAudio virtual microphone (as
the ``startup`` scenario does), waits, and prints its breakdown. The ``daemon`` scenario adds the same breakdown to
its notes.

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


def parse_smaps(text: str) -> dict[str, int]:
    """Rss in KiB per group (:func:`group_name`) from the text of ``/proc/PID/smaps``."""
    out: dict[str, int] = defaultdict(int)
    current = ANON
    for line in text.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
            parts = line.split(maxsplit=5)
            current = group_name(parts[5].strip() if len(parts) > 5 else "")
        elif first == "Rss:":
            out[current] += int(line.split()[1])
    return dict(out)


def breakdown(pid: int) -> dict[str, int]:
    return parse_smaps(Path(f"/proc/{pid}/smaps").read_text())


def top(groups: dict[str, int], n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` largest groups in MB, largest first, then the rest summed as ``(other)``."""
    ranked = sorted(groups.items(), key=lambda kv: kv[1], reverse=True)
    out = [(name, kib / 1024) for name, kib in ranked[:n]]
    rest = sum(kib for _, kib in ranked[n:])
    if rest:
        out.append((f"(other {len(ranked) - n})", rest / 1024))
    return out


def summary(groups: dict[str, int]) -> str:
    """One line: total, anonymous, file-backed, then the largest groups (MB)."""
    anon = sum(v for k, v in groups.items() if k.startswith("["))
    total = sum(groups.values())
    head = f"Rss {total / 1024:.1f} MB = anonymous {anon / 1024:.1f} + file-backed {(total - anon) / 1024:.1f}"
    return head + "; largest: " + ", ".join(f"{name} {mb:.1f}" for name, mb in top(groups, 12))


def _idle_daemon(settle_s: float) -> dict[str, int]:
    from benchmarks.env import virtual_mic
    from benchmarks.startup import idle_daemon

    work = Path(tempfile.mkdtemp(prefix="msr-", dir="/tmp"))
    with virtual_mic() as mic, idle_daemon(work, "mic", {**os.environ, **mic.env}) as proc:
        time.sleep(settle_s)  # let start-up allocations settle, as the startup scenario does
        return breakdown(proc.pid)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss", description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int, nargs="?", help="a running process (default: start an idle daemon)")
    parser.add_argument("--idle-daemon", action="store_true", help="start an idle daemon on the virtual microphone")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after READY before reading (idle daemon)")
    args = parser.parse_args(argv)
    if args.pid is None and not args.idle_daemon:
        parser.error("give a PID or --idle-daemon")
    groups = breakdown(args.pid) if args.pid is not None else _idle_daemon(args.settle)
    print("\n".join(f"{mb:7.1f} MB  {name}" for name, mb in top(groups, 40)))
    print(summary(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
