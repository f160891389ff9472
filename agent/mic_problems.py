"""The names of the microphone's problems and what they mean to a person (no dependencies: ``status`` imports it).

The detector is :mod:`agent.audio.mic_health`; status, metrics, logs and the event stream use these names.
"""

from __future__ import annotations

SILENT = "silent"
CLIPPING = "clipping"
NO_DATA = "no_data"
NO_SPEECH = "no_speech"
PROBLEMS = (SILENT, CLIPPING, NO_DATA, NO_SPEECH)
"""Every problem name, in the order status lists them."""

_MEANING = {
    SILENT: "silent or too low for speech",
    CLIPPING: "clipping",
    NO_DATA: "the device delivers no audio",
    NO_SPEECH: "sound but no speech",
}


def describe(problem: str) -> str:
    """``silent`` -> ``silent or too low for speech``."""
    return _MEANING.get(problem, problem)
