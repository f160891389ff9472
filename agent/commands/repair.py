"""``medisync-agent repair``: turn ``.partial`` recordings left by a crash or power loss into complete WAV files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.archive.repair import RepairFailure, RepairResult, repair_all, repair_partial
from agent.errors import ArchiveError

DESCRIPTION = """\
Repair recordings that were interrupted (agent killed, power loss, disk full). While recording, a visit is written
to NAME.wav.partial; repair keeps every whole sample that reached the disk, fixes the WAV header and renames the
file to NAME.wav. Given a folder, every .partial file in it is repaired (the agent also does this when it starts).
Files that are not partial WAV recordings are left untouched and reported.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repair",
        help="repair interrupted recordings (.partial files)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="a NAME.wav.partial file or a folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failures = 0
    for path in args.paths:
        outcomes: list[RepairResult | RepairFailure]
        if path.is_dir():
            outcomes = repair_all(path)
            if not outcomes:
                print(f"{path}: no interrupted recordings")
        else:
            try:
                outcomes = [repair_partial(path)]
            except ArchiveError as exc:
                if len(args.paths) == 1:
                    raise
                outcomes = [RepairFailure(partial=path, reason=str(exc))]
        for outcome in outcomes:
            if isinstance(outcome, RepairResult):
                print(describe_repair(outcome))
            else:
                failures += 1
                print(f"medisync-agent: error: {outcome.reason}", file=sys.stderr)
    return ArchiveError.exit_code if failures else 0


def describe_repair(result: RepairResult) -> str:
    line = f"repaired {result.final} ({result.seconds:.2f} s)"
    if result.dropped_bytes:
        line += f", cut {result.dropped_bytes} bytes of a torn sample"
    return line
