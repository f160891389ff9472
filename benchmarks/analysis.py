"""Turning an agent's probe records (frames, sends, acks) into latencies, ack lags and catch-up times. Pure."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from agent import SAMPLE_RATE


def sample_latencies(result: dict[str, Any], since: float | None = None,
                     without_lookback: bool = False) -> npt.NDArray[np.float64]:  # fmt: skip
    """Capture-to-wire latency in seconds of every sample in every first send of a message.

    A sample's capture time is its frame's ``capture_time`` (first sample) plus its offset in the frame; its wire
    time is the moment the message holding it was encoded for ``ws.send``. Resends are not counted, nor samples
    captured before ``since`` (monotonic seconds; e.g. to leave out audio that waited for the first connection).
    ``without_lookback`` also leaves out the samples the voice gate passed late by design (``result["lookback"]``:
    its pre-roll and onset frames, sent when the segment opens).
    """
    frames = np.asarray(result["frames"], dtype=np.float64).reshape(-1, 3)
    if not len(frames) or not result["sends"]:
        return np.zeros(0)
    order = np.argsort(frames[:, 0])
    starts, cts = frames[order, 0], frames[order, 2]
    seen: set[int] = set()
    chunks = []
    spans = result.get("lookback") or []
    late = np.concatenate([np.arange(a, a + n, dtype=np.int64) for a, n in spans]) if spans else None
    for t, seq, start, n in result["sends"]:
        if seq in seen:
            continue
        seen.add(seq)
        idx = np.arange(start, start + n, dtype=np.float64)
        j = np.clip(np.searchsorted(starts, idx, side="right") - 1, 0, len(starts) - 1)
        captured = cts[j] + (idx - starts[j]) / SAMPLE_RATE
        if since is not None:
            keep = captured >= since
            idx, captured = idx[keep], captured[keep]
        if without_lookback and late is not None:
            keep = ~np.isin(idx.astype(np.int64), late)
            idx, captured = idx[keep], captured[keep]
        chunks.append(t - captured)
    return np.concatenate(chunks) if chunks else np.zeros(0)


def ack_lags(result: dict[str, Any]) -> list[float]:
    """Seconds from the first send of a message to the first ack covering it (acks are cumulative)."""
    first_send: dict[int, float] = {}
    for t, seq, _start, _n in result["sends"]:
        first_send.setdefault(seq, t)
    lags: list[float] = []
    pending = sorted(first_send.items())
    i = 0
    for t, acked in sorted(result["acks"]):
        while i < len(pending) and pending[i][0] <= acked:
            lags.append(t - pending[i][1])
            i += 1
    return lags


def catch_up(result: dict[str, Any], up_at: float) -> dict[str, float]:
    """After the link came back at ``up_at``: when the first ``ready`` came, and when the ack covered all audio
    captured before ``up_at`` that the voice gate passed (the backlog), plus the backlog's gated seconds.

    The backlog ends at the last audio sent (ever) that was captured before ``up_at``, not at the last frame
    captured: when the link comes back during a pause, the frames before it that the gate held back are never sent,
    and waiting for an ack past them would wait for the next speech, captured live after ``up_at``."""
    frames = np.asarray(result["frames"], dtype=np.float64).reshape(-1, 3)
    captured_before = frames[frames[:, 2] + frames[:, 1] / SAMPLE_RATE <= up_at]
    captured_end = float((captured_before[:, 0] + captured_before[:, 1]).max()) if len(captured_before) else 0.0
    readies = [t for t, _ in result["readies"] if t >= up_at]
    ready_at = min(readies) if readies else float("nan")
    seq_end: dict[int, float] = {}
    seq_samples: dict[int, int] = {}
    for _t, seq, start, n in result["sends"]:
        seq_end[seq] = start + n
        seq_samples[seq] = n
    sent_before = [min(end, captured_end) for seq, end in seq_end.items() if end - seq_samples[seq] < captured_end]
    boundary = max(sent_before, default=0.0)
    done_at = float("nan")
    for t, acked in sorted(result["acks"]):
        if t >= up_at and seq_end.get(acked, -1) >= boundary:
            done_at = t
            break
    # Gated audio that was still unacknowledged when the link came back = the backlog.
    acked_before = max((s for t, s in result["acks"] if t < up_at), default=-1)
    backlog_samples = sum(n for seq, n in seq_samples.items() if seq > acked_before and seq_end[seq] <= boundary)
    return {"ready_at": ready_at, "done_at": done_at, "backlog_s": backlog_samples / SAMPLE_RATE}

