"""``medisync-agent check`` diagnoses MediSync's answers: garbage, 5xx, 429, a stall or a wrong URL each become one
FAIL or WARN row with its reason, never a crash; every documented shape and an ``api_url`` without ``/api`` pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.server.knobs import GARBAGE_KINDS, REST_SHAPES, GarbageKind, RestShape
from tests.plugins.server import RunningServer


def run_check(server: RunningServer, tmp_path: Path, api_url: str | None = None,
              timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:  # fmt: skip
    config = tmp_path / "agent.toml"
    config.write_text(f'[audio]\nsource = "synth:noise/2"\n[api]\napi_url = "{api_url or server.api_url}"\n'
                      f'speech_url = "{server.speech_url}"\nemail = "{server.email}"\n'
                      f'timeout_s = {timeout_s}\n')  # fmt: skip
    env = {**os.environ, "MEDISYNC_PASSWORD": server.password}
    return subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(config), "--seconds", "1"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


def row(stdout: str, name: str) -> str:
    [line] = [line for line in stdout.splitlines() if line[6:].startswith(name)]
    return line


@pytest.mark.parametrize("shape", REST_SHAPES)
def test_every_shape_passes(medisync_server: RunningServer, tmp_path: Path, shape: RestShape) -> None:
    medisync_server.knobs.answer_shape(shape)
    done = run_check(medisync_server, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert row(done.stdout, "subscription").startswith("PASS") and "active (local-demo)" in done.stdout


@pytest.mark.parametrize("kind", [k for k in GARBAGE_KINDS if k != "other_appointment"])
@pytest.mark.parametrize("endpoint", ["/api/login", "/api/settings/subscription"])
def test_garbage_is_a_row_with_a_reason(
    medisync_server: RunningServer, tmp_path: Path, endpoint: str, kind: GarbageKind
) -> None:
    medisync_server.knobs.garble_next(endpoint, kind, delay_s=60.0)
    done = run_check(medisync_server, tmp_path, timeout_s=5.0 if kind == "stall" else 30.0)
    assert "Traceback" not in done.stderr and medisync_server.password not in done.stdout + done.stderr
    name = "login" if endpoint.endswith("login") else "subscription"
    line = row(done.stdout, name)
    reason = {"stall": "ReadTimeout", "server_error": "server error (HTTP 502)", "empty": "empty", "html": "HTML page",
              "bad_encoding": "cannot be decoded", "wrong_types": "not as documented", "array": "not a JSON object",
              "not_json": "not valid JSON"}[kind]  # fmt: skip
    assert reason in line or (kind == "array" and name == "subscription" and "has no subscription" in line), line
    if name == "subscription" and kind not in ("server_error", "stall"):  # an answer, not understood: the agent copes
        assert done.returncode == 0, done.stdout
        assert line.startswith("WARN  subscription   answer not understood"), line
        assert done.stdout.splitlines()[-1] == "all checks passed, 1 with a warning"
    else:
        assert done.returncode == 1, done.stdout
        assert line.startswith("FAIL") and "still recorded" in line, line


@pytest.mark.parametrize("status", [429, 500])
def test_refusals_are_rows(medisync_server: RunningServer, tmp_path: Path, status: int) -> None:
    medisync_server.knobs.fail_next("/api/settings/subscription", status=status)
    done = run_check(medisync_server, tmp_path)
    assert done.returncode == 1
    assert row(done.stdout, "subscription").startswith("FAIL") and f"HTTP {status}" in done.stdout


def test_api_url_without_api_passes_and_names_the_base(medisync_server: RunningServer, tmp_path: Path) -> None:
    done = run_check(medisync_server, tmp_path, api_url=medisync_server.urls.base_url)
    assert done.returncode == 0, done.stdout
    assert row(done.stdout, "login").endswith(f"logged in at {medisync_server.api_url}/")


def test_wrong_api_url_names_the_url_that_answered_404(medisync_server: RunningServer, tmp_path: Path) -> None:
    wrong = medisync_server.urls.base_url + "/elsewhere"
    done = run_check(medisync_server, tmp_path, api_url=wrong)
    assert done.returncode == 1
    line = row(done.stdout, "login")
    assert f"{wrong}/api/login answered HTTP 404" in line and "https://app.medisync.me/api" in line
