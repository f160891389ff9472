"""Re-scanning the microphones (``import_sounddevice(refresh=True)``, done at every reopen of a lost device) must not
swallow log lines of other threads: sounddevice points fd 2 at /dev/null while PortAudio initialises, and the
daemon once lost its "watchdog pings stopped" line that way. A real process with a real stderr pipe."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.plugins.archive import REPO

pytestmark = pytest.mark.pulse

SCRIPT = """
import logging, sys, threading, time
from agent.audio.mic import import_sounddevice
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
log = logging.getLogger("probe")
done = threading.Event()
def rescan():
    while not done.is_set():
        import_sounddevice(refresh=True)
thread = threading.Thread(target=rescan)
thread.start()
for i in range(400):
    log.info("line %d", i)
    time.sleep(0.002)
done.set()
thread.join()
"""


def test_log_lines_survive_a_device_rescan(pulse_server: None) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(400)]
