"""``medisync-agent devices``: list the audio input devices PortAudio offers (name, default rate, channels, and the
format the agent opens: 16 kHz mono for a sound server's device, ``agent/audio/mic_format.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from agent.audio.mic import list_input_devices


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list audio input devices",
        description=(
            "List the audio input devices PortAudio offers, with their default sample rate and channel count, and "
            "the rate and channels the agent opens them at (OPENS: 16000x1 for a sound server's device such as "
            "PulseAudio's or PipeWire's, which resamples once; unless audio.server_mic_16k = false). "
            "Choose one for the agent with source = \"mic:<part of its name>\" (devices are matched by name, "
            "never by number, because numbers change when USB devices come and go)."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = list_input_devices()
    if not devices:
        print("no audio input devices found (is a microphone connected?)")
        return 0
    width = max(len(d.name) for d in devices)
    print(f"{'NAME':<{width}}  {'RATE':>6}  CHANNELS  OPENS")
    for d in devices:
        print(f"{d.name:<{width}}  {d.default_rate:>6}  {d.channels:>8}  {d.opens_at[0]}x{d.opens_at[1]}")
    return 0
