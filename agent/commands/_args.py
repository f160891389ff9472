"""Command-line values every command checks the same way (one line and exit 65 on a bad one, never a traceback).

They are validated in the command, not by argparse: argparse answers a bad value with its usage text and exit 2.
"""

from __future__ import annotations

import math

from agent.errors import InputError


def duration_seconds(text: str | None, *, flag: str = "--duration", frame_ms: int = 20) -> float | None:
    """``text`` as seconds of audio (None stays None): a finite number of at least one ``frame_ms`` frame.

    0, negatives, NaN and infinity are refused, and so is anything shorter than one frame: such a visit would
    hold no audio at all.
    """
    if text is None:
        return None
    shortest = frame_ms / 1000
    problem = f"{flag} must be a finite number of seconds, at least {shortest:g} (one {frame_ms} ms frame)"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{problem}, not {text!r}") from None
    if not math.isfinite(value) or value < shortest:
        raise InputError(f"{problem}, not {text!r}")
    return value
