"""The microphone health detector on the PulseAudio virtual microphone (issue 13), wired as the daemon wires it:
the daemon's :class:`~agent.device_watch.Capture` (reopening a lost device) feeds every block to a
:class:`~agent.audio.mic_monitor.MicHealth` in batches from its looks on the event loop (not from PortAudio's
callback), ticked a few times a second.

A private PulseAudio server (so that unloading its null sink really ends the capture, as unplugging a USB microphone
does) plays into the sink whose monitor is the microphone: digital silence, a -60 dBFS tone, a full-scale square
(clipping) and an unplug (``pactl unload-module``). Each is raised within 5 s of when the test began the condition,
measured on the detector's clock (the capture times, ``time.monotonic``), and cleared once normal speech plays again
(or the sink is loaded again). Waiting is by polling with generous deadlines; the 5 s is a check of timestamps.
And ``run`` on a silent microphone logs the problem: one WARNING line, and its summary names it."""

from __future__ import annotations

import os
import re
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.audio.mic_health import CLIPPING, NO_DATA, SILENT, MicChange
from agent.audio.mic_monitor import MicHealth
from agent.audio.sources import source_opener
from agent.audio.vad_eval import DIALOGUE_WAV
from agent.device_watch import Capture
from agent.settings import AudioSettings, MicSettings
from tests.plugins.capture import capture_running
from tests.plugins.daemon import PrivatePulse
from tests.plugins.pulse import NullSink
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome

pytestmark = [pytest.mark.pulse, pytest.mark.slow]
RAISE_WITHIN_S = 5.0
DEADLINE_S = 30.0
RATE = 48000


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


class Watched:
    """Capture + MicHealth as in the daemon, a listener recording each change, and a player into the sink."""

    def __init__(self, pulse: PrivatePulse, capture: Capture, health: MicHealth) -> None:
        self.pulse = pulse
        self.capture = capture
        self.health = health
        self.changes: list[MicChange] = []
        health.add_listener(self.changes.append)

    def play(self, wav: Path | None) -> float:
        """Stop what plays, start ``wav`` (None: nothing, the monitor delivers digital silence); returns the
        monotonic time just before the switch, the earliest the new condition can have begun."""
        began = time.monotonic()
        self.pulse.stop_player()
        if wav is not None:
            env = {**os.environ, "PULSE_SERVER": self.pulse.server}
            self.pulse.player = subprocess.Popen(["paplay", "--device=test_mic", str(wav)], env=env,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        return began

    def wait_for(self, problem: str, raised: bool, after: float) -> MicChange:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.health.tick()  # the daemon's tick does this every 0.25 s
            found = [c for c in list(self.changes) if c.problem == problem and c.raised == raised and c.at >= after]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {'raise' if raised else 'clear'} of {problem} within {DEADLINE_S} s; "
                                     f"changes {self.changes}, level {self.health.level_dbfs():.1f} dBFS")
            time.sleep(0.05)


@pytest.fixture
def watched(private_pulse: PrivatePulse, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watched]:
    monkeypatch.setenv("PULSE_SERVER", private_pulse.server)  # the ALSA pulse plugin reads it when PortAudio opens
    health = MicHealth(MicSettings())
    capture = Capture(source_opener(AudioSettings(source="mic:pulse@48000x1")), retry_cap_s=0.5)

    capture.on_blocks = health.feed_blocks  # what the daemon's hook does, at the capture's looks on its loop
    with capture_running(capture, DEADLINE_S):
        yield Watched(private_pulse, capture, health)


def test_silence_low_level_clipping_and_unplug_are_raised_within_5_s_and_cleared(
    watched: Watched, tmp_path: Path
) -> None:
    t = np.arange(30 * RATE) / RATE
    low = write_wav(tmp_path / "minus60.wav", 32767 * 10 ** (-60 / 20) * np.sin(2 * np.pi * 440 * t))
    square = write_wav(tmp_path / "square.wav", np.where(np.sin(2 * np.pi * 200 * t) >= 0, 32767, -32767))
    delays: dict[str, float] = {}

    began = watched.play(DIALOGUE_WAV)
    deadline = time.monotonic() + DEADLINE_S
    while watched.capture.blocks < 30:  # 3 s of speech delivered
        assert time.monotonic() < deadline, "the microphone delivered nothing"
        time.sleep(0.05)
    assert watched.health.problems() == frozenset(), watched.changes

    for name, wav, problem in (("digital silence", None, SILENT), ("-60 dBFS tone", low, SILENT),
                               ("full-scale square", square, CLIPPING)):  # fmt: skip
        began = watched.play(wav)
        raised = watched.wait_for(problem, True, began)
        delays[name] = raised.at - began
        assert raised.at - began <= RAISE_WITHIN_S, (name, raised)
        fixed = watched.play(DIALOGUE_WAV)
        watched.wait_for(problem, False, fixed)
        assert watched.health.problems() == frozenset(), (name, watched.changes)

    began = time.monotonic()
    watched.pulse.unplug()
    raised = watched.wait_for(NO_DATA, True, began)
    delays["unplug"] = raised.at - began
    assert raised.at - began <= RAISE_WITHIN_S, raised
    plugged = time.monotonic()
    watched.pulse.plug()  # loads the sink again and plays its -10 dBFS tone
    watched.wait_for(NO_DATA, False, plugged)
    assert watched.capture.reopens >= 1
    print("raised after (s):", {k: round(v, 2) for k, v in delays.items()})
    raised_names = [c.problem for c in watched.changes if c.raised]
    assert raised_names == [SILENT, SILENT, CLIPPING, NO_DATA], watched.changes


def test_run_on_a_silent_microphone_logs_the_problem_once(
    medisync_server: RunningServer, null_sink: Callable[[int, int], NullSink], tmp_path: Path
) -> None:
    null_sink(48000, 1)  # its monitor is the default source: nothing plays, so digital silence
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    done = home.run("run", "--appointment", medisync_server.create_appointment(), "--source", "mic:pulse",
                    "--duration", "6")  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "microphone problem" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "silent (silent or too low for speech" in warnings[0]
    # The visit summary names it with the detector's own problem name (what `status` and the metrics show).
    rows = dict(m.groups() for line in done.stderr.splitlines() if (m := re.match(r"^  (\S.*?)\s{2,}(\S.*)$", line)))
    assert rows["microphone health (problems raised)"] == SILENT
