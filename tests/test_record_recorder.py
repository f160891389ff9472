"""The recorder loop in-process with a scripted source: gaps archived as silence, stop from another thread, and
an error mid-recording still leaves a finished WAV."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio.dsp import Gap
from agent.audio.handoff import Handoff
from agent.audio.types import Block
from agent.errors import DeviceError
from agent.recorder import Recorder
from agent.settings import AgentSettings
from tests.plugins.archive import soxi_samples, wav_pcm
from tests.plugins.keys import TEST_RECIPIENT


def tone(n: int, seed: int) -> npt.NDArray[np.int16]:
    return np.random.default_rng(seed).integers(-20000, 20000, n, dtype=np.int16)


class ScriptedSource:
    """16 kHz mono blocks from a script, put into the hand-off by a producer thread (like PortAudio's callback);
    ``None`` in the script waits until stop(); an exception fails the hand-off with it."""

    def __init__(self, script: list[Block | Exception | None]) -> None:
        self._script = script
        self._stopped = threading.Event()
        self.waiting = threading.Event()
        self.handoff = Handoff(16000 * 60)
        self._producer = threading.Thread(target=self._produce)

    description = "scripted"
    sample_rate = 16000
    channels = 1

    def __enter__(self) -> ScriptedSource:
        self._producer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._producer.join()

    def _produce(self) -> None:
        for step in self._script:
            if isinstance(step, Exception):
                self.handoff.fail(step)
                return
            if step is None:
                self.waiting.set()
                self._stopped.wait(30)
                break
            self.handoff.put(step.samples, step.capture_time, step.missed)
        self.handoff.close()

    def check_alive(self) -> None:
        pass

    def stop(self) -> None:
        self._stopped.set()
        self.handoff.close()


def block(pcm: npt.NDArray[np.int16], missed: int = 0) -> Block:
    return Block(samples=(pcm.astype(np.float32) / 32768).reshape(-1, 1), capture_time=0.0, missed=missed)


def test_lost_source_samples_are_archived_as_silence(tmp_path: Path) -> None:
    a, b = tone(3200, 1), tone(3200, 2)
    out = tmp_path / "v.wav"
    source = ScriptedSource([block(a), block(b, missed=800)])
    summary = Recorder(source, out, AgentSettings(), recipient=TEST_RECIPIENT).run()
    assert wav_pcm(out) == a.tobytes() + bytes(1600) + b.tobytes()
    assert soxi_samples(out) == 7200
    assert (summary.samples, summary.gaps, summary.lost_samples) == (7200, (Gap(3200, 4000),), 800)
    assert summary.stopped_by == "end"


def test_stop_from_another_thread_finishes_the_archive(tmp_path: Path) -> None:
    a = tone(1600, 3)
    source = ScriptedSource([block(a), None])
    recorder = Recorder(source, tmp_path / "v.wav", AgentSettings(), recipient=TEST_RECIPIENT)
    stopper = threading.Thread(target=lambda: (source.waiting.wait(30), recorder.stop()))
    stopper.start()
    summary = recorder.run()
    stopper.join()
    assert summary.stopped_by == "stop"
    assert wav_pcm(tmp_path / "v.wav") == a.tobytes()


def test_a_device_error_mid_recording_still_leaves_a_finished_wav(tmp_path: Path) -> None:
    a, b = tone(1600, 4), tone(1600, 5)
    source = ScriptedSource([block(a), block(b), DeviceError("mic 'x' stopped delivering audio (device lost?)")])
    with pytest.raises(DeviceError):
        Recorder(source, tmp_path / "v.wav", AgentSettings(), recipient=TEST_RECIPIENT).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.wav"]
    assert wav_pcm(tmp_path / "v.wav") == a.tobytes() + b.tobytes()


def test_duration_cuts_mid_frame_and_closes_the_open_segment(tmp_path: Path) -> None:
    a = tone(16000, 6)
    segments = []
    summary = Recorder(
        ScriptedSource([block(a)]), tmp_path / "v.wav", AgentSettings(), duration_s=0.5055, recipient=TEST_RECIPIENT,
        is_speech=lambda pcm: True, on_segment=segments.append,
    ).run()  # fmt: skip
    assert summary.samples == 8088
    assert wav_pcm(tmp_path / "v.wav") == a[:8088].tobytes()
    assert summary.stopped_by == "duration"
    assert [(s.start, s.end) for s in summary.segments] == [(0, 8088)]
    assert segments == list(summary.segments)
    assert summary.speech_share == 1.0
