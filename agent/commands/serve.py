"""``medisync-agent serve``: run the local MediSync-compatible server (REST, speech socket, MediSearch SSE).

Logins come from a file (``--users-file``, mode 0600) or the environment (``MEDISYNC_SERVER_USERS``), one
``EMAIL:PASSWORD`` per line, ``inactive EMAIL:PASSWORD`` for a login without an active subscription. Never from
the command line: every local user can read another process's arguments (``ps``), not its environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from agent.api.secret import read_secret_file
from agent.commands._extras import require_server
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.server import ServerSettings

USERS_ENV = "MEDISYNC_SERVER_USERS"
INACTIVE_PREFIX = "inactive "
HOW_TO_PASS_USERS = (f"put 'EMAIL:PASSWORD' lines in a file only you can read (chmod 600) and pass --users-file "
                     f"FILE, or set {USERS_ENV}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the local MediSync-compatible server for demo, tests and benchmarks",
        description=("Run a local MediSync-compatible server: REST API under /api, the speech socket "
                     "/ws/transcribe (basic and resume mode) and a MediSearch SSE endpoint. Prints the URLs "
                     "it listens on ('api: ...', 'speech: ...', 'search: ...') as soon as it listens, and "
                     "which transcriber turns speech into text ('transcriber: ...')."),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    parser.add_argument("--data-dir", help="folder for the database, recordings and speech logs "
                        "(default: a new temporary folder)")
    parser.add_argument("--users-file", metavar="FILE",
                        help="logins to create or update: one 'EMAIL:PASSWORD' per line ('inactive EMAIL:PASSWORD': "
                        f"without an active subscription; '#' comments); mode 0600. Or set {USERS_ENV} (same lines)")
    parser.add_argument("--user", "--inactive-user", action="append", default=[], dest="refused_user",
                        help=argparse.SUPPRESS)  # passwords on the command line are refused with advice
    parser.add_argument("--token-ttl", type=float, default=3600.0, metavar="SECONDS",
                        help="lifetime of login tokens in seconds (default 3600)")
    parser.add_argument("--max-upload-bytes", type=int, default=500 * 1024 * 1024,
                        help="largest recording accepted in bytes (default 500 MB, as MediSync)")
    parser.add_argument("--search-key", action="append", default=[], metavar="KEY",
                        help="MediSearch API key to accept (repeatable; default 'demo-medisearch-key')")
    parser.add_argument("--idle-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="close a connection without a complete request head for this long (default 15)")
    parser.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="answer 408 and close when a request body stalls this long (default 30)")
    parser.add_argument("--force-basic", action="store_true",
                        help="never select the resume subprotocol: every speech connection runs basic mode")
    parser.add_argument("--no-fsync", action="store_true", help="do not fsync speech frames before acking")
    parser.add_argument("--transcriber", choices=["auto", "whisper", "placeholder"], default="auto",
                        help="speech to text: the offline recogniser of the [server] extra when installed, else "
                        "time spans (auto, default); the recogniser or fail (whisper); time spans only (placeholder)")
    parser.add_argument("--test-hooks", action="store_true",
                        help="enable the /_test admin endpoints (knobs, users, inspection); never in production")
    parser.set_defaults(func=run)


def parse_users(text: str, where: str) -> list[tuple[str, str, bool]]:
    """``(email, password, active)`` per login line; ConfigError naming the line (never its password) otherwise."""
    logins = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        active = not line.startswith(INACTIVE_PREFIX)
        email, sep, password = line.removeprefix(INACTIVE_PREFIX).strip().partition(":")
        if not sep or not email.strip() or not password:
            raise ConfigError(f"{where}, line {number}: a login must be written EMAIL:PASSWORD")
        logins.append((email.strip(), password, active))
    return logins


def load_users(users_file: str | None, environ: Mapping[str, str]) -> list[tuple[str, str, bool]]:
    logins = []
    if users_file:
        logins += parse_users(read_secret_file(users_file, "users").reveal(), f"users file {users_file}")
    if environ.get(USERS_ENV):
        logins += parse_users(environ[USERS_ENV], f"environment variable {USERS_ENV}")
    return logins


def run(args: argparse.Namespace) -> int:
    if args.refused_user:
        raise ConfigError(f"serve takes no password on the command line (any local user can read it with ps): "
                          f"{HOW_TO_PASS_USERS}")
    logins = load_users(args.users_file, os.environ)
    require_server("serve")
    from agent.server import ServerSettings  # the [server] extra: imported only to serve

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="medisync-server-")
    settings = ServerSettings(
        data_dir=data_dir, host=args.host, port=args.port, token_ttl_s=args.token_ttl,
        max_upload_bytes=args.max_upload_bytes, test_hooks=args.test_hooks, fsync=not args.no_fsync,
        transcriber=args.transcriber,
        idle_timeout_s=args.idle_timeout, body_timeout_s=args.body_timeout,
    )
    if args.search_key:
        settings = msgspec.structs.replace(settings, search_keys=tuple(args.search_key))
    try:
        asyncio.run(_serve(settings, logins, args.force_basic))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from exc
    return 0


async def _serve(settings: ServerSettings, logins: list[tuple[str, str, bool]], force_basic: bool) -> None:
    from agent.server import MediSyncServer
    from agent.server.recognizer import RecogniserUnavailable

    server = MediSyncServer(settings)
    for email, password, active in logins:
        server.add_user(email, password, subscription=active)
    server.knobs.force_basic = force_basic
    try:
        urls = await server.start()
    except RecogniserUnavailable as exc:
        await server.stop()
        raise ConfigError(f"--transcriber whisper: {exc}") from exc
    print(f"api: {urls.api_url}\nspeech: {urls.speech_url}\nsearch: {urls.search_url}\ndata: {settings.data_dir}\n"
          f"transcriber: {server.transcription.name}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        print("stopped", file=sys.stderr, flush=True)
