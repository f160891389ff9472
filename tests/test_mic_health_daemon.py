"""The daemon as a real process watches its microphone idle and in visits (issue 13): one WARNING line when a problem
is raised, one INFO line when it clears, the problem in ``status`` and in the metrics; no_speech only in a visit.

The source is synthetic (no PulseAudio needed): -30 dBFS noise (a level, but nothing the voice gate calls speech)
and digital silence, 6 s each, repeated; ``mic.no_speech_s`` is 2 s so a visit raises it quickly."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import pytest

from agent.control import DaemonStatus, GetStatus, StartVisit, StopVisit, format_status
from tests.plugins.daemon import DaemonProcess, poll
from tests.plugins.server import RunningServer

pytestmark = pytest.mark.slow
DEADLINE_S = 40.0
SOURCE = "synth:noise/6/-30+silence/6*100000"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def status(daemon: DaemonProcess) -> DaemonStatus:
    answer = daemon.ask(GetStatus()).status
    assert answer is not None
    return answer


def lines_with(daemon: DaemonProcess, text: str) -> list[str]:
    return [line for line in list(daemon.log) if text in line]


def test_daemon_raises_and_clears_microphone_problems_in_log_status_and_metrics(
    start_daemon: Callable[..., DaemonProcess], medisync_server: RunningServer
) -> None:
    daemon = start_daemon(SOURCE, extra=f'metrics_address = "127.0.0.1:{free_port()}"\n[mic]\nno_speech_s = 2.0\n')
    try:
        daemon.wait_ready()

        def metric(name: str) -> float:
            return daemon.metric(f"mic_{name}")

        # Idle: the silence is raised (WARNING), shown and counted, then cleared (INFO) when the noise returns.
        raised = daemon.wait_for_log("microphone problem: silent", DEADLINE_S)
        assert " WARNING " in raised and "level -120.0 dBFS" in raised, raised
        assert status(daemon).mic_problems == ["silent"]
        assert re.search(r"^microphone: +PROBLEM silent \(silent or too low for speech\)$",
                         format_status(status(daemon)), re.M)  # fmt: skip
        poll(lambda: metric("silent") == 1.0, "mic_silent 1", DEADLINE_S)
        assert metric("level_dbfs") == -120.0
        cleared = daemon.wait_for_log("microphone problem cleared: silent", DEADLINE_S)
        assert " INFO " in cleared, cleared
        poll(lambda: metric("silent") == 0.0 and metric("level_dbfs") > -40.0, "mic_silent 0", DEADLINE_S)
        assert re.search(r"^microphone: +ok$", format_status(status(daemon)), re.M)
        assert not lines_with(daemon, "no_speech")  # nobody expects speech between visits

        # A visit: noise but no speech for 2 s raises no_speech; the silence that follows supersedes it.
        assert daemon.ask(StartVisit(appointment_id=medisync_server.create_appointment())).ok
        daemon.wait_for_log("microphone problem: no_speech", DEADLINE_S)
        poll(lambda: metric("no_speech") == 1.0, "mic_no_speech 1", DEADLINE_S)  # raised for 4 s of each 12
        daemon.wait_for_log("microphone problem cleared: no_speech", DEADLINE_S)
        stopped = daemon.ask(StopVisit())
        assert stopped.ok, stopped.error
        assert "no_speech" not in status(daemon).mic_problems  # the visit's end stops expecting speech
        poll(lambda: metric("no_speech") == 0.0, "mic_no_speech 0 (metrics follow at the next tick)", DEADLINE_S)
        # One line per change, never the audio: each raise has its clear (or is still raised), in order.
        problem_lines = lines_with(daemon, "microphone problem")
        assert all(("cleared" in line) == (" INFO " in line) for line in problem_lines), problem_lines
    finally:
        print(daemon.joined_log()[-3000:])
