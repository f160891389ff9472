"""sd_notify over a real datagram socket owned by the test, and the pure watchdog policy."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier, WatchdogPolicy, notify_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive_on_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening")
    assert receive(sock) == "READY=1\nSTATUS=listening"
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert notifier.status("visit running\nsecond line")
    assert receive(sock) == "STATUS=visit running second line"
    assert notifier.extend_timeout(2.5)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    assert notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"medisync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.ready()
        assert receive(sock) == "READY=1"
        notifier.close()
    finally:
        sock.close()


def test_no_socket_means_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.watchdog() is False
    assert "sd_notify failed" in caplog.text


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == "\0abc"
    assert notify_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def pings(policy: WatchdogPolicy, ticks: list[tuple[float, int, bool]]) -> list[float]:
    return [now for now, frames, expect in ticks if policy.observe(now, frames, expect_frames=expect)]


def test_pings_every_interval_while_frames_advance() -> None:
    policy = WatchdogPolicy(15.0, now=0.0)
    ticks = [(t, int(t * 50), True) for t in range(0, 61)]
    assert pings(policy, ticks) == [0, 15, 30, 45, 60]


def test_stalled_capture_stops_the_pings() -> None:
    policy = WatchdogPolicy(15.0, now=0.0)
    ticks = [(t, min(t, 20) * 50, True) for t in range(0, 80)]  # frames stop advancing at t=20
    assert pings(policy, ticks) == [0, 15, 30]  # 30: last progress at 20 is within one interval
    assert policy.stalled_for(79.0) == 59.0


def test_pings_resume_when_capture_recovers() -> None:
    policy = WatchdogPolicy(10.0, now=0.0)
    frames = [0] * 100
    for t in range(100):
        frames[t] = t if t < 20 or t >= 50 else 20
    assert pings(policy, [(t, frames[t], True) for t in range(100)]) == [0, 10, 20, 30, 50, 60, 70, 80, 90]


def test_idle_daemon_pings_without_frames() -> None:
    policy = WatchdogPolicy(15.0, now=0.0)
    assert pings(policy, [(t, 0, False) for t in range(0, 46, 5)]) == [0, 15, 30, 45]


def test_new_capture_gets_a_grace_interval_and_counter_reset_counts_as_progress() -> None:
    policy = WatchdogPolicy(10.0, now=0.0)
    assert pings(
        policy,
        [
            (0, 500, False),
            (100, 500, True),
            (105, 500, True),
            (110, 500, True),
            (111, 0, True),
            (121, 3, True),
            (140, 3, True),
        ],
    ) == [0, 100, 110, 121]
