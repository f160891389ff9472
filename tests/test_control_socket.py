"""The daemon's control socket, tried against the real daemon process: it never deletes what is not a stale socket
at its path (exit 78, one line), replaces a socket left by a dead daemon, and answers malformed bytes with an error
while it keeps serving."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.control import GetStatus, parse_response
from tests.plugins.daemon import DaemonProcess, poll, short_tmp_dir

pytestmark = pytest.mark.slow

SOCKET_ENV = "MEDISYNC_AGENT_DAEMON_CONTROL_SOCKET"
EXIT_CONFIG = 78


def exit_code(daemon: DaemonProcess) -> int:
    return daemon.proc.wait(60)


def error_lines(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.joined_log().splitlines() if line.startswith("medisync-agent: error:")]


def blocker(kind: str, path: Path) -> Callable[[], bool]:
    """Put a ``kind`` at ``path``; returns a check that it is still there, untouched."""
    if kind == "regular file":
        path.write_bytes(b"precious")
        return lambda: path.read_bytes() == b"precious" and not path.is_symlink()
    if kind == "folder":
        path.mkdir()
        (path / "inside").write_bytes(b"kept")
        return lambda: (path / "inside").read_bytes() == b"kept"
    if kind == "symbolic link":
        target = path.with_name("target")
        target.write_bytes(b"target")
        path.symlink_to(target)
        return lambda: path.is_symlink() and target.read_bytes() == b"target"
    if kind == "symbolic link to a stale socket":
        target = path.with_name("other.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(target))
        stale.close()
        path.symlink_to(target)
        return lambda: path.is_symlink() and stat.S_ISSOCK(target.lstat().st_mode)
    assert kind == "named pipe"
    os.mkfifo(path)
    return lambda: stat.S_ISFIFO(path.lstat().st_mode)


@pytest.mark.parametrize("kind", ["regular file", "folder", "symbolic link", "symbolic link to a stale socket",
                                  "named pipe"])  # fmt: skip
def test_something_else_at_the_socket_path_is_refused_and_kept(
    start_daemon: Callable[..., DaemonProcess], kind: str
) -> None:
    path = short_tmp_dir() / "control.sock"
    untouched = blocker(kind, path)
    daemon = start_daemon(env={SOCKET_ENV: str(path)})
    assert exit_code(daemon) == EXIT_CONFIG
    expected_kind = "a symbolic link" if kind.startswith("symbolic link") else f"a {kind}"
    assert error_lines(daemon) == [
        f"medisync-agent: error: daemon.control_socket {path} is {expected_kind}, not a socket: refusing to replace "
        "it (nothing was deleted); remove it or choose another path"
    ]
    assert untouched()


def test_a_stale_socket_left_by_a_dead_daemon_is_replaced(start_daemon: Callable[..., DaemonProcess]) -> None:
    path = short_tmp_dir() / "run" / "control.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what kill -9 leaves
    daemon = start_daemon(env={SOCKET_ENV: str(path)})
    daemon.control = path
    daemon.wait_ready()
    assert daemon.ask(GetStatus()).ok
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_a_second_daemon_on_a_live_socket_is_refused(start_daemon: Callable[..., DaemonProcess]) -> None:
    path = short_tmp_dir() / "control.sock"
    first = start_daemon(env={SOCKET_ENV: str(path)})
    first.control = path
    first.wait_ready()
    second = start_daemon(env={SOCKET_ENV: str(path)})
    assert exit_code(second) != 0
    assert error_lines(second) == [f"medisync-agent: error: another medisync-agent daemon is already listening on "
                                   f"{path}"]
    assert first.ask(GetStatus()).ok  # the first one's socket is still there and answering


NESTED = b'{"cmd": "visit_start", "appointment_id": ' + b"[" * 1900 + b"]" * 1900 + b"}\n"
MALFORMED = {
    "invalid UTF-8": (b'{"cmd": "visit_start", "appointment_id": "\xff\xfe\xc3\x28"}\n', "not UTF-8"),
    "not JSON": (b"hello daemon, please start\n", "not a JSON object"),
    "deeply nested JSON": (NESTED, "bad request"),
    "nested unknown field": (b'{"cmd": "status", "x": ' + b"{\"a\": " * 500 + b"1" + b"}" * 501 + b"\n",
                             "bad request"),
    "oversized line": (b'{"cmd": "status", "pad": "' + b"a" * 10_000 + b'"}\n', "request longer than 4096 bytes"),
    "binary junk": (bytes(b for b in range(256) if b != 0x0A) * 3 + b"\n", "bad request"),
    "half line then EOF": (b'{"cmd": "sta', "incomplete request"),
}  # fmt: skip


def send_raw(path: Path, data: bytes) -> bytes:
    """Send ``data``, close our side, and read everything the daemon answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may close the connection before reading an oversized line to its end; it answered first
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_malformed_bytes_get_an_error_answer_and_the_daemon_keeps_serving(
    start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon()
    daemon.wait_ready()
    for case, (data, reason) in MALFORMED.items():
        answer = send_raw(daemon.control, data)
        lines = answer.splitlines()
        assert len(lines) == 1, (case, answer[:200])
        response = parse_response(lines[0])
        assert not response.ok and reason in response.error, (case, response)
        assert "\n" not in response.error
        assert daemon.proc.poll() is None, case
        assert daemon.ask(GetStatus()).ok, case  # still serving
    # several requests on one connection, the bad one between good ones, each answered in order
    answers = send_raw(daemon.control, b'{"cmd": "status"}\n\xff\xff\n{"cmd": "status"}\n').splitlines()
    assert [parse_response(line).ok for line in answers] == [True, False, True]
    assert not any("Traceback" in line for line in daemon.log)
    poll(lambda: daemon.proc.poll() is None, "the daemon to still run")
