"""`medisync-agent serve` as a real process: URLs printed on stdout, test hooks over HTTP, CLI errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
from websockets.asyncio.client import connect


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_serve_help_and_bad_user_spec() -> None:
    help_text = run_cli("serve", "--help")
    assert help_text.returncode == 0 and "--data-dir" in help_text.stdout and "--test-hooks" in help_text.stdout
    assert "--users-file" in help_text.stdout and "MEDISYNC_SERVER_USERS" in help_text.stdout
    assert "--user " not in help_text.stdout  # no way to put a password on the command line is offered


def test_subprocess_urls_and_http_test_hooks(server_process: Any) -> None:
    proc = server_process()
    assert proc.urls.api_url.startswith("http://127.0.0.1:") and proc.urls.api_url.endswith("/api")
    assert proc.urls.speech_url.startswith("ws://127.0.0.1:")
    token, _ = proc.login()
    proc.admin("knobs", {"force_basic": True, "refuse_handshake": {"status": 503, "retry_after": 2}})

    async def dial() -> tuple[int | None, str | None, str]:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{proc.urls.speech_url}/ws/transcribe"
        try:
            await connect(url, additional_headers=headers)
        except Exception as exc:  # websockets.InvalidStatus
            refused = exc.response.status_code, exc.response.headers.get("Retry-After")  # type: ignore[attr-defined]
        ws = await connect(url, additional_headers=headers, subprotocols=["medisync.resume.v1"])
        init = json.loads(await ws.recv())
        await ws.close()
        return refused[0], ws.subprotocol, init["type"]

    assert asyncio.run(dial()) == (503, None, "session_init")
    proc.admin("expire-tokens")
    assert httpx.get(f"{proc.urls.api_url}/appointments/doctors",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert httpx.get(f"{proc.urls.base_url}/_test/basic").json()["chunk_counts"] == {}
    assert proc.stop() == 0


def test_test_hooks_are_off_unless_asked(make_medisync_server: Any) -> None:
    srv = make_medisync_server(test_hooks=False)
    assert httpx.post(f"{srv.urls.base_url}/_test/expire-tokens").status_code == 404
