"""``benchmarks.analysis.catch_up``: when an outage's backlog counts as acknowledged (pure, synthetic traces)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.analysis import catch_up

FRAME = 1600
"""Samples per synthetic frame (0.1 s at 16 kHz), captured at ``index * 0.1`` s."""


def trace(sent_frames: list[int], acks: list[tuple[float, int]]) -> dict[str, Any]:
    """Frames 0-19 captured in real time; one message per frame the gate passed (``sent_frames``, in order)."""
    frames = [(i * FRAME, FRAME, i * 0.1) for i in range(20)]
    sends = [(0.0, seq, i * FRAME, FRAME) for seq, i in enumerate(sent_frames)]
    return {"frames": frames, "sends": sends, "acks": acks, "readies": [(1.1, 0)]}


def test_a_backlog_ending_in_a_pause_is_done_when_its_last_speech_is_acknowledged() -> None:
    # Speech in frames 0-5, a pause, speech again from frame 14 (captured after the link came back at 1.05 s).
    result = trace([0, 1, 2, 3, 4, 5, 14, 15], acks=[(0.3, 1), (1.2, 5), (1.6, 6), (1.7, 7)])
    got = catch_up(result, up_at=1.05)
    assert got["done_at"] == 1.2  # not 1.6: the ack of speech captured live after link-up
    assert got["backlog_s"] == pytest.approx(0.4)  # frames 2-5, unacknowledged at link-up
    assert got["ready_at"] == 1.1


def test_a_backlog_ending_in_speech_is_done_when_audio_up_to_link_up_is_acknowledged() -> None:
    result = trace(list(range(20)), acks=[(0.3, 1), (1.2, 5), (1.3, 9), (1.4, 12)])
    got = catch_up(result, up_at=1.05)
    assert got["done_at"] == 1.3
    assert got["backlog_s"] == pytest.approx(0.8)  # frames 2-9
