"""The ``medisync-agent`` entry point.

Subcommands live in :mod:`agent.commands`; each module there defines ``register(subparsers)`` which adds its
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code). Errors from the
:mod:`agent.errors` tree become one line on stderr and their exit code, never a traceback.

Only the module of the command being run is imported (:data:`COMMANDS` names them): ``status`` on the device must
not pay for the daemon, the audio stack or the local server. The other commands appear in ``--help`` from the
table's help lines alone.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

from agent import __version__
from agent.errors import AgentError
from agent.safe_text import SafeFormatter, clean_line

PROG = "medisync-agent"

QUIET_LOGGERS = ("websockets", "httpx", "httpcore")
"""Third-party loggers never allowed below WARNING: their INFO/DEBUG output carries URLs and Authorization headers."""

Handler = Callable[[argparse.Namespace], int]


class Command(NamedTuple):
    module: str
    """The module whose ``register(subparsers)`` builds the command's parser; imported only to run the command."""
    help: str
    """The one line ``medisync-agent --help`` shows (the same as the module's own ``help=``; a test compares)."""


COMMANDS: dict[str, Command] = {
    "ask": Command("agent.commands.ask", "ask MediSearch a medical question"),
    "audit": Command("agent.commands.audit", "show the visit audit trail (consent, pauses, uploads)"),
    "check": Command("agent.commands.check", "installer check: microphone, login, subscription, speech socket"),
    "config": Command("agent.commands.config", "show, check or print an example of the configuration"),
    "daemon": Command("agent.commands.daemon", "run the service: capture, visits via the control socket, uploads"),
    "demo": Command("agent.commands.demo", "run a complete visit against a local MediSync server (no setup needed)"),
    "devices": Command("agent.commands.devices", "list audio input devices"),
    "export": Command("agent.commands.export", "decrypt a sealed recording into a plaintext file"),
    "keys": Command("agent.commands.keys", "create or show the device key that seals recordings"),
    "record": Command("agent.commands.record", "record a microphone or file into a crash-safe WAV file"),
    "repair": Command("agent.commands.repair", "repair interrupted (.partial) or damaged sealed recordings"),
    "run": Command("agent.commands.run", "record one visit: live transcript, archive, upload"),
    "serve": Command("agent.commands.serve", "run the local MediSync-compatible server for demo, tests and benchmarks"),
    "status": Command("agent.commands.status", "show the running daemon's state"),
    "uploads": Command("agent.commands.uploads", "list and retry queued visit uploads"),
    "visit": Command("agent.commands.visit", "start or stop a visit on the running daemon"),
}
"""Every subcommand, in ``--help`` order."""


def build_parser(full: Collection[str] = ()) -> argparse.ArgumentParser:
    """The parser with every command listed; the commands in ``full`` (their modules imported) can parse."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "MediSync Edge Agent: captures an exam room's audio, streams it to MediSync for a live transcript, "
            "archives the visit as a WAV file and uploads it when the visit ends."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug output)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        if name in full:
            importlib.import_module(command.module).register(subparsers)
        else:
            subparsers.add_parser(name, help=command.help)
    return parser


def command_named(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs: the first word that is not an option (the global options take no value)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # These libraries log request URLs (search terms, ids) and, at DEBUG, headers with the bearer token.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    chosen = command_named(words)
    parser = build_parser(() if chosen is None else (chosen,))
    args = parser.parse_args(words)
    configure_logging(args.verbose)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except AgentError as exc:
        print(f"{PROG}: error: {clean_line(str(exc))}", file=sys.stderr)  # may quote a server's answer
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
