"""The microphone health detector, pure: synthetic blocks and times in, changes out (issue 13).

Each condition is raised within 3 s of when it began (defaults), cleared when it ends, with hysteresis in level and
in time; short events do not raise; no_speech needs a level and a watched visit. The adapter logs one line per change
and tells listeners; ``check`` judges its short listen with the same detector."""

from __future__ import annotations

import io
import logging

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.mic_health import CLIPPING, NO_DATA, NO_SPEECH, SILENT, MicChange, MicHealthDetector
from agent.audio.mic_monitor import MicHealth
from agent.commands.check import check_audio
from agent.settings import AgentSettings, AudioSettings, MicSettings

RATE = 16000
BLOCK_S = 0.1


def tone(dbfs: float, seconds: float = BLOCK_S) -> npt.NDArray[np.float32]:
    """A 440 Hz sine whose RMS is ``dbfs`` (full-scale square = 0 dBFS)."""
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def square(seconds: float = BLOCK_S) -> npt.NDArray[np.float32]:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.where(np.sin(2 * np.pi * 200 * t) >= 0, 1.0, -1.0).astype(np.float32)


def zeros(seconds: float = BLOCK_S) -> npt.NDArray[np.float32]:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


class Feed:
    """Drives a detector with 100 ms blocks and ticks on a fake clock; keeps every change."""

    def __init__(self, settings: MicSettings | None = None) -> None:
        self.now = 1000.0
        self.detector = MicHealthDetector(settings or MicSettings(), self.now)
        self.changes: list[MicChange] = []

    def play(self, make: object, seconds: float, *, speech: bool = False) -> None:
        assert callable(make)
        for _ in range(round(seconds / BLOCK_S)):
            start, self.now = self.now, self.now + BLOCK_S
            self.changes += self.detector.block(make(), start, self.now)
            if speech:
                self.changes += self.detector.heard_speech(self.now)
            self.changes += self.detector.tick(self.now)

    def wait(self, seconds: float) -> None:
        """No blocks, ticks every 250 ms."""
        for _ in range(round(seconds / 0.25)):
            self.now += 0.25
            self.changes += self.detector.tick(self.now)

    def first(self, problem: str, raised: bool, after: float = 0.0) -> MicChange:
        found = [c for c in self.changes if c.problem == problem and c.raised == raised and c.at >= after]
        assert found, f"no {'raise' if raised else 'clear'} of {problem} in {self.changes}"
        return found[0]


def speech_level() -> npt.NDArray[np.float32]:
    return tone(-25.0)


@pytest.mark.parametrize("quiet", [zeros, lambda: tone(-60.0), lambda: tone(-80.0)], ids=["zeros", "-60", "-80"])
def test_silence_or_a_level_too_low_is_raised_within_3_s_and_cleared_by_speech(quiet: object) -> None:
    feed = Feed()
    feed.play(speech_level, 5.0)
    assert feed.changes == []
    began = feed.now
    feed.play(quiet, 5.0)
    raised = feed.first(SILENT, True)
    assert raised.at - began <= 3.0 and raised.level_dbfs < -55.0
    assert feed.detector.problems == {SILENT}
    fixed = feed.now
    feed.play(speech_level, 5.0)
    cleared = feed.first(SILENT, False)
    assert 2.0 <= cleared.at - fixed <= 3.0  # clear_s of a level beyond the hysteresis margin
    assert feed.detector.problems == frozenset()
    assert len(feed.changes) == 2


def test_level_inside_the_hysteresis_band_neither_raises_nor_clears() -> None:
    feed = Feed()
    feed.play(lambda: tone(-58.0), 4.0)
    assert feed.detector.problems == {SILENT}
    feed.play(lambda: tone(-52.0), 10.0)  # above silence_dbfs (-55) but below -55 + 6: still silent
    assert feed.detector.problems == {SILENT}
    feed.play(lambda: tone(-47.0), 3.0)
    assert feed.detector.problems == frozenset()
    feed.play(lambda: tone(-52.0), 10.0)  # in the band from the other side: stays clear
    assert feed.detector.problems == frozenset()


def test_short_pauses_do_not_raise_silence() -> None:
    feed = Feed()
    for _ in range(10):
        feed.play(speech_level, 1.0)
        feed.play(zeros, 2.0)  # window 1 s + raise 1.5 s: a 2 s pause is not a deaf microphone
    assert feed.changes == []


def test_clipping_is_raised_within_3_s_and_cleared_when_the_level_drops() -> None:
    feed = Feed()
    feed.play(speech_level, 3.0)
    began = feed.now
    feed.play(square, 4.0)
    raised = feed.first(CLIPPING, True)
    assert raised.at - began <= 3.0
    assert feed.detector.problems == {CLIPPING}
    fixed = feed.now
    feed.play(speech_level, 5.0)
    cleared = feed.first(CLIPPING, False)
    assert cleared.at - fixed <= 3.5  # the window empties (1 s), then clear_s (2 s)


def test_a_single_bang_does_not_raise_clipping_but_recurring_clips_do() -> None:
    feed = Feed()
    feed.play(speech_level, 2.0)
    feed.play(square, 0.3)
    feed.play(speech_level, 5.0)
    assert feed.changes == []
    for _ in range(6):  # a loud talker: 100 ms clipped in every 700 ms (about 14 % of the samples)
        feed.play(square, 0.1)
        feed.play(speech_level, 0.6)
    assert feed.detector.problems == {CLIPPING}


def test_clipping_threshold_is_the_share_of_samples() -> None:
    feed = Feed(MicSettings(clip_share=0.5))
    feed.play(lambda: np.concatenate([square(0.04), tone(-25.0, 0.06)]), 5.0)  # 40 % clipped < 50 %
    assert feed.changes == []
    feed.play(lambda: np.concatenate([square(0.07), tone(-25.0, 0.03)]), 5.0)
    assert feed.detector.problems == {CLIPPING}


def test_no_data_needs_ticks_and_clears_when_blocks_flow_again() -> None:
    feed = Feed()
    feed.play(speech_level, 2.0)
    stopped = feed.now
    feed.wait(1.5)
    assert feed.changes == []
    feed.wait(3.0)
    raised = feed.first(NO_DATA, True)
    assert raised.at - stopped <= 2.5 and raised.since == stopped and raised.level_dbfs == -120.0
    assert feed.detector.level_dbfs == -120.0
    back = feed.now
    feed.play(speech_level, 1.0)
    assert feed.detector.problems == {NO_DATA}  # hysteresis: blocks must flow clear_s
    feed.play(speech_level, 2.0)
    cleared = feed.first(NO_DATA, False)
    assert cleared.since == back and 2.0 <= cleared.at - back <= 2.2


def test_a_device_that_never_delivers_is_raised() -> None:
    feed = Feed()
    feed.wait(3.0)
    assert feed.detector.problems == {NO_DATA}


def test_no_speech_while_the_level_is_present_only_in_a_watched_visit() -> None:
    settings = MicSettings(no_speech_s=10.0)
    feed = Feed(settings)
    feed.play(speech_level, 30.0)  # idle: nobody expects speech
    assert feed.changes == []
    feed.changes += feed.detector.watch_speech(True, feed.now)
    began = feed.now
    feed.play(speech_level, 15.0)  # sound the gate never calls speech (a fan, a wrong device)
    raised = feed.first(NO_SPEECH, True)
    assert raised.at - began == pytest.approx(10.0, abs=0.11)
    spoke = feed.now
    feed.play(speech_level, 1.0, speech=True)
    cleared = feed.first(NO_SPEECH, False)
    assert cleared.at - spoke <= 0.11
    feed.play(speech_level, 9.0)  # counts from the last speech
    assert feed.detector.problems == frozenset()
    feed.play(speech_level, 2.0)
    assert feed.detector.problems == {NO_SPEECH}
    feed.changes += feed.detector.watch_speech(False, feed.now)  # the visit ended (or paused)
    assert feed.detector.problems == frozenset()


def test_silence_supersedes_no_speech_and_counting_restarts_when_the_level_returns() -> None:
    feed = Feed(MicSettings(no_speech_s=10.0))
    feed.changes += feed.detector.watch_speech(True, feed.now)
    feed.play(zeros, 30.0)
    assert feed.detector.problems == {SILENT}  # silence explains the missing speech: one problem, not two
    back = feed.now
    feed.play(speech_level, 9.0)
    assert feed.detector.problems == frozenset()
    feed.play(speech_level, 5.0)
    raised = feed.first(NO_SPEECH, True)
    assert raised.at - back >= 10.0


def test_no_data_supersedes_no_speech() -> None:
    feed = Feed(MicSettings(no_speech_s=5.0))
    feed.changes += feed.detector.watch_speech(True, feed.now)
    feed.play(speech_level, 6.0)
    assert feed.detector.problems == {NO_SPEECH}
    feed.wait(3.0)
    assert feed.detector.problems == {NO_DATA}


def test_int16_frames_are_judged_like_float_blocks() -> None:
    detector = MicHealthDetector(MicSettings(), 0.0)
    pcm = (square(0.1) * 32767).astype("<i2").tobytes()
    for i in range(20):
        detector.frames_pcm(pcm, i * 0.1, (i + 1) * 0.1)
    assert detector.problems == {CLIPPING}
    assert detector.level_dbfs == pytest.approx(0.0, abs=0.01)


def test_monitor_logs_one_line_per_change_and_tells_listeners(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    health = MicHealth(MicSettings(), clock=lambda: now[0])
    seen: list[MicChange] = []
    remove = health.add_listener(seen.append)
    health.add_listener(lambda change: 1 / 0)  # a broken listener is logged, the others still hear
    caplog.set_level(logging.INFO, logger="agent.audio.mic_monitor")
    for i in range(40):
        health.feed_block(zeros(), i * 0.1, (i + 1) * 0.1)
    for i in range(40, 80):
        health.feed_block(tone(-20.0), i * 0.1, (i + 1) * 0.1)
    assert [(c.problem, c.raised) for c in seen] == [(SILENT, True), (SILENT, False)]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agent.audio.mic_monitor"]
    assert [lv for lv, msg in lines if msg.startswith("microphone problem")] == ["WARNING", "INFO"]
    assert lines[0][1].startswith("microphone problem: silent (silent or too low for speech; level -120.0 dBFS for")
    assert sum("listener failed" in msg for _, msg in lines) == 2
    remove()
    now[0] = 20.0
    health.tick()
    assert health.problems() == {NO_DATA} and len(seen) == 2


@pytest.mark.parametrize(
    ("recipe", "label", "words"),
    [
        ("tone=440/3/-20", "PASS", "level -23.0 dBFS"),  # synth levels are peaks: RMS 3 dB below
        ("tone=440/3/-60", "WARN", "level too low for speech (below -55 dBFS)"),
        ("tone=440/3/0", "WARN", "the signal clips: lower the microphone gain"),
        ("silence/3", "FAIL", "only digital silence"),
    ],
)
def test_check_judges_its_listen_with_the_detector(recipe: str, label: str, words: str) -> None:
    settings = AgentSettings(audio=AudioSettings(source=f"synth:48000:{recipe}", pace="fast"))
    row = check_audio(settings, 3.0, io.StringIO())
    assert (row.label, words in row.detail) == (label, True), row
