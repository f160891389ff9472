"""The daemon on a real (PulseAudio) microphone: READY and WATCHDOG on a test-owned NOTIFY_SOCKET, the watchdog
going quiet when the microphone disappears, and a visit surviving the loss with a gap of the right length."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.control import GetStatus, StartVisit, StopVisit
from tests.plugins.daemon import DaemonProcess, NotifyListener, PrivatePulse, poll
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.test_alsa_scan import pcm_modules

pytestmark = [pytest.mark.pulse, pytest.mark.slow]
GRACE_S = 0.3
"""A ping sent just before the daemon logged the stall may be read by our listener a moment later."""


def test_watchdog_follows_the_microphone_and_visit_records_the_gap(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer, notify_socket: NotifyListener,
    private_pulse: PrivatePulse,
) -> None:  # fmt: skip
    daemon = start_daemon(
        "mic:pulse",
        env={"PULSE_SERVER": private_pulse.server, "NOTIFY_SOCKET": str(notify_socket.path),
             "WATCHDOG_USEC": "1000000"},
    )  # fmt: skip
    try:
        run_visit_with_unplug(daemon, medisync_server, notify_socket, private_pulse)
    finally:
        print(daemon.joined_log())


def run_visit_with_unplug(daemon: DaemonProcess, medisync_server: RunningServer, notify_socket: NotifyListener,
                          private_pulse: PrivatePulse) -> None:  # fmt: skip
    ready_at = notify_socket.wait_for("READY=1")
    notify_socket.wait_for("WATCHDOG=1", since=ready_at)
    assert "WATCHDOG=1" not in notify_socket.lines()[: notify_socket.lines().index("READY=1")]

    appointment = medisync_server.create_appointment()
    t_start = time.monotonic()
    started = daemon.ask(StartVisit(appointment_id=appointment))
    assert started.ok, started.error
    poll(lambda: (daemon.ask(GetStatus()).status).visit_seconds >= 2.0, "2 s recorded")  # type: ignore[union-attr]
    status = daemon.ask(GetStatus()).status
    assert status is not None and status.input_level_dbfs is not None and status.input_level_dbfs > -30
    session_id = status.session_id

    t_unplug = time.monotonic()
    private_pulse.unplug()
    daemon.wait_for_log("watchdog pings stopped")
    stalled_seen = time.monotonic()
    daemon.wait_for_log("microphone lost")
    # Several reopen attempts fail while the device is away; no ping may go out meanwhile.
    poll(lambda: sum("microphone lost" in line for line in daemon.log) >= 2, "a second failed reopen")
    assert "WATCHDOG=1" not in notify_socket.lines(since=stalled_seen + GRACE_S)
    lost_status = daemon.ask(GetStatus()).status
    assert lost_status is not None and lost_status.device_state == "lost" and lost_status.state == "recording"

    private_pulse.plug()
    t_plug = time.monotonic()
    daemon.wait_for_log("microphone reopened")
    notify_socket.wait_for("WATCHDOG=1", since=t_plug)
    # The reopen re-scanned the devices: of the ALSA plugins the scan opened, only the one capturing stays loaded.
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert pcm_modules(maps) == {"libasound_module_pcm_pulse.so"}
    poll(lambda: (daemon.ask(GetStatus()).status).gap_seconds > 0, "the gap in the visit")  # type: ignore[union-attr]
    t_stop = time.monotonic()
    stopped = daemon.ask(StopVisit())
    assert stopped.ok, stopped.error

    wav = sorted(daemon.archive_dir.glob("*.wav"))[-1]
    with wave.open(io.BytesIO(uploaded_bytes(wav))) as w:  # decrypted by age
        archived_s = w.getnframes() / 16000
    wall_s = t_stop - t_start
    unplugged_s = t_plug - t_unplug
    session = medisync_server.session_audio(session_id)
    gap_s = sum(g.end - g.start for g in session.gaps) / 16000
    print(f"wall {wall_s:.2f} s, archived {archived_s:.2f} s, unplugged {unplugged_s:.2f} s, gap {gap_s:.2f} s")
    assert abs(archived_s - wall_s) < 1.0
    assert len(session.gaps) == 1
    assert unplugged_s - 0.5 < gap_s < unplugged_s + 4.0  # + detection (2 s without audio), reopen, first block
    rc, _ = daemon.terminate()
    assert rc == 0
    assert "STOPPING=1" in notify_socket.lines()
