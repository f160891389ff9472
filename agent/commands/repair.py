"""``medisync-agent repair``: turn ``.partial`` recordings left by a crash or power loss into complete files, and
keep the intact part of a damaged sealed recording."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.archive.age import Identity
from agent.archive.keys import load_identity
from agent.archive.repair import RepairFailure, RepairResult, repair_all, repair_partial, repair_recording
from agent.archive.sealed import is_sealed
from agent.archive.wav import PARTIAL_SUFFIX
from agent.config import add_config_arguments, load_from_args
from agent.errors import AgentError, ArchiveError, ConfigError

DESCRIPTION = """\
Repair recordings that were interrupted (agent killed, power loss, disk full). While recording, a visit is written
to NAME.wav.partial; repair keeps everything that reached the disk whole, finishes the file and renames it to
NAME.wav. Given a folder, every .partial file in it is repaired (the agent also does this when it starts).
Files that are not partial recordings are left untouched and reported.

Sealed recordings (the default: age format, see 'medisync-agent keys --help') need the device key. Every 64 KiB
chunk that authenticates is kept: a crash loses at most the unsealed tail (about 2 s); a damaged chunk (flipped,
cut, swapped) in the middle is replaced by silence of the same length, so the visit's timeline holds, and chunks
found out of place are put back. Repair reports what was lost. Given a finished sealed recording (NAME.wav, for
instance one an upload refused as damaged), repair rewrites it with its intact part under a fresh file key.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "repair",
        help="repair interrupted (.partial) or damaged sealed recordings",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path,
                        help="a NAME.wav.partial file, a damaged sealed recording, or a folder")  # fmt: skip
    add_config_arguments(parser)
    parser.set_defaults(func=run)


class _Key:
    """The device key, loaded the first time a sealed file needs it (plaintext repairs need no key)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._identity: Identity | None = None

    def get(self) -> Identity:
        if self._identity is None:
            self._identity = load_identity(load_from_args(self._args).settings.archive)
        return self._identity

    def maybe(self) -> Identity | None:
        try:
            return self.get()
        except ConfigError:
            return None


def run(args: argparse.Namespace) -> int:
    key = _Key(args)
    failures = 0
    for path in args.paths:
        outcomes: list[RepairResult | RepairFailure]
        if path.is_dir():
            outcomes = repair_all(path, identity=key.maybe())
            if not outcomes:
                print(f"{path}: no interrupted recordings")
        else:
            try:
                outcomes = [_repair_one(path, key)]
            except AgentError as exc:
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


def _repair_one(path: Path, key: _Key) -> RepairResult:
    sealed = is_sealed(path)
    if not path.name.endswith(PARTIAL_SUFFIX) and sealed:
        return repair_recording(path, key.get())
    return repair_partial(path, identity=key.get() if sealed else None)


def describe_repair(result: RepairResult) -> str:
    verb = "checked" if result.final == result.partial and not result.loss else "repaired"
    line = f"{verb} {result.final} ({result.seconds:.2f} s)"
    if result.dropped_bytes:
        line += f", cut {result.dropped_bytes} bytes of a torn sample"
    if result.loss:
        line += f"; lost: {result.loss}"
    elif result.final == result.partial:
        line += ": every chunk authenticates, nothing lost"
    return line
