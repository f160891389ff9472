"""The rate and channel count a microphone opens at (issue 11, ``agent/audio/mic_format.py``): a sound server's device
at 16 kHz mono, any other at its native format, the spec's override first; and which ALSA PCMs are a sound
server's, read from alsa-lib's own expansion of an installer's configuration (a fresh process, no PortAudio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.audio.dsp import Dsp
from agent.audio.mic_format import DeviceFacts, is_sound_server, needs_pcm_type, open_format
from agent.settings import AudioSettings

PULSE = DeviceFacts(44100, 32, "ALSA", "pulse")
"""PortAudio's ALSA ``pulse`` device: default rate 44.1 kHz, 32 channels offered."""
USB = DeviceFacts(48000, 1, "ALSA", None)
"""A USB microphone as PortAudio lists it (``USB Audio: - (hw:1,0)``: no PCM definition of that name)."""


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (PULSE, (16000, 1)),
        (DeviceFacts(48000, 2, "ALSA", "pipewire"), (16000, 1)),
        (DeviceFacts(44100, 32, "PulseAudio", None), (16000, 1)),  # PortAudio's own PulseAudio host API
        (USB, (48000, 1)),
        (DeviceFacts(44100, 2, "ALSA", "hw"), (44100, 2)),
        (DeviceFacts(48000, 2, "ALSA", "plug"), (48000, 2)),  # plughw: ALSA's linear rate converter, never 16 kHz
        (DeviceFacts(48000, 4, "ALSA", "dsnoop"), (48000, 2)),  # at most two channels
        (DeviceFacts(48000, 2, "ALSA", "asym"), (48000, 2)),  # a wrapper around pulse is not looked into
        (DeviceFacts(48000, 2, "ALSA", "jack"), (48000, 2)),  # JACK runs at its own fixed rate
        (DeviceFacts(48000, 2, "JACK Audio Connection Kit", "pulse"), (48000, 2)),  # pcm_type is ALSA's only
    ],
)
def test_a_sound_servers_device_opens_at_16k_mono_any_other_at_its_own(
    device: DeviceFacts, expected: tuple[int, int]
) -> None:
    assert open_format(None, None, device) == expected


def test_the_spec_wins_in_each_part() -> None:
    assert open_format(44100, 2, PULSE) == (44100, 2)
    assert open_format(48000, None, PULSE) == (48000, 1)  # the rate given, the channels still the server's mono
    assert open_format(None, 2, PULSE) == (16000, 2)
    assert open_format(16000, 1, USB) == (16000, 1)  # asked for: a hardware device may offer 16 kHz itself
    assert open_format(None, 2, USB) == (48000, 2)


def test_the_setting_turns_the_rule_off() -> None:
    assert open_format(None, None, PULSE, server_16k=False) == (44100, 2)
    assert AudioSettings().server_mic_16k is True


def test_the_pcm_type_is_looked_up_only_when_it_decides() -> None:
    assert needs_pcm_type(None, None, True, "ALSA")
    assert needs_pcm_type(48000, None, True, "ALSA") and needs_pcm_type(None, 1, True, "ALSA")
    assert not needs_pcm_type(48000, 1, True, "ALSA")  # the spec says it all
    assert not needs_pcm_type(None, None, False, "ALSA")
    assert not needs_pcm_type(None, None, True, "PulseAudio")
    assert is_sound_server("ALSA", "pulse") and not is_sound_server("OSS", "pulse")


@pytest.mark.parametrize("resampler", ["fir", "soxr"])
def test_16k_input_runs_no_resampler(resampler: str) -> None:
    """What a sound server's device now delivers costs the DSP no resampling and no delay, whatever the setting
    (the bit-exact pass-through: tests/test_audio_dsp.py, and through PulseAudio: tests/test_mic_paced_pulse.py)."""
    dsp = Dsp(16000, AudioSettings(resampler=resampler))  # type: ignore[arg-type]
    assert dsp._fir is None and dsp._resampler is None and dsp.delay_s == 0.0


INSTALLER_ASOUNDRC = """
pcm.!default { type pipewire }
pcm.pipewire { type pipewire }
pcm.room_mic "pipewire"
pcm.usb_mic { type plug slave.pcm "hw:1,0" }
pcm.wrapped_pulse { type asym capture.pcm "pulse" }
"""
"""A PipeWire system's ALSA configuration (what pipewire-alsa installs, in short) with an installer's own names."""

LOOKUP = """
import json, sys
from agent.audio.alsa_scan import pcm_type
from agent.audio.mic_format import is_sound_server
names = sys.argv[1:]
print(json.dumps({name: [pcm_type(name), is_sound_server("ALSA", pcm_type(name))] for name in names}))
"""


def test_alsa_pcm_types_follow_the_configuration(tmp_path: Path) -> None:
    """``default`` routed to PipeWire, an alias of it, pulse, hardware and plug PCMs, and PortAudio's name for a
    card (not a PCM definition); no sound server answers, so the PulseAudio plugin's hook leaves ``default`` alone."""
    (tmp_path / ".asoundrc").write_text(INSTALLER_ASOUNDRC)
    names = ["default", "pipewire", "room_mic", "pulse", "usb_mic", "hw:1,0", "plughw:1", "wrapped_pulse",
             "USB Audio: - (hw:1,0)", "no_such_pcm"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path), "PULSE_SERVER": str(tmp_path / "no-server")}
    proc = subprocess.run([sys.executable, "-c", LOOKUP, *names], capture_output=True, text=True, timeout=60,
                          check=False, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "default": ["pipewire", True],
        "pipewire": ["pipewire", True],
        "room_mic": ["pipewire", True],
        "pulse": ["pulse", True],
        "usb_mic": ["plug", False],
        "hw:1,0": ["hw", False],
        "plughw:1": ["plug", False],
        "wrapped_pulse": ["asym", False],
        "USB Audio: - (hw:1,0)": [None, False],
        "no_such_pcm": [None, False],
    }


PLAIN_ALSA_ASOUNDRC = """
pcm.room_mic { type plug slave { pcm "null" rate 48000 } }
"""
"""A PCM as plain ALSA's ``default`` is for capture (``plug`` over ``dsnoop``, which runs at one rate), on ALSA's
``null`` PCM so no card is needed: ``plug`` would convert any other rate by linear interpolation."""

OPEN = """
import sys
from agent.audio.sources import open_source
from agent.settings import AudioSettings
source = open_source(sys.argv[1], AudioSettings())
with source:
    block = source.handoff.get(timeout=10)
print(source.description, block.samples.shape)
"""


def test_a_plug_device_opens_at_its_slaves_rate_through_portaudio(tmp_path: Path) -> None:
    """Not a sound server: PortAudio's default rate for it is the slave's own 48 kHz (it probes without ALSA's
    converter), so the agent asks ``plug`` for no conversion, and the FIR makes the 16 kHz."""
    (tmp_path / ".asoundrc").write_text(PLAIN_ALSA_ASOUNDRC)
    env = {**os.environ, "HOME": str(tmp_path), "PULSE_SERVER": str(tmp_path / "no-server")}
    proc = subprocess.run([sys.executable, "-c", OPEN, "mic:room_mic"], capture_output=True, text=True, timeout=60,
                          check=False, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    block = 48000 * AudioSettings().capture_block_ms // 1000
    assert proc.stdout.strip() == f"mic 'room_mic' 48000 Hz x2 ({block}, 2)"
