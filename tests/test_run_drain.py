"""``medisync-agent run`` after an outage: the visit ends with most of its audio still in the send ring; the run
waits for the replay (a line every few seconds with the seconds still to confirm), then uploads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, stored_recording

PROGRESS = re.compile(r"^live stream: (\d+\.\d) s of audio still to be confirmed by the speech server$", re.M)


@pytest.mark.slow
def test_run_waits_for_the_backlog_with_progress_then_uploads(medisync_server: RunningServer, tmp_path: Path) -> None:
    # end_timeout_s is 1 s: the old fixed wait would have abandoned the backlog and said "not confirmed".
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password,
                     settings={"stream": {"end_timeout_s": 1.0, "replay_speed": 4.0}})  # fmt: skip
    appointment = medisync_server.create_appointment()
    medisync_server.knobs.drop_after(10, connections=1, outage_s=6.0)

    done = home.run("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--pace", "fast")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    left = [float(s) for s in PROGRESS.findall(done.stderr)]
    assert left and left == sorted(left, reverse=True), done.stderr  # shown, and shrinking
    assert re.search(r"stream confirmed by server\s+yes", done.stderr), done.stderr
    assert re.search(r"upload\s+uploaded and confirmed", done.stderr)
    [wav] = home.wavs()
    assert stored_recording(medisync_server, appointment) == uploaded_bytes(wav)
