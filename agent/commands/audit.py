"""``medisync-agent audit [--visit ID]``: read the visit audit trail (see :mod:`agent.audit_log`)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import msgspec

from agent.audit_log import AuditEvent, audit_dir, encode, for_visit, read_events
from agent.config import add_config_arguments, load_from_args

DESCRIPTION = """\
Print the visit audit trail: one line per event (consent, started, paused, resumed, stopped, gap, archived,
upload_confirmed, deleted), oldest first, with times and ids only. The trail lives in audit.directory (default:
the folder 'audit' beside archive.directory) and is rotated by size (audit.rotate_bytes). A line torn by a crash
is skipped and counted on stderr; it never hides the others. Exit 0, also when the trail is empty."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="show the visit audit trail (consent, pauses, uploads)",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--visit", metavar="ID", help="only this visit's events (its id, as listed)")
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    add_config_arguments(parser)
    parser.set_defaults(func=cmd_audit)


def format_event(event: AuditEvent) -> str:
    stamp = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    details = {k: v for k, v in msgspec.structs.asdict(event).items()
               if k not in ("at", "event", "visit") and v not in ("", None)}  # fmt: skip
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in details.items())
    return f"{stamp}  {event.visit or '-':36}  {event.event:<16} {text}".rstrip()


def cmd_audit(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings
    found = read_events(audit_dir(settings))
    events = list(found.events) if args.visit is None else for_visit(found.events, args.visit.strip())
    for event in events:
        if args.json:
            sys.stdout.write(encode(event).decode())
        else:
            print(format_event(event))
    if found.unreadable:
        print(f"medisync-agent: {found.unreadable} unreadable line(s) skipped (torn by a crash?)", file=sys.stderr)
    return 0
