"""VAD gate state machine with a scripted speech decision (no audio, no I/O)."""

from __future__ import annotations

from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentEnd, SegmentFrame, SegmentStart, VadGate
from agent.settings import VadSettings

N = 320  # samples per 20 ms frame


def run(pattern: str, settings: VadSettings, tail_short: bool = False) -> tuple[list[GateEvent], VadGate]:
    """pattern: one char per 20 ms frame, 'S' speech, '.' not. The frame's pcm encodes its index."""
    frames = [Frame(start=i * N, pcm=bytes([c == "S"]) * (2 * N)) for i, c in enumerate(pattern)]
    if tail_short:
        frames.append(Frame(start=len(pattern) * N, pcm=b"\x01" * 100))
    gate = VadGate(settings, 20, is_speech=lambda pcm: pcm[0] == 1)
    events: list[GateEvent] = []
    for f in frames:
        events += gate.push(f)
    events += gate.finish()
    return events, gate


def summary(events: list[GateEvent]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for e in events:
        if isinstance(e, SegmentStart):
            out.append(("start", e.start // N))
        elif isinstance(e, SegmentEnd):
            out.append(("end", e.end // N))
    return out


def passed(events: list[GateEvent]) -> list[int]:
    return [e.frame.start // N for e in events if isinstance(e, SegmentFrame)]


S = VadSettings(onset_ms=60, preroll_ms=100, hangover_ms=100)  # onset 3 of 6, pre-roll 5, hangover 5 frames


def test_onset_preroll_and_hangover() -> None:
    events, gate = run("." * 10 + "SSS" + "." * 8, S)
    # onset at frame 10, confirmed at 12; pre-roll 5 frames -> starts at 5; closes after 5 silent frames (13-17)
    assert summary(events) == [("start", 5), ("end", 18)]
    assert passed(events) == list(range(5, 18))
    assert gate.stats.segments == 1 and gate.stats.speech_frames == 3 and gate.stats.passed_frames == 13


def test_isolated_clicks_do_not_open_a_segment() -> None:
    events, gate = run("S....S....S..S...", S)
    assert events == [] and gate.stats.speech_share == 4 / 17


def test_onset_tolerates_a_gap_inside_the_window() -> None:
    events, _ = run("......S.SS.....", S)
    assert summary(events)[0] == ("start", 1)  # first speech frame (6) minus pre-roll 5


def test_preroll_never_reaches_into_the_previous_segment_and_nothing_is_passed_twice() -> None:
    events, _ = run("SSS" + "." * 6 + "SSS" + "....", S)
    assert summary(events) == [("start", 0), ("end", 8), ("start", 8), ("end", 16)]
    frames = passed(events)
    assert frames == sorted(set(frames)) == list(range(16))


def test_short_pause_is_bridged_by_hangover() -> None:
    events, _ = run("SSSS...SSSS" + "." * 6, S)
    assert summary(events) == [("start", 0), ("end", 16)]


def test_finish_closes_an_open_segment_at_the_last_frame_and_short_tail_is_not_speech() -> None:
    events, gate = run("..SSSSSS", S, tail_short=True)
    assert isinstance(events[-1], SegmentEnd) and events[-1].end == 8 * N + 50
    assert gate.stats.speech_frames == 6


def test_events_are_ordered_start_frames_end() -> None:
    events, _ = run(".SSS......SSSS.......", S)
    state = "closed"
    for e in events:
        if isinstance(e, SegmentStart):
            assert state == "closed"
            state = "open"
        elif isinstance(e, SegmentFrame):
            assert state == "open"
        else:
            assert state == "open"
            state = "closed"
    assert state == "closed"


def test_a_block_of_frames_at_once_gives_the_same_events_and_counts_as_frame_by_frame() -> None:
    """push_many (a capture block's frames in one pass) is push, frame after frame: same events, same stats."""
    import random

    rng = random.Random(7)
    for trial in range(40):
        pattern = "".join(rng.choice("SS..." if trial % 2 else "S....") for _ in range(rng.randint(1, 200)))
        settings = VadSettings(onset_ms=rng.choice([20, 60, 100]), preroll_ms=rng.choice([0, 20, 100, 300]),
                               hangover_ms=rng.choice([20, 100, 400]))  # fmt: skip
        one, gate_one = run(pattern, settings, tail_short=trial % 3 == 0)
        frames = [Frame(start=i * N, pcm=bytes([c == "S"]) * (2 * N)) for i, c in enumerate(pattern)]
        if trial % 3 == 0:
            frames.append(Frame(start=len(pattern) * N, pcm=b"\x01" * 100))
        gate = VadGate(settings, 20, is_speech=lambda pcm: pcm[0] == 1)
        many: list[GateEvent] = []
        at = 0
        while at < len(frames):
            step = rng.randint(1, 7)
            many += gate.push_many(frames[at : at + step])
            at += step
        many += gate.finish()
        assert many == one, (pattern, settings)
        assert gate.stats == gate_one.stats
