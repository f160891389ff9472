"""Every file and folder the agent and the local server create is private (0600/0700) whatever the umask.

Each command runs as a real process under ``umask 000`` (the worst case: nothing removed from what the code asks
for); afterwards every path under the folders it used is walked, and any group or other permission bit fails the
test. The one documented exception is the daemon's control socket (0660, and the folder the daemon creates for it,
0750): the clinician's button runs as a member of the service's group.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from agent.control import DaemonStatus, GetStatus, StartVisit, StopVisit
from tests.plugins.archive import DIALOGUE, REPO
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.server import DEMO_EMAIL, DEMO_PASSWORD, RunningServer, ServerProcess, create_appointment, login
from tests.plugins.visit import AgentHome

GROUP_OTHER = 0o077
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
Never = DaemonStatus()


def leaks(root: Path, *, ignore: Iterable[Path] = (), allowed: dict[Path, int] | None = None) -> list[str]:
    """``path mode`` for every entry under ``root`` (root included) with a group/other bit it should not have.

    ``ignore``: paths the test itself made. ``allowed``: path -> the exact mode it must have instead.
    """
    skip = {p.resolve() for p in ignore}
    expected = {p.resolve(): m for p, m in (allowed or {}).items()}
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [None, *dirs, *files]:
            path = Path(folder) if name is None else Path(folder) / name
            if name is not None and path.is_dir() and not path.is_symlink():
                continue  # reported as the ``folder`` of its own walk step
            if path.resolve() in skip:
                continue
            try:
                mode = stat.S_IMODE(path.lstat().st_mode)
            except FileNotFoundError:  # a running agent's temporary file, renamed since the listing: nothing left
                continue
            if path.resolve() in expected:
                if mode != expected[path.resolve()]:
                    found.append(f"{path} {mode:04o} (expected {expected[path.resolve()]:04o})")
            elif mode & GROUP_OTHER:
                found.append(f"{path} {mode:04o}")
    return found


def test_leaks_finds_group_and_other_bits(tmp_path: Path) -> None:
    """The walker itself: it must see a readable file, a listable folder and nested entries."""
    (tmp_path / "a").mkdir(mode=0o700)
    (tmp_path / "a" / "b").mkdir(mode=0o700)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x")
    os.chmod(tmp_path / "a" / "b" / "f", 0o640)
    os.chmod(tmp_path / "a" / "b", 0o701)
    os.chmod(tmp_path, 0o700)
    assert leaks(tmp_path) == [f"{tmp_path / 'a' / 'b'} 0701", f"{tmp_path / 'a' / 'b' / 'f'} 0640"]
    os.chmod(tmp_path / "a" / "b", 0o700)
    os.chmod(tmp_path / "a" / "b" / "f", 0o600)
    assert leaks(tmp_path) == []


def private_root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir(mode=0o700)
    return root


def run_umask0(argv: list[str], *, env: dict[str, str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, umask=0)


def agent_home(root: Path, server: RunningServer, **settings: dict[str, object]) -> AgentHome:
    """Config and password made by the test (0600); archive and queue folders left for the agent to create."""
    home = AgentHome(root, api_url=server.api_url, speech_url=server.speech_url, email=server.email,
                     password=server.password, settings={**settings})  # fmt: skip
    os.chmod(home.config, 0o600)
    return home


@pytest.mark.slow
def test_record_run_and_uploads_under_umask_000(medisync_server: RunningServer, tmp_path: Path) -> None:
    root = private_root(tmp_path, "agent")
    # 1 MiB upload limit: the 2 MB dialogue is encoded to MP3 before its upload (that path creates files too)
    home = agent_home(root, medisync_server, upload={"retention_hours": 0.0, "max_bytes": 1024 * 1024})
    mine = [home.config, home.password_file]
    env = home.env()

    # record: a plain take beside the configuration (record never creates folders), later added as an operator file
    out = root / "take.wav"
    done = run_umask0([sys.executable, "-m", "agent", "record", "--source", "synth:tone=440/2", "--pace", "fast",
                       "--out", str(out), "--plaintext", "--config", str(home.config)], env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert leaks(root, ignore=mine) == []

    # run: one whole visit, streamed, archived, uploaded (journal, queue item, archive, done marker)
    appointment = medisync_server.create_appointment()
    done = run_umask0(home.argv("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace",
                                "fast"), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert home.wavs() and home.items()
    assert list(home.archive.glob("*.mp3")) or list(home.queue_dir.rglob("*.mp3")), "no MP3 was made"
    assert leaks(root, ignore=mine) == []

    # uploads add (a private copy in the queue), list, retry, assign (an orphan in the archive), purge
    second = medisync_server.create_appointment()
    done = run_umask0(home.argv("uploads", "add", second, str(out)), env=env)
    assert done.returncode == 0, done.stderr
    done = run_umask0(home.argv("uploads", "list"), env=env)
    assert done.returncode == 0, done.stderr
    done = run_umask0(home.argv("uploads", "retry", "--now"), env=env)
    assert done.returncode == 0, done.stderr
    orphan = home.archive / "visit-20240101T000000Z-0000orph.wav"
    done = run_umask0([sys.executable, "-m", "agent", "record", "--source", "synth:tone=300/1", "--pace", "fast",
                       "--out", str(orphan), "--config", str(home.config)], env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    third = medisync_server.create_appointment()
    done = run_umask0(home.argv("uploads", "assign", str(orphan), third), env=env)
    assert done.returncode == 0, done.stderr
    done = run_umask0(home.argv("uploads", "retry", "--now"), env=env)
    assert done.returncode == 0, done.stderr
    done = run_umask0(home.argv("uploads", "purge"), env=env)
    assert done.returncode == 0, done.stderr
    assert all(item["state"] == "done" for item in home.items())
    assert leaks(root, ignore=mine) == []


def start_serve(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``serve`` under umask 000 with the demo login in the environment; (process, api url)."""
    full_env = {**os.environ, "MEDISYNC_SERVER_USERS": f"{DEMO_EMAIL}:{DEMO_PASSWORD}", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", "0", "--data-dir", str(data_dir),
                             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, umask=0)  # fmt: skip
    return proc, ServerProcess._read_urls(proc).api_url


def stop_serve(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


async def stream_one_frame(speech_url: str, token: str, appointment: str) -> None:
    """A resume-mode session with one acknowledged frame: the server writes a speech log."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"{speech_url}/ws/transcribe", additional_headers=headers,
                       subprotocols=["medisync.resume.v1"]) as ws:  # fmt: skip
        await ws.send(json.dumps({"type": "start", "session_id": "private-paths", "appointment_id": appointment}))
        await ws.send(struct.pack("<QQ", 0, 0) + b"\x01\x00" * 1600)
        async with asyncio.timeout(30):
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "ack":
                    return


def test_serve_under_umask_000_keeps_its_data_private(tmp_path: Path) -> None:
    """serve creates its data folder (and a parent), database, recordings and speech logs 0700/0600."""
    root = private_root(tmp_path, "serve")
    data_dir = root / "new" / "data"
    proc, api_url = start_serve(data_dir)
    try:
        token, uid = login(api_url, DEMO_EMAIL, DEMO_PASSWORD)
        appointment = create_appointment(api_url, token, uid)
        wav = io.BytesIO()
        with wave.open(wav, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\x10\x00" * 16000)
        reply = httpx.post(f"{api_url}/recordings/add/{appointment}", params={"uid": uid},
                           headers={"Authorization": f"Bearer {token}"},
                           files={"audio": ("visit.wav", wav.getvalue(), "audio/wav")})  # fmt: skip
        assert reply.status_code == 200, reply.text
        asyncio.run(stream_one_frame(api_url.replace("http://", "ws://").removesuffix("/api"), token, appointment))
    finally:
        stop_serve(proc)
    made = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")}
    assert {"medisync.sqlite3", "recordings", "speech"} <= made and any(m.startswith("speech/") for m in made)
    assert any(m.startswith("recordings/") for m in made)
    assert leaks(root) == []


def test_another_local_user_cannot_read_the_token_secret() -> None:
    """The attack of the issue: another local user reads the secret from the SQLite file. Tried as that user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another local user")
    work = Path(tempfile.mkdtemp(prefix="msp-", dir="/tmp"))
    os.chmod(work, 0o755)  # every folder above the data folder open: only the data folder itself may stop them
    data_dir = work / "data"
    proc, api_url = start_serve(data_dir)
    try:
        login(api_url, DEMO_EMAIL, DEMO_PASSWORD)
        for name in ("medisync.sqlite3", "medisync.sqlite3-wal", "recordings"):
            assert (data_dir / name).exists()
            as_nobody = subprocess.run(["ls", "-d", str(data_dir / name)], capture_output=True, timeout=30,
                                       user=65534)  # fmt: skip
            assert as_nobody.returncode != 0 and b"Permission denied" in as_nobody.stderr, name
    finally:
        stop_serve(proc)
        shutil.rmtree(work)


@pytest.mark.slow
def test_daemon_under_umask_000(start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer) -> None:
    """A visit through the control socket, uploaded; only the socket (0660) and its folder (0750) reach the group."""
    daemon = start_daemon(umask=0)
    daemon.wait_ready()
    work = daemon.config.parent
    allowed = {daemon.control: SOCKET_MODE, daemon.control.parent: SOCKET_DIR_MODE}
    appointment = medisync_server.create_appointment()
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok
    poll(lambda: (daemon.ask(GetStatus()).status or Never).visit_seconds >= 1.0, "1 s recorded")
    assert leaks(work, ignore=[daemon.config], allowed=allowed) == []  # mid-visit: the partial archive, journal
    assert daemon.ask(StopVisit()).ok
    poll(lambda: medisync_server.server.store.recording(appointment) is not None, "the upload")
    assert leaks(work, ignore=[daemon.config], allowed=allowed) == []
    assert daemon.terminate()[0] == 0
    assert not daemon.control.exists()
    assert leaks(work, ignore=[daemon.config], allowed={daemon.control.parent: SOCKET_DIR_MODE}) == []
    assert {p.name for p in work.iterdir()} >= {"recordings", "uploads", "run"}


def test_demo_under_umask_000(tmp_path: Path) -> None:
    """The demo (in-process server, archive, queue) in a folder it creates."""
    root = private_root(tmp_path, "demo")
    done = run_umask0([sys.executable, "-m", "agent", "demo", "--pace", "fast", "--no-cut", "--keep",
                       str(root / "kept" / "demo")], env=dict(os.environ))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (root / "kept" / "demo").iterdir()} >= {"server", "archive", "queue"}
    assert leaks(root) == []
