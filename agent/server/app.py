"""The server object: settings, state, auth, start/stop in the caller's loop or in a background thread.

    server = MediSyncServer(ServerSettings(data_dir="/tmp/x"))
    server.add_user("doc@example.org", "secret")
    urls = await server.start()          # in your event loop; port 0 picks a free port
    ...; await server.stop()

    with ServerThread(ServerSettings(data_dir=...)) as running:   # own loop in a background thread (sync tests)
        running.urls.api_url; running.server.knobs.force_basic = True
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from agent.server import tokens
from agent.server.knobs import Knobs
from agent.server.recognizer import TranscriberChoice
from agent.server.speech_log import SessionAudio, read_session_audio
from agent.server.store import Store, User
from agent.server.transcriber import Transcriber
from agent.server.transcription import TranscriptionWorker

log = logging.getLogger(__name__)


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str
    """Folder for the SQLite database, uploaded recordings and speech session logs (created if missing)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """TCP port; 0 picks a free one (the bound URLs are reported by ``start()``)."""
    token_ttl_s: float = 3600.0
    """Seconds a login token stays valid."""
    max_upload_bytes: int = 500 * 1024 * 1024
    """Largest recording file accepted, in bytes (MediSync documents 500 MB); larger uploads get 413."""
    search_keys: tuple[str, ...] = ("demo-medisearch-key",)
    """MediSearch API keys accepted by the SSE endpoint."""
    test_hooks: bool = False
    """Serve the ``/_test/...`` admin endpoints (knobs, inspection, users) over HTTP."""
    fsync: bool = True
    """fsync each resume-mode frame before acknowledging it (off only for benchmarks of the network path)."""
    transcriber: TranscriberChoice = "auto"
    """What turns speech into text: ``auto`` (the offline recogniser when the ``[server]`` extra is installed and
    its model's SHA-256 matches, else the placeholder), ``whisper`` (the recogniser, or the server does not start)
    or ``placeholder`` (time spans such as ``[speech 0.500-2.800 s]``, never words)."""
    idle_timeout_s: float = 15.0
    """Seconds a connection may go without a complete request head (idle between requests, or headers sent a
    byte at a time) before it is closed."""
    body_timeout_s: float = 30.0
    """Seconds a request body may go without a byte arriving before the request is answered 408 and closed."""
    login_failures_per_account: int = 5
    """Failed logins for one e-mail address within ``login_window_s`` after which logins answer 429."""
    login_failures_per_address: int = 20
    """Failed logins from one client address (any accounts) within ``login_window_s`` after which it gets 429."""
    login_window_s: float = 60.0
    """Sliding window of the login limits, in seconds."""


@dataclass(frozen=True)
class ServerUrls:
    base_url: str
    """``http://host:port``."""
    api_url: str
    """REST base, ends in ``/api`` (ApiSettings.api_url)."""
    speech_url: str
    """Speech socket base, ``ws://host:port`` (``/ws/transcribe`` is appended by clients)."""
    search_url: str
    """Full MediSearch SSE endpoint URL (POST)."""


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Access log without query strings: they carry search terms (patient names), uids and appointment ids."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1f ms", request.method, request.path, response.status, time * 1000)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    """An aiohttp HTTP exception whose body is MediSync's error envelope."""
    exc = web.HTTPException(text=json.dumps({"success": False, "error": message}), content_type="application/json",
                            headers=headers)
    exc.set_status(status)
    return exc


@dataclass
class BasicStats:
    """Basic-mode observations for tests: chunks received (by content hash) and transcriptions sent."""

    chunk_counts: Counter[str] = field(default_factory=Counter)
    transcriptions: list[dict[str, Any]] = field(default_factory=list)


class MediSyncServer:
    def __init__(self, settings: ServerSettings, *, transcriber: Transcriber | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.transcription = TranscriptionWorker(settings.transcriber, transcriber=transcriber)
        self.knobs = Knobs()
        self.store = Store(Path(settings.data_dir))
        self.basic = BasicStats()
        self.session_stats: dict[str, Counter[str]] = {}
        """Per resume session: ``frames_received``, ``duplicates_ignored`` (this process only)."""
        self.sent_transcriptions: dict[str, list[dict[str, Any]]] = {}
        self.background: set[asyncio.Task[None]] = set()
        self._secret = self.store.token_secret()
        from agent.server.limits import LoginLimiter

        self.logins = LoginLimiter(per_account=settings.login_failures_per_account,
                                   per_address=settings.login_failures_per_address, window_s=settings.login_window_s)
        self._runner: web.AppRunner | None = None
        self.urls: ServerUrls | None = None
        from agent.server.speech import SpeechHub

        self.speech = SpeechHub(self)

    # --- users and tokens ---------------------------------------------------------------------------------------
    def add_user(self, email: str, password: str, subscription: bool = True, **names: str) -> User:
        """Create (or update) a login; ``names``: title, first_name, last_name."""
        return self.store.add_user(email, password, subscription=subscription, **names)

    def set_subscription(self, email: str, active: bool) -> None:
        user = self.store.user_by_email(email)
        if user is None:
            raise KeyError("no such user")
        self.store.set_subscription(user.uid, active)

    def expire_tokens(self) -> None:
        """Every token issued so far is rejected as expired from now on (logging in again works)."""
        self.store.set_meta_float("tokens_not_before", self.clock())

    def issue_token(self, uid: str) -> str:
        return tokens.issue(self._secret, uid, self.clock(), self.settings.token_ttl_s)

    def authenticate(self, request: web.BaseRequest, *, need_subscription: bool = True) -> User:
        """The user behind the request's bearer token: 401 if missing/invalid/expired, 403 if not subscribed."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise json_error(401, "Missing bearer token")
        not_before = self.store.get_meta_float("tokens_not_before", 0.0)
        try:
            claims = tokens.verify(self._secret, token.strip(), self.clock(), not_before)
        except tokens.TokenInvalid as exc:
            raise json_error(401, f"Invalid authentication token: {exc}") from exc
        user = self.store.user_by_uid(claims.uid)
        if user is None:
            raise json_error(401, "Invalid authentication token: unknown user")
        uid = request.query.get("uid")
        if uid is not None and uid != user.uid:
            raise json_error(404, "Unknown uid")
        if need_subscription and not user.subscription:
            raise json_error(403, "Active subscription required")
        return user

    # --- inspection ---------------------------------------------------------------------------------------------
    def session_audio(self, session_id: str) -> SessionAudio:
        """What a resume-mode session has stored (runs of PCM on the visit timeline, gaps) plus counters."""
        session = self.store.speech_session(session_id)
        if session is None:
            raise KeyError("no such speech session")
        audio = read_session_audio(self.store.speech_dir / session.log_name)
        stats = self.session_stats.get(session_id, Counter())
        audio.frames_received = stats["frames_received"]
        audio.duplicates_ignored = stats["duplicates_ignored"]
        audio.closed_last_seq = session.closed_last_seq
        return audio

    def basic_chunk_counts(self) -> dict[str, int]:
        """Basic mode: how often each chunk (by SHA-256 of the binary message) was received."""
        return dict(self.basic.chunk_counts)

    def basic_transcriptions(self) -> list[dict[str, Any]]:
        """Basic mode: every ``transcription`` message sent, in order (with ``chunk_sha256`` added)."""
        return list(self.basic.transcriptions)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        from agent.server.admin import add_admin_routes
        from agent.server.medisearch import add_search_routes
        from agent.server.rest import RestApi

        rest = RestApi(self)
        app = web.Application(middlewares=[rest.fault_middleware])
        rest.add_routes(app)
        app.router.add_get("/ws/transcribe", self.speech.handle)
        add_search_routes(app, self)
        if self.settings.test_hooks:
            add_admin_routes(app, self)
        return app

    @property
    def transcriber(self) -> Transcriber:
        return self.transcription.transcriber

    async def start(self) -> ServerUrls:
        """Load the transcriber (in its thread), then listen; raises ``RecogniserUnavailable`` for ``whisper``."""
        await self.transcription.start()
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, shutdown_timeout=1.0,
                                     access_log_class=PathOnlyAccessLogger,
                                     # closes a connection idle between requests and one whose head dribbles in
                                     keepalive_timeout=self.settings.idle_timeout_s,
                                     # after an early answer (413, 408), the rest of a body is drained this long
                                     lingering_time=min(10.0, self.settings.idle_timeout_s))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound port
        assert isinstance(server, asyncio.base_events.Server)
        host, port = server.sockets[0].getsockname()[:2]
        base = f"http://{host}:{port}"
        self.urls = ServerUrls(base, f"{base}/api", f"ws://{host}:{port}", f"{base}/sse/medichat")
        return self.urls

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (cancelled at ``stop``); a failure is logged, never lost."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work of the server failed", exc_info=task.exception())

    async def stop(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.speech.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.transcription.stop()
        self.store.close()


class ServerThread:
    """Runs a :class:`MediSyncServer` on its own event loop in a daemon thread (for synchronous tests)."""

    def __init__(self, settings: ServerSettings, *, transcriber: Transcriber | None = None) -> None:
        self.server = MediSyncServer(settings, transcriber=transcriber)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="medisync-server", daemon=True)
        self.urls: ServerUrls | None = None

    def start(self) -> ServerUrls:
        self._thread.start()
        self.urls = self.call(self.server.start())
        return self.urls

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        await self.server.stop()
        # idle keep-alive connections leave handler tasks behind; end them so the loop closes cleanly
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
