"""The local server's data folder and logins are private: it refuses a data folder others can reach, and takes
passwords from a 0600 file or the environment, never from the command line (where ``ps`` shows them to everyone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.errors import ConfigError
from agent.server import MediSyncServer, ServerSettings
from tests.plugins.archive import REPO
from tests.plugins.server import ServerProcess, login

PASSWORD = "hunter2-not-on-the-command-line"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MEDISYNC_SERVER_USERS"}
    return subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", "0", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**clean, **(env or {})})  # fmt: skip


def refused(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    proc = serve(*args, env=env)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.strip().splitlines()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o707])
def test_a_data_folder_others_can_reach_is_refused_with_one_line(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, mode)
    code, lines = refused("--data-dir", str(data))
    assert code == 78
    assert lines == [f"medisync-agent: error: refusing the server's data folder {data}: it is accessible by group "
                     f"or others (mode {mode:04o}); run: chmod 700 {data} (it holds the token secret, password "
                     "hashes and recordings)"]
    assert list(data.iterdir()) == []  # nothing created or read in it


def test_a_data_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    code, lines = refused("--data-dir", str(data))
    assert code == 78 and len(lines) == 1
    assert "is owned by another user (uid 65534, this process runs as uid 0)" in lines[0]
    assert list(data.iterdir()) == []


def test_a_symlink_or_a_file_as_data_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    code, lines = refused("--data-dir", str(link))
    assert code == 78 and len(lines) == 1 and "is a symbolic link, not a folder" in lines[0]
    plain = tmp_path / "file"
    plain.write_text("not a folder")
    code, lines = refused("--data-dir", str(plain))
    assert code == 78 and len(lines) == 1 and "is not a folder" in lines[0]
    assert list(target.iterdir()) == [] and plain.read_text() == "not a folder"


def test_the_in_process_server_refuses_an_open_data_folder_too(tmp_path: Path) -> None:
    """The demo and the tests build the server in-process: the same check applies there."""
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, 0o777)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        MediSyncServer(ServerSettings(data_dir=str(data)))


@pytest.mark.parametrize("flag", ["--user", "--inactive-user"])
def test_a_password_on_the_command_line_is_refused_with_how_to_pass_it(tmp_path: Path, flag: str) -> None:
    code, lines = refused("--data-dir", str(tmp_path / "d"), flag, f"doc@example.org:{PASSWORD}")
    assert code == 78 and len(lines) == 1
    assert "--users-file FILE" in lines[0] and "MEDISYNC_SERVER_USERS" in lines[0]
    assert PASSWORD not in lines[0]
    assert not (tmp_path / "d").exists()  # refused before anything was created


def running(proc: subprocess.Popen[str]) -> str:
    return ServerProcess._read_urls(proc).api_url


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def subscription_active(api_url: str, email: str, password: str) -> bool:
    token, uid = login(api_url, email, password)
    reply = httpx.get(f"{api_url}/settings/subscription", params={"uid": uid},
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    return bool(reply.json()["data"]["active"])


def test_logins_from_a_private_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"# local logins\ndoc@example.org:{PASSWORD}\n\ninactive lapsed@example.org:pass:with:colons\n")
    users.chmod(0o600)
    proc = serve("--data-dir", str(tmp_path / "d"), "--users-file", str(users))
    try:
        api_url = running(proc)
        assert subscription_active(api_url, "doc@example.org", PASSWORD) is True
        assert subscription_active(api_url, "lapsed@example.org", "pass:with:colons") is False
    finally:
        stop(proc)


def test_logins_from_the_environment(tmp_path: Path) -> None:
    env = {"MEDISYNC_SERVER_USERS": f"doc@example.org:{PASSWORD}\nother@example.org:second"}
    proc = serve("--data-dir", str(tmp_path / "d"), env=env)
    try:
        api_url = running(proc)
        assert subscription_active(api_url, "doc@example.org", PASSWORD)
        assert subscription_active(api_url, "other@example.org", "second")
    finally:
        stop(proc)


def test_a_users_file_others_can_read_or_a_bad_line_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"doc@example.org:{PASSWORD}\n")
    users.chmod(0o644)
    code, lines = refused("--data-dir", str(tmp_path / "d"), "--users-file", str(users))
    assert code == 78 and lines == [f"medisync-agent: error: users file {users} is accessible by group or others "
                                    f"(mode 0644); run: chmod 600 {users}"]
    users.write_text(f"doc@example.org:{PASSWORD}\ndoc-without-password {PASSWORD}\n")
    users.chmod(0o600)
    code, lines = refused("--data-dir", str(tmp_path / "d"), "--users-file", str(users))
    assert code == 78 and lines == [f"medisync-agent: error: users file {users}, line 2: a login must be written "
                                    "EMAIL:PASSWORD"]
    code, lines = refused("--data-dir", str(tmp_path / "d"), env={"MEDISYNC_SERVER_USERS": "nobody-here"})
    assert code == 78 and lines == ["medisync-agent: error: environment variable MEDISYNC_SERVER_USERS, line 1: a "
                                    "login must be written EMAIL:PASSWORD"]
