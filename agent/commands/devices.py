"""``medisync-agent devices``: list the audio input devices PortAudio offers (name, default rate, channels)."""

from __future__ import annotations

import argparse
from typing import Any

from agent.audio.mic import list_input_devices


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list audio input devices",
        description=(
            "List the audio input devices PortAudio offers, with their default sample rate and channel count. "
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
    print(f"{'NAME':<{width}}  {'RATE':>6}  CHANNELS")
    for d in devices:
        print(f"{d.name:<{width}}  {d.default_rate:>6}  {d.channels}")
    return 0
