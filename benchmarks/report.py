"""RESULTS.md and the PNG plots from a list of ScenarioResults."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.results import ScenarioResult

DPI = 80


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()  # fmt: skip
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "CPU model": model,
        "memory": f"{mem:.1f} GiB",
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "git commit (HEAD when run)": commit or "unknown",
    }


def plots(results: list[ScenarioResult], out: Path) -> list[str]:
    made: list[str] = []
    by = {r.name: r for r in results}
    if (r := by.get("live")) and r.plot.get("latencies"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for name, lat in r.plot["latencies"].items():
            if lat:
                ax.hist(lat, bins=80, histtype="step", density=True, label=name)
        ax.set_xlabel("capture-to-wire latency per sample (ms)")
        ax.set_ylabel("density")
        ax.legend()
        made.append(_save(fig, out / "latency.png"))
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = list(r.plot["cpu"])
        meds = [statistics.median(v) if v else 0 for v in r.plot["cpu"].values()]
        ax.bar(names, meds, color=["tab:blue", "tab:orange", "tab:gray"][: len(names)])
        for name, values in r.plot["cpu"].items():
            ax.scatter([name] * len(values), values, color="black", s=10, zorder=3)
        ax.set_ylabel("CPU-s per audio-hour")
        ax.set_title("live capture: CPU by profile (bars: median, dots: repeats)")
        made.append(_save(fig, out / "cpu_per_audio_hour.png"))
    if (r := by.get("replay")) and r.plot.get("curves"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for label, curve in r.plot["curves"].items():
            if curve:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], label=label)
        ax.axvline(0, color="gray", linestyle=":")
        ax.set_xlabel("seconds since the link came back")
        ax.set_ylabel("acknowledged timeline (s of audio)")
        ax.legend()
        made.append(_save(fig, out / "replay_catch_up.png"))
    if (r := by.get("memory")) and r.plot.get("rss"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([p[0] for p in r.plot["rss"]], [p[1] for p in r.plot["rss"]])
        ax.set_xlabel("audio processed (hours)")
        ax.set_ylabel("agent RSS (MB)")
        ax.set_ylim(bottom=0)
        made.append(_save(fig, out / "memory.png"))
    return made


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def write_results(results: list[ScenarioResult], out: Path, command: str, preface: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    lines = ["# Benchmark results", "", preface.strip(), "", f"Reproduce everything: `{command}`", "",
             "| machine | |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    missed = [(r, f) for r in results for f in r.figures if f.met is False]
    lines += ["", "## Targets", ""]
    lines += [f"- {'MET' if f.met else 'MISSED'}: {r.name} / {f.name}: {f.summary()} {f.unit} (target {f.target})"
              for r in results for f in r.figures if f.met is not None]  # fmt: skip
    if not missed:
        lines.append("- every measured target met")
    for r in results:
        lines += ["", f"## {r.name}: {r.title}", "", f"Command: `{r.command}` ({r.repeats} repeat(s); "
                  "figures are median (min .. max) over repeats)", "", "| figure | value | unit | target |",
                  "|---|---|---|---|"]  # fmt: skip
        for f in r.figures:
            mark = "" if f.met is None else " (met)" if f.met else " (**missed**)"
            lines.append(f"| {f.name} | {f.summary()} | {f.unit} | {f.target}{mark} |")
        lines += [""] + [f"- {n}" for n in r.notes]
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path
