"""``medisync-agent status``: what the running daemon is doing (see agent.control.DaemonStatus)."""

from __future__ import annotations

import argparse

from agent.commands.visit import add_common, cmd_status


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the running daemon's state",
        description=(
            "Show what the running daemon is doing: state, device, input level, voice share, speech connection, "
            "ring fill, reconnects and the upload queue. Exits 69 with one line if the daemon is not running."
        ),
    )
    add_common(parser)
    parser.set_defaults(func=cmd_status)
