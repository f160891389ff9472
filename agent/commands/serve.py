"""``medisync-agent serve``: run the local MediSync-compatible server (REST, speech socket, MediSearch SSE)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from typing import TYPE_CHECKING

from agent.commands._extras import require_server
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.server import ServerSettings


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
    parser.add_argument("--user", action="append", default=[], metavar="EMAIL:PASSWORD",
                        help="create or update a login with an active subscription (repeatable)")
    parser.add_argument("--inactive-user", action="append", default=[], metavar="EMAIL:PASSWORD",
                        help="create or update a login WITHOUT an active subscription (repeatable)")
    parser.add_argument("--token-ttl", type=float, default=3600.0, metavar="SECONDS",
                        help="lifetime of login tokens in seconds (default 3600)")
    parser.add_argument("--max-upload-bytes", type=int, default=500 * 1024 * 1024,
                        help="largest recording accepted in bytes (default 500 MB, as MediSync)")
    parser.add_argument("--search-key", action="append", default=[], metavar="KEY",
                        help="MediSearch API key to accept (repeatable; default 'demo-medisearch-key')")
    parser.add_argument("--force-basic", action="store_true",
                        help="never select the resume subprotocol: every speech connection runs basic mode")
    parser.add_argument("--no-fsync", action="store_true", help="do not fsync speech frames before acking")
    parser.add_argument("--transcriber", choices=["auto", "whisper", "placeholder"], default="auto",
                        help="speech to text: the offline recogniser of the [server] extra when installed, else "
                        "time spans (auto, default); the recogniser or fail (whisper); time spans only (placeholder)")
    parser.add_argument("--test-hooks", action="store_true",
                        help="enable the /_test admin endpoints (knobs, users, inspection); never in production")
    parser.set_defaults(func=run)


def _split_login(spec: str) -> tuple[str, str]:
    email, sep, password = spec.partition(":")
    if not sep or not email or not password:
        raise ConfigError("a user must be given as EMAIL:PASSWORD")
    return email, password


def run(args: argparse.Namespace) -> int:
    require_server("serve")
    from agent.server import ServerSettings  # the [server] extra: imported only to serve

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="medisync-server-")
    settings = ServerSettings(
        data_dir=data_dir, host=args.host, port=args.port, token_ttl_s=args.token_ttl,
        max_upload_bytes=args.max_upload_bytes, test_hooks=args.test_hooks, fsync=not args.no_fsync,
        transcriber=args.transcriber,
        **({"search_keys": tuple(args.search_key)} if args.search_key else {}),
    )
    logins = [(*_split_login(s), True) for s in args.user] + [(*_split_login(s), False) for s in args.inactive_user]
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
