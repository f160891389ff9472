"""The ``medisync-agent`` entry point.

Subcommands live in :mod:`agent.commands`; each module there defines ``register(subparsers)`` which adds its
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code). Errors from the
:mod:`agent.errors` tree become one line on stderr and their exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence

from agent import __version__, commands
from agent.errors import AgentError
from agent.safe_text import SafeFormatter, clean_line

PROG = "medisync-agent"

QUIET_LOGGERS = ("websockets", "httpx", "httpcore")
"""Third-party loggers never allowed below WARNING: their INFO/DEBUG output carries URLs and Authorization headers."""

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
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
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # These libraries log request URLs (search terms, ids) and, at DEBUG, headers with the bearer token.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
