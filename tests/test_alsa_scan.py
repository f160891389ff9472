"""PortAudio's device scan leaves no ALSA plugin loaded that no stream uses and never loads the playback-only a52
plugin's libraries (issue 11: the daemon's memory), and finds the same capture devices as before, an installer's
own ALSA configuration included: fresh processes against a private PulseAudio server, read through /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.daemon import PrivatePulse

PLAIN = """
import json, sounddevice
print(json.dumps({"devices": [d["name"] for d in sounddevice.query_devices()],
                  "maps": open("/proc/self/maps").read()}))
"""
"""PortAudio as sounddevice leaves it: the scan at import, nothing released."""

OURS = """
import json, sys, threading
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
with MicSource(parse_mic_spec(sys.argv[1]), handoff_seconds=1.0, sink=sink):
    got = enough.wait(60)
    streaming = open("/proc/self/maps").read()
print(json.dumps({"inputs": inputs, "devices": devices, "after_scan": after_scan, "streaming": streaming,
                  "blocks": got, "peak": max(peaks, default=0.0)}))
"""
"""The agent's own path: list the inputs (a re-scan), then capture through the microphone spec ``argv[1]``."""

A52_CHAIN = """
import ctypes, json, sys
import numpy  # noqa: F401
ctypes.CDLL("libportaudio.so.2")  # PortAudio and what it links, without the scan (no Pa_Initialize)
ctypes.CDLL(sys.argv[1])  # the pulse plugin (the one the agent's stream uses) and what it links
before = open("/proc/self/maps").read()
ctypes.CDLL(sys.argv[2])  # the a52 plugin
print(json.dumps({"before": before, "after": open("/proc/self/maps").read()}))
"""
"""Which libraries the a52 plugin loads that a process capturing through ALSA's pulse plugin has no other use for."""

INSTALLER_ASOUNDRC = """
pcm.clinic_mic {
    type asym
    playback.pcm { type a52 card 0 }
    capture.pcm "pulse"
    hint.description "Clinic microphone, S/PDIF receiver for playback"
}
pcm.spdif_ac3 {
    type a52
    card 0
}
"""
"""What an installer's ~/.asoundrc may hold: a capture-capable PCM whose playback half is the AC-3 encoder, and an
encoder PCM of its own name."""


def pcm_modules(maps: str) -> set[str]:
    """ALSA PCM plugin modules (``libasound_module_pcm_*.so``) mapped in a process, by file name."""
    return {Path(line.split()[-1]).name for line in maps.splitlines() if "libasound_module_pcm_" in line}


def libraries(maps: str) -> set[str]:
    """Shared objects mapped in a process, by file name."""
    return {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line.split()[-1]}


def run_fresh(code: str, pulse: PrivatePulse, *args: str, home: Path | None = None) -> dict[str, object]:
    env = {**os.environ, "PULSE_SERVER": pulse.server, **({"HOME": str(home)} if home else {})}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def module_path(maps: str, name: str) -> str:
    """Where the ALSA plugin ``name`` (``a52``, ``pulse``) is, from the maps of a process that loaded it."""
    return next(line.split()[-1] for line in maps.splitlines() if line.endswith(f"/libasound_module_pcm_{name}.so"))


def inputs_of(names_and_maps: dict[str, object]) -> list[str]:
    return [str(d) for d in names_and_maps["inputs"]]  # type: ignore[attr-defined]


def a52_chain(plain: dict[str, object], pulse: PrivatePulse) -> set[str]:
    """What the a52 plugin links that the pulse plugin, PortAudio and numpy do not: libavcodec, x265, glib ..."""
    maps = str(plain["maps"])
    # Not the agent's process: what its scan left there would not be loaded again, so it would not show.
    found = run_fresh(A52_CHAIN, pulse, module_path(maps, "pulse"), module_path(maps, "a52"))
    chain = libraries(str(found["after"])) - libraries(str(found["before"]))
    assert any(name.startswith("libavcodec") for name in chain), chain
    assert chain <= libraries(maps)  # a plain PortAudio scan loads them all
    return chain


@pytest.mark.pulse
@pytest.mark.slow
def test_the_scan_finds_the_same_devices_and_keeps_only_the_plugin_in_use(private_pulse: PrivatePulse) -> None:
    plain = run_fresh(PLAIN, private_pulse)
    ours = run_fresh(OURS, private_pulse, "mic:pulse")
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
    left = a52_chain(plain, private_pulse) & (libraries(str(ours["after_scan"])) | libraries(str(ours["streaming"])))
    assert left == set()  # the a52 plugin's libraries, never loaded by the agent's scan


@pytest.mark.pulse
@pytest.mark.slow
def test_an_installers_capture_device_stays_listed_and_captures(private_pulse: PrivatePulse, tmp_path: Path) -> None:
    (tmp_path / ".asoundrc").write_text(INSTALLER_ASOUNDRC)
    plain = run_fresh(PLAIN, private_pulse, home=tmp_path)
    ours = run_fresh(OURS, private_pulse, "mic:clinic_mic", home=tmp_path)
    assert "clinic_mic" in plain["devices"]  # type: ignore[operator]  # PortAudio lists the installer's device
    assert "clinic_mic" in inputs_of(ours)
    assert [d for d in ours["devices"] if d != "spdif_ac3"] == plain["devices"]  # type: ignore[attr-defined]
    assert ours["blocks"] is True
    assert float(ours["peak"]) > 0.05  # type: ignore[arg-type]  # through clinic_mic's capture half: the tone
    assert pcm_modules(str(ours["after_scan"])) == set()
    left = a52_chain(plain, private_pulse) & (libraries(str(ours["after_scan"])) | libraries(str(ours["streaming"])))
    assert left == set()  # the a52 plugin's libraries, never loaded by the agent's scan


HIDE = """
import json
from agent.audio.alsa_scan import hide_playback_only_pcms, release_scan_plugins
print(json.dumps({"hidden": hide_playback_only_pcms(), "released": release_scan_plugins()}))
"""


def test_every_a52_definition_is_hidden_and_nothing_else(tmp_path: Path) -> None:
    """The system's ``pcm.a52`` (libasound2-plugins), an installer's own a52 PCM and the a52 playback half inside
    an ``asym`` PCM; the asym PCM itself (it captures) and every other PCM stay."""
    (tmp_path / ".asoundrc").write_text(INSTALLER_ASOUNDRC)
    proc = subprocess.run([sys.executable, "-c", HIDE], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "HOME": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"hidden": ["pcm.a52", "pcm.clinic_mic.playback.pcm", "pcm.spdif_ac3"],
                                       "released": True}  # fmt: skip
