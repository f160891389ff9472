"""``python -m benchmarks [--quick] [--only NAME ...] [--out DIR]``: run the scenarios, print, write RESULTS.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine, write_results
from benchmarks.results import Figure, ScenarioResult
from benchmarks.scenarios import FULL, QUICK, SCENARIOS

HERE = Path(__file__).resolve().parent
CACHE = Path(tempfile.gettempdir()) / "medisync-bench-cache"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="MediSync agent benchmarks (issue 6): throughput, live cost and latency with the ffmpeg floor, "
        "replay after an outage, memory over a long visit, a fleet of agents, start-up cost of `status` and the idle "
        "daemon's memory (issue 11). Writes RESULTS.md and PNG plots.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny durations (seconds): checks the harness works")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md, results.json and the plots "
                        "(default: benchmarks/); with --only, other scenarios' figures are kept from results.json")
    return parser.parse_args(argv)


def load_previous(path: Path) -> dict[str, ScenarioResult]:
    if not path.exists():
        return {}
    out = {}
    for raw in json.loads(path.read_text()):
        raw["figures"] = [Figure(**f) for f in raw["figures"]]
        out[raw["name"]] = ScenarioResult(**raw)
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    names = args.only or list(SCENARIOS)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = {} if args.quick else load_previous(store)
    with tempfile.TemporaryDirectory(prefix="medisync-bench-") as tmp:
        for name in names:
            started = time.monotonic()
            print(f"running {name} ...", flush=True)
            result = SCENARIOS[name](sizes, Path(tmp) / name, CACHE)
            info = machine()
            result.notes.append(f"scenario wall time {time.monotonic() - started:.0f} s; run {info['date (UTC)']} UTC "
                                f"at commit {info['git commit (HEAD when run)']}")
            result.print()
            results[name] = result
    ordered = [results[n] for n in SCENARIOS if n in results]
    store.write_text(json.dumps([dataclasses.asdict(r) for r in ordered]))
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    notes = HERE / "NOTES.md"
    path = write_results(ordered, args.out, ".venv/bin/" + command,
                         notes.read_text() if notes.exists() else "")  # fmt: skip
    print(f"\nwrote {path} ({shlex.join(['python', '-m', 'benchmarks', *argv])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
