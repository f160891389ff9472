"""The state hook (agent.hook) with real processes: what it receives, a failing one, a hanging one (killed with its
child after the timeout), one that cannot start, and the runner that never waits for it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from agent.events import StateEvent
from agent.hook import HookRunner, run_hook
from agent.settings import DeviceSettings
from tests.plugins.daemon import poll
from tests.test_event_hub import until

EVENT = StateEvent(seq=7, time="2026-11-26T23:40:00.000Z", state="recording", warnings=["mic_silent"],
                   session_id="sess-1")  # fmt: skip

RECORD = """
import json, os, sys
data = sys.stdin.read()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"stdin": data, "env": dict(os.environ)}) + "\\n")
"""

HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (killed, not yet reaped by its parent) is not running
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_hook_gets_the_event_on_stdin_and_a_bare_environment(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("MEDISYNC_PASSWORD", "secret-password")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/medisync-agent.service")
    out = tmp_path / "seen.jsonl"
    problem = asyncio.run(run_hook((sys.executable, "-c", RECORD, str(out)), EVENT, 30.0))
    assert problem == ""
    seen = json.loads(out.read_text())
    assert json.loads(seen["stdin"]) == {"seq": 7, "time": "2026-11-26T23:40:00.000Z", "state": "recording",
                                         "reason": "", "warnings": ["mic_silent"], "session_id": "sess-1"}
    env = seen["env"]
    assert env["MEDISYNC_STATE"] == "recording" and env["MEDISYNC_WARNINGS"] == "mic_silent"
    assert set(env) - {"MEDISYNC_STATE", "MEDISYNC_WARNINGS"} <= {"PATH", "LANG", "LC_ALL", "HOME", "USER", "LC_CTYPE"}
    assert "secret-password" not in out.read_text()


def test_failing_hook_is_one_line_with_its_last_stderr_line() -> None:
    code = "import sys; sys.stderr.write('first\\n\\x1b[31mboom\\n'); sys.exit(3)"
    assert asyncio.run(run_hook((sys.executable, "-c", code), EVENT, 30.0)) == "exit status 3: boom"


def test_hook_that_cannot_start() -> None:
    problem = asyncio.run(run_hook(("/nonexistent/led-hook",), EVENT, 30.0))
    assert problem == "cannot start it (No such file or directory)"


def test_hanging_hook_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    problem = asyncio.run(run_hook((sys.executable, "-c", HANG, str(pids)), EVENT, 1.0))
    assert problem == "did not finish within 1 s (killed)"
    hook_pid, child_pid = map(int, pids.read_text().split())
    assert not alive(hook_pid)
    poll(lambda: not alive(child_pid), "the hook's child to be gone (killed with its process group)")


def test_runner_never_waits_and_logs_one_warning_per_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pids = tmp_path / "pids"
    settings = DeviceSettings(state_hook=(sys.executable, "-c", HANG, str(pids)), state_hook_timeout_s=1.0)
    runner = HookRunner(lambda: settings)

    async def scenario() -> None:
        task = asyncio.create_task(runner.run())
        runner.submit(EVENT)
        await until(pids.exists, "the hook to start")
        for seq in range(100):  # while the hook hangs: submitting is synchronous (nothing awaited) and bounded
            runner.submit(StateEvent(seq=100 + seq, time=EVENT.time, state="idle"))
        assert [e.seq for e in runner.pending] == list(range(184, 200))  # the newest 16 kept
        await until(lambda: runner.failures == 1, "the hook's timeout")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="agent.hook"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    name = Path(sys.executable).name
    assert warnings == [f"state hook {name} for state recording failed: did not finish within 1 s (killed)"]

