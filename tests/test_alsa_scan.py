"""PortAudio's device scan leaves no ALSA plugin loaded that no stream uses (issue 11: the daemon's memory), and
finds the same devices as before: fresh processes against a private PulseAudio server, read through /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.daemon import PrivatePulse

pytestmark = [pytest.mark.pulse, pytest.mark.slow]

PLAIN = """
import json, sounddevice
print(json.dumps({"devices": [d["name"] for d in sounddevice.query_devices()],
                  "maps": open("/proc/self/maps").read()}))
"""
"""PortAudio as sounddevice leaves it: the scan at import, nothing released."""

OURS = """
import json, threading
import numpy as np
from agent.audio.mic import MicSource, list_input_devices, import_sounddevice, parse_mic_spec
inputs = [d.name for d in list_input_devices()]
devices = [d["name"] for d in import_sounddevice().query_devices()]
after_scan = open("/proc/self/maps").read()
peaks, enough = [], threading.Event()
def sink(samples, capture_time, missed):
    peaks.append(float(np.abs(samples).max()))
    if len(peaks) >= 10:
        enough.set()
with MicSource(parse_mic_spec("mic:pulse"), handoff_seconds=1.0, sink=sink):
    got = enough.wait(60)
    streaming = open("/proc/self/maps").read()
print(json.dumps({"inputs": inputs, "devices": devices, "after_scan": after_scan, "streaming": streaming,
                  "blocks": got, "peak": max(peaks, default=0.0)}))
"""
"""The agent's own path: list the inputs (a re-scan), then capture through ``mic:pulse``."""


def pcm_modules(maps: str) -> set[str]:
    """ALSA PCM plugin modules (``libasound_module_pcm_*.so``) mapped in a process, by file name."""
    return {Path(line.split()[-1]).name for line in maps.splitlines() if "libasound_module_pcm_" in line}


def run_fresh(code: str, pulse: PrivatePulse) -> dict[str, object]:
    env = {**os.environ, "PULSE_SERVER": pulse.server}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_the_scan_finds_the_same_devices_and_keeps_only_the_plugin_in_use(private_pulse: PrivatePulse) -> None:
    plain = run_fresh(PLAIN, private_pulse)
    ours = run_fresh(OURS, private_pulse)
    left_by_portaudio = pcm_modules(str(plain["maps"]))
    # libasound2-plugins (tests/setup.sh) names a52, jack, speex ... in the ALSA configuration: PortAudio opens
    # them all while scanning and alsa-lib keeps them loaded. Without them this test would prove nothing.
    assert {"libasound_module_pcm_a52.so", "libasound_module_pcm_pulse.so"} <= left_by_portaudio
    assert ours["devices"] == plain["devices"]
    assert "pulse" in ours["inputs"] and "default" in ours["inputs"]  # type: ignore[operator]
    assert pcm_modules(str(ours["after_scan"])) == set()
    assert ours["blocks"] is True
    assert float(ours["peak"]) > 0.05  # type: ignore[arg-type]  # the private server's tone, not silence
    assert pcm_modules(str(ours["streaming"])) == {"libasound_module_pcm_pulse.so"}
