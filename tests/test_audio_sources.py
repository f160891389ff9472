"""Synthetic source grammar, the hand-off buffer, microphone spec parsing and device choice (no PortAudio)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.audio.handoff import Handoff, read_blocks
from agent.audio.mic import find_device, parse_mic_spec
from agent.audio.sources import open_source
from agent.audio.synth import SynthSource, parse_recipe
from agent.errors import ConfigError, DeviceError, InputError
from agent.settings import AudioSettings

FAST = AudioSettings(pace="fast")


def read_all(spec: str, block_frames: int | None = None) -> np.ndarray:
    with open_source(spec, FAST, block_frames=block_frames) as source:
        return np.concatenate([b.samples for b in read_blocks(source.handoff)])


def test_recipe_grammar() -> None:
    r = parse_recipe("48000x2:tone=1000/1/-6+silence/0.5+noise=7/2*3")
    assert (r.rate, r.channels, r.repeat) == (48000, 2, 3)
    assert [s.kind for s in r.segments] == ["tone", "silence", "noise"]
    assert r.segments[0].hz == 1000 and r.segments[0].level_db == -6 and r.segments[2].seed == 7
    assert r.total_frames == 3 * 48000 * 3.5


@pytest.mark.parametrize("bad", ["", "tone/1", "tone=440", "hum=3/1", "tone=440/1*0", "96000:silence/1", "3x3:x"])
def test_bad_recipes_name_the_grammar(bad: str) -> None:
    with pytest.raises(InputError, match="synth"):
        parse_recipe(bad)


def test_synth_content_is_exact_and_independent_of_block_size() -> None:
    spec = "synth:8000x2:tone=1000/0.5/-6+silence/0.25+noise=3/0.5/-20*2"
    a, b = read_all(spec), read_all(spec, block_frames=77)
    assert a.shape == (20000, 2) and np.array_equal(a, b)
    tone = a[:4000, 0]
    assert np.max(np.abs(tone)) == pytest.approx(10 ** (-6 / 20), rel=1e-3)
    assert not a[4000:6000].any()
    noise = a[6000:10000, 0]
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(0.1, rel=0.05)
    assert np.array_equal(a[:10000], a[10000:])  # each repetition restarts from the seed
    assert np.array_equal(a[:, 0], a[:, 1])


def test_an_hour_is_generated_lazily() -> None:
    source = SynthSource(parse_recipe("44100:noise=1/3+tone=300/2*720"), block_frames=4410)
    assert source.recipe.total_frames == 3600 * 44100
    first = source.read()
    assert first is not None and first.samples.shape == (4410, 1)  # no hour-long array was built


def test_unknown_source_spec() -> None:
    with pytest.raises(ConfigError, match="unknown audio source 'tape:x'"):
        open_source("tape:x", FAST)


def test_stop_ends_the_hand_off() -> None:
    with open_source("synth:silence/10", FAST) as source:
        blocks = read_blocks(source.handoff)
        assert next(blocks) is not None
        source.stop()
        assert len(list(blocks)) < 10  # what was queued before stop() at most; then the hand-off is closed
        assert source.handoff.closed


class BrokenSynth(SynthSource):
    """Fails after its first block, as a file read error would."""

    def _produce(self, n: int) -> np.ndarray | None:
        if self.position:
            raise InputError("the file ends in the middle of a sample")
        return super()._produce(n)


def test_a_producer_error_reaches_the_reader_after_the_blocks_before_it() -> None:
    source = BrokenSynth(parse_recipe("silence/10"), block_frames=1600)
    got = []
    with pytest.raises(InputError, match="middle of a sample"), source:
        got.extend(read_blocks(source.handoff))
    assert len(got) == 1 and source.handoff.closed


def test_handoff_drops_oldest_and_carries_the_loss() -> None:
    h = Handoff(capacity_samples=300)
    for i in range(5):
        h.put(np.full((100, 1), i, dtype=np.float32), capture_time=float(i))
    assert h.stats.blocks_dropped == 2 and h.stats.samples_dropped == 200
    first = h.get(0)
    assert first is not None and first.capture_time == 2.0 and first.missed == 200
    rest = [h.get(0), h.get(0)]
    assert [b.missed for b in rest if b] == [0, 0]
    assert h.get(0) is None


def test_handoff_close_wakes_a_waiting_reader() -> None:
    h = Handoff(capacity_samples=10)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(h.get(timeout=30)))
    reader.start()
    h.close()
    reader.join(timeout=10)
    assert not reader.is_alive() and result == [None]


@pytest.mark.parametrize(
    ("spec", "name", "rate", "channels"),
    [
        ("mic", None, None, None),
        ("mic:USB Audio", "USB Audio", None, None),
        ("mic:USB@48000x1", "USB", 48000, 1),
        ("mic:Jabra@x@44100", "Jabra@x", 44100, None),
        ("mic@16000x2", None, 16000, 2),
    ],
)
def test_mic_spec(spec: str, name: str | None, rate: int | None, channels: int | None) -> None:
    parsed = parse_mic_spec(spec)
    assert (parsed.name, parsed.rate, parsed.channels) == (name, rate, channels)


def fake_sd(devices: list[dict[str, Any]], default_input: int = -1) -> Any:
    return SimpleNamespace(query_devices=lambda: devices, default=SimpleNamespace(device=[default_input, -1]))


DEVICES = [
    {"name": "HDMI out", "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "USB Conference Mic: Audio (hw:1,0)", "max_input_channels": 1, "default_samplerate": 48000.0},
    {"name": "pulse", "max_input_channels": 32, "default_samplerate": 44100.0},
]


def test_device_is_chosen_by_name_substring_among_inputs() -> None:
    index, info = find_device(fake_sd(DEVICES), "conference")
    assert index == 1 and info["name"].startswith("USB")
    assert find_device(fake_sd(DEVICES, default_input=2), None)[0] == 2


def test_unknown_device_lists_the_input_devices() -> None:
    with pytest.raises(DeviceError) as info:
        find_device(fake_sd(DEVICES), "HDMI")
    assert str(info.value) == (
        "no input device matching 'HDMI'; available input devices: 'USB Conference Mic: Audio (hw:1,0)', 'pulse'"
    )
