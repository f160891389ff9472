"""The daemon's visit start (the path the device really runs) records whatever MediSync answers before the visit.

The daemon as a real process with its control socket, against the local server answering garbage, a stall or a
429 to the checks a visit start makes: the visit starts, records, and its upload reaches the server afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.control import GetStatus, StartVisit, StopVisit
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer

pytestmark = pytest.mark.slow

WARNING = "MediSync did not confirm the visit"


def stored_bytes(server: RunningServer, appointment_id: str) -> bytes | None:
    rec = server.server.store.recording(appointment_id)
    return None if rec is None else (server.server.store.recordings_dir / rec.file_name).read_bytes()


def visit_seconds(daemon: DaemonProcess) -> float:
    status = daemon.ask(GetStatus()).status
    return 0.0 if status is None else status.visit_seconds


@pytest.mark.parametrize(
    ("garble", "reason"),
    [
        ({"/api/settings/subscription": "wrong_types", "/api/appointments/get": "html"},
         "subscription: GET settings/subscription: subscription not as documented"),
        ({"/api/login": "stall"}, "no answer within 1 s"),
        ({"/api/login": "server_error"}, "login: server error (HTTP 502)"),
    ],
    ids=["garbage", "stall", "5xx"],
)  # fmt: skip
def test_visit_start_records_whatever_the_checks_answer(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer, garble: dict[str, str], reason: str
) -> None:
    stalled = "stall" in garble.values()  # only then cut the checks short: elsewhere a slow machine must not
    daemon = start_daemon(env={"MEDISYNC_AGENT_API_CONFIRM_TIMEOUT_S": "1" if stalled else "60"})
    daemon.wait_ready()
    appointment = medisync_server.create_appointment()
    for path, kind in garble.items():
        medisync_server.knobs.garble_next(path, kind, delay_s=60.0)  # type: ignore[arg-type]

    started = daemon.ask(StartVisit(appointment_id=appointment))

    assert started.ok, started.error
    assert started.status is not None and started.status.state == "recording"
    assert started.message == "recording (MediSync did not confirm it: see the log)"
    log = daemon.wait_for_log(WARNING)
    assert reason in log and "recording anyway" in log
    poll(lambda: visit_seconds(daemon) >= 1.5, "1.5 s recorded")
    stopped = daemon.ask(StopVisit())
    assert stopped.ok, stopped.error
    [archive] = sorted(daemon.archive_dir.glob("*.wav"))
    poll(lambda: stored_bytes(medisync_server, appointment) is not None, "the upload to reach the server")
    assert stored_bytes(medisync_server, appointment) == uploaded_bytes(archive)
    text = daemon.joined_log()
    assert appointment not in text and medisync_server.password not in text and "Traceback" not in text
    rc, _ = daemon.terminate()
    assert rc == 0
