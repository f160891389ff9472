"""Fixtures for the local MediSync server (owner: H-server). Stable API — other areas build on it.

``medisync_server`` -> :class:`RunningServer` (in-process, background thread with its own loop, fresh temp data
dir, one demo user with an active subscription, test hooks on):

    srv.api_url / speech_url / search_url   http://127.0.0.1:PORT/api, ws://127.0.0.1:PORT, .../sse/medichat
    srv.email, srv.password, srv.search_key           demo credentials (MediSearch key accepted by search_url)
    srv.login() -> (token, uid); srv.auth_headers() -> {"Authorization": "Bearer ..."}
    srv.create_appointment(name="Visit") -> appointment id (patient + appointment via REST)
    srv.knobs                                         agent.server.knobs.Knobs: fail_next(path, n, kind=, status=,
                                                      retry_after=), refuse_handshake(status, retry_after=, count=),
                                                      drop_after(frames, connections=), ack_delay_s, withhold_acks,
                                                      force_basic, fail_search(*codes), reset(),
                                                      answer_shape(shape), garble_next(path, kind, n, delay_s=)
    srv.server.expire_tokens(); srv.server.add_user(email, password, subscription=True); set_subscription(email, b)
    srv.session_audio(session_id) -> SessionAudio(runs=[(start, pcm)], gaps, frames_stored, next_seq,
                                      frames_received, duplicates_ignored, closed_last_seq); .pcm_at(start, n)
    srv.basic_chunk_counts() -> {sha256(chunk): n};  srv.basic_transcriptions() -> [message dicts]

``make_medisync_server(**ServerSettings overrides)`` -> a factory for the same with other settings (e.g.
``max_upload_bytes=4096``, ``token_ttl_s=1``, ``transcriber="whisper"``); every server it makes is stopped at
teardown. Servers of these fixtures use the placeholder transcriber (deterministic text, no recogniser CPU) unless
told otherwise (``transcriber=`` here, ``--transcriber`` in ``server_process``'s ``extra_args``).

``server_process`` -> factory ``server_process(data_dir=None, extra_args=())`` returning a :class:`ServerProcess`
running ``python -m agent serve --port 0 --test-hooks`` (the login in ``MEDISYNC_SERVER_USERS``) for real: ``.urls``
(parsed from its stdout with a deadline), ``.stop()`` (SIGTERM), ``.kill()`` (kill -9),
``.restart(same_port=True)``, ``.admin(path, body)`` (POST to the /_test hooks), ``.inspect_session(session_id)``
(GET /_test/sessions/{id}). All stopped at teardown.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.server import ServerSettings, ServerThread, ServerUrls
from agent.server.app import MediSyncServer
from agent.server.knobs import Knobs
from agent.server.speech_log import SessionAudio

DEMO_EMAIL = "doctor@example.org"
DEMO_PASSWORD = "correct-horse-battery-staple"
DEMO_SEARCH_KEY = "demo-medisearch-key"
START_DEADLINE_S = 30.0


@dataclass
class RunningServer:
    thread: ServerThread
    urls: ServerUrls
    data_dir: Path
    email: str = DEMO_EMAIL
    password: str = DEMO_PASSWORD
    search_key: str = DEMO_SEARCH_KEY

    @property
    def server(self) -> MediSyncServer:
        return self.thread.server

    @property
    def knobs(self) -> Knobs:
        return self.server.knobs

    @property
    def api_url(self) -> str:
        return self.urls.api_url

    @property
    def speech_url(self) -> str:
        return self.urls.speech_url

    @property
    def search_url(self) -> str:
        return self.urls.search_url

    def login(self, email: str | None = None, password: str | None = None) -> tuple[str, str]:
        return login(self.api_url, email or self.email, password or self.password)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.login()[0]}"}

    def create_appointment(self, name: str = "Visit") -> str:
        return create_appointment(self.api_url, *self.login(), name=name)

    def session_audio(self, session_id: str) -> SessionAudio:
        return self.server.session_audio(session_id)

    def basic_chunk_counts(self) -> dict[str, int]:
        return self.server.basic_chunk_counts()

    def basic_transcriptions(self) -> list[dict[str, Any]]:
        return self.server.basic_transcriptions()


def login(api_url: str, email: str, password: str) -> tuple[str, str]:
    """(token, uid) from POST /api/login."""
    reply = httpx.post(f"{api_url}/login", json={"email": email, "password": password, "remember": False})
    reply.raise_for_status()
    body = reply.json()
    return body["token"], body["uid"]


def create_appointment(api_url: str, token: str, uid: str, name: str = "Visit") -> str:
    headers = {"Authorization": f"Bearer {token}"}
    patient = httpx.post(f"{api_url}/patients/add", params={"uid": uid}, headers=headers,
                         json={"firstName": "Test", "lastName": "Patient", "dateOfBirth": "1980-01-01"})
    patient.raise_for_status()
    reply = httpx.post(f"{api_url}/appointments/add", params={"uid": uid}, headers=headers,
                       json={"name": name, "date": "2024-01-15", "time": "14:30",
                             "patient_id": patient.json()["data"]["_id"], "status": "planned"})
    reply.raise_for_status()
    return str(reply.json()["appointment"]["_id"])


@pytest.fixture
def make_medisync_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    started: list[ServerThread] = []

    def make(**overrides: Any) -> RunningServer:
        data_dir = Path(overrides.pop("data_dir", None) or tmp_path_factory.mktemp("medisync-server"))
        settings = ServerSettings(data_dir=str(data_dir), **{"test_hooks": True, "transcriber": "placeholder",
                                                             **overrides})  # fmt: skip
        thread = ServerThread(settings)
        thread.server.add_user(DEMO_EMAIL, DEMO_PASSWORD)
        started.append(thread)
        return RunningServer(thread, thread.start(), data_dir)

    yield make
    for thread in started:
        thread.stop()


@pytest.fixture
def medisync_server(make_medisync_server: Callable[..., RunningServer]) -> RunningServer:
    return make_medisync_server()


@dataclass
class ServerProcess:
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    email: str = DEMO_EMAIL
    password: str = DEMO_PASSWORD
    search_key: str = DEMO_SEARCH_KEY
    urls: ServerUrls | None = None
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    _log_index: int = field(default=0, repr=False)

    def start(self) -> ServerUrls:
        self._log_index += 1
        stderr = open(self.data_dir / f"serve-{self._log_index}.log", "w")  # noqa: SIM115 - owned by the process
        cmd = [sys.executable, "-m", "agent", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--test-hooks", "--transcriber", "placeholder", *self.extra_args]  # a later --transcriber wins
        env = {**os.environ, "MEDISYNC_SERVER_USERS": f"{self.email}:{self.password}"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                     cwd=Path(__file__).resolve().parents[2])
        stderr.close()
        self.urls = self._read_urls(self.proc)
        self.port = int(self.urls.base_url.rsplit(":", 1)[1])
        return self.urls

    @staticmethod
    def _read_urls(proc: subprocess.Popen[str]) -> ServerUrls:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        found: dict[str, str] = {}
        deadline = time.monotonic() + START_DEADLINE_S
        while not {"api", "speech", "search"} <= found.keys():
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                raise RuntimeError("medisync-agent serve did not print its URLs in time") from None
            if line is None:
                raise RuntimeError(f"medisync-agent serve exited with {proc.wait()} before listening")
            key, _, value = line.strip().partition(": ")
            found[key] = value
        base = found["api"].removesuffix("/api")
        return ServerUrls(base, found["api"], found["speech"], found["search"])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: no cleanup, no flush beyond what the server already made durable."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)
            self.proc = None

    def restart(self, *, same_port: bool = True, kill: bool = False) -> ServerUrls:
        """Stop (SIGTERM, or kill -9 with ``kill=True``) and start again on the same data dir."""
        self.kill() if kill else self.stop()
        if not same_port:
            self.port = 0
        return self.start()

    def admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.urls is not None
        reply = httpx.post(f"{self.urls.base_url}/_test/{path.lstrip('/')}", json=body or {})
        reply.raise_for_status()
        return dict(reply.json())

    def inspect_session(self, session_id: str) -> dict[str, Any]:
        assert self.urls is not None
        reply = httpx.get(f"{self.urls.base_url}/_test/sessions/{session_id}", params={"pcm": "1"})
        reply.raise_for_status()
        return dict(reply.json())

    def login(self) -> tuple[str, str]:
        assert self.urls is not None
        return login(self.urls.api_url, self.email, self.password)


@pytest.fixture
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    running: list[ServerProcess] = []

    def start(data_dir: Path | None = None, extra_args: tuple[str, ...] = ()) -> ServerProcess:
        proc = ServerProcess(Path(data_dir or tmp_path_factory.mktemp("medisync-serve")), tuple(extra_args))
        running.append(proc)
        proc.start()
        return proc

    yield start
    for proc in running:
        proc.kill()
