"""Capture-to-wire latency per stage, for the daemon's probe run (opt-in: ``MEDISYNC_LATENCY_STAGES=1``).

``python -m benchmarks.latency_stages [SECONDS] [PROFILE ...]`` (``low-latency``, ``efficient``, or
``low-latency-20``: 20 ms blocks and messages, the low-latency profile before
issue 11, for comparison) runs the daemon of ``--only daemon`` under
:mod:`benchmarks.daemon_proc` for each profile (a visit of SECONDS, default 30) with extra hooks (wrappers in the
benchmark process only, no agent code changed) and prints, per profile, the median / p95 of each stage of every
sample the probe counts (the same samples and the same capture and wire times as ``capture-to-wire``):

- ``block``: the sample's capture time to its block's callback (its place in the block: 0 .. one block);
- ``handoff``: the callback to the event loop taking the block (``Dsp.process`` entered);
- ``resample``: taking the block to the frame holding the sample leaving the DSP (a later block's when the
  resampler or the framer held it back);
- ``gate``: the frame leaving the DSP to the gate passing it (0 unless look-back: pre-roll and onset frames);
- ``feed``: the gate's decision to the stream being fed (archive write, accounting);
- ``sender``: being fed to the message encoded (the sender task's wake-up, ``stream.message_ms`` packing);
- ``write``: encoded to ``ws.send`` returned (not part of capture-to-wire, which ends at the encoding).

The stages add up to capture-to-wire for every sample (``write`` aside).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent import SAMPLE_RATE

ENV = "MEDISYNC_LATENCY_STAGES"
"""Environment variable that turns the stage hooks on in :mod:`benchmarks.daemon_proc`."""
STAGES = ("block", "handoff", "resample", "gate", "feed", "sender")


class StageProbe:
    """Hooks recording when each block, frame and gate decision passed each stage (monotonic seconds)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[float, int, int, float, float]] = []
        """(callback time, input position, input samples, DSP entered, DSP left) per block."""
        self.emitted: list[tuple[int, int]] = []
        """(timeline start of a frame, index of the block whose DSP call emitted it)."""
        self.decided: list[tuple[int, float]] = []
        """(timeline start of a passed frame, when the gate passed it)."""
        self.fed: list[tuple[int, float]] = []
        """(timeline start of a passed frame, when the stream was fed it)."""
        self.written: list[tuple[int, float]] = []
        """(seq, when ``ws.send`` of it returned)."""
        self.in_rate = 0

    def install(self) -> None:
        from agent.audio.dsp import Dsp
        from agent.audio.vad import SegmentFrame, VadGate
        from agent.stream.client import SpeechStream
        from agent.stream.session import SpeechSession

        dsp_process, push_many, feed, sent = Dsp.process, VadGate.push_many, SpeechStream.feed, SpeechSession.sent
        probe = self
        position = [0]

        def process(dsp: Dsp, block: Any) -> Any:
            t0 = time.monotonic()
            frames = dsp_process(dsp, block)
            t1 = time.monotonic()
            n = len(block.samples) + block.missed
            probe.in_rate = dsp.in_rate
            index = len(probe.blocks)
            probe.blocks.append((block.capture_time + len(block.samples) / dsp.in_rate, position[0], n, t0, t1))
            position[0] += n
            probe.emitted.extend((f.start, index) for f in frames)
            return frames

        def gate(self: VadGate, frames: Any) -> Any:
            events = push_many(self, frames)
            now = time.monotonic()
            probe.decided.extend((e.frame.start, now) for e in events if isinstance(e, SegmentFrame))
            return events

        def fed(self: SpeechStream, events: Any) -> None:
            events = list(events)
            now = time.monotonic()
            probe.fed.extend((e.frame.start, now) for e in events if isinstance(e, SegmentFrame))
            feed(self, events)

        def written(self: SpeechSession, now: float) -> None:
            c = self._conn
            if c is not None and isinstance(c.in_flight, tuple):
                probe.written.append((c.in_flight[0], time.monotonic()))
            sent(self, now)

        Dsp.process = process  # type: ignore[method-assign]
        VadGate.push_many = gate  # type: ignore[method-assign]
        SpeechStream.feed = fed  # type: ignore[method-assign]
        SpeechSession.sent = written  # type: ignore[method-assign]

    def record(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "emitted": self.emitted, "decided": self.decided, "fed": self.fed,
                "written": self.written, "in_rate": self.in_rate}  # fmt: skip


def _lookup(keys: npt.NDArray[np.float64], values: npt.NDArray[np.float64],
            at: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:  # fmt: skip
    """``values`` of the last key <= each of ``at`` (keys sorted)."""
    j = np.clip(np.searchsorted(keys, at, side="right") - 1, 0, len(keys) - 1)
    return values[j]


def _first_times(pairs: list[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    seen: dict[int, float] = {}
    for start, t in pairs:
        seen.setdefault(int(start), float(t))
    keys = np.array(sorted(seen), dtype=np.float64)
    return keys, np.array([seen[int(k)] for k in keys], dtype=np.float64)


def stages(result: dict[str, Any], since: float | None = None,
           lookback: str = "all") -> dict[str, npt.NDArray[np.float64]]:  # fmt: skip
    """Per-sample stage durations in seconds of the samples of :func:`benchmarks.analysis.sample_latencies`;
    ``lookback``: ``all`` samples, ``without`` the gate's look-back samples, or ``only`` those."""
    st = result["stages"]
    frames = np.asarray(result["frames"], dtype=np.float64).reshape(-1, 3)
    blocks = np.asarray(st["blocks"], dtype=np.float64).reshape(-1, 5)
    order = np.argsort(frames[:, 0])
    starts, cts = frames[order, 0], frames[order, 2]
    emitted = np.asarray(st["emitted"], dtype=np.float64).reshape(-1, 2)
    e_order = np.argsort(emitted[:, 0])
    dec_keys, dec_t = _first_times(st["decided"])
    fed_keys, fed_t = _first_times(st["fed"])
    ratio = st["in_rate"] / SAMPLE_RATE
    spans = result.get("lookback") or []
    late = None
    if lookback != "all" and spans:
        late = np.concatenate([np.arange(a, a + n, dtype=np.int64) for a, n in spans])
    out: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in (*STAGES, "total")}
    seen: set[int] = set()
    for t, seq, start, n in result["sends"]:
        if seq in seen:
            continue
        seen.add(seq)
        idx = np.arange(start, start + n, dtype=np.float64)
        captured = _lookup(starts, cts, idx) + (idx - _lookup(starts, starts, idx)) / SAMPLE_RATE
        keep = np.ones(len(idx), dtype=bool)
        if since is not None:
            keep &= captured >= since
        if late is not None:
            keep &= np.isin(idx.astype(np.int64), late) == (lookback == "only")
        idx, captured = idx[keep], captured[keep]
        if not len(idx):
            continue
        b = np.clip(np.searchsorted(blocks[:, 1], idx * ratio, side="right") - 1, 0, len(blocks) - 1).astype(int)
        frame_start = _lookup(starts, starts, idx)
        e = _lookup(emitted[e_order, 0], emitted[e_order, 1], frame_start).astype(int)
        left = blocks[e, 4]
        decided = _lookup(dec_keys, dec_t, frame_start)
        fed = _lookup(fed_keys, fed_t, frame_start)
        parts = {"block": blocks[b, 0] - captured, "handoff": blocks[b, 3] - blocks[b, 0],
                 "resample": left - blocks[b, 3], "gate": decided - left, "feed": fed - decided,
                 "sender": t - fed, "total": t - captured}  # fmt: skip
        for name, values in parts.items():
            out[name].append(values)
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}


def describe(result: dict[str, Any], since: float | None, lookback: str) -> str:
    parts = stages(result, since, lookback)
    cells = [f"{name} {1000 * np.median(v):.1f}/{1000 * np.percentile(v, 95):.1f}" for name, v in parts.items()
             if len(v)]  # fmt: skip
    written = dict(result["stages"]["written"])
    first: dict[int, float] = {}
    for t, seq, _s, _n in result["sends"]:
        first.setdefault(seq, t)
    writes = [written[s] - t for s, t in first.items() if s in written]
    if writes:
        cells.append(f"write {1000 * np.median(writes):.2f}/{1000 * np.percentile(writes, 95):.2f}")
    return "; ".join(cells)


def main(argv: list[str]) -> int:
    import tempfile

    from benchmarks import daemon_bench
    from benchmarks.env import DIALOGUE, server_process, virtual_mic
    from benchmarks.scenarios import COMPARISON_PROFILES, PROFILES

    seconds = float(argv[0]) if argv else 30.0
    names = argv[1:] or list(PROFILES)
    profiles = {**PROFILES, **COMPARISON_PROFILES}
    with tempfile.TemporaryDirectory(prefix="latency-stages-") as tmp, server_process(Path(tmp) / "server") as srv, \
            virtual_mic(48000, 1) as mic:  # fmt: skip
        mic.feed_loop(DIALOGUE)
        env = {**daemon_bench.daemon_env(mic.env), ENV: "1"}
        for name in names:
            work = Path(tmp) / name
            r = daemon_bench.daemon_run(srv, work, env, mic.monitor, profiles[name], seconds, 1.0, traced=True)
            trace = json.loads((work / "trace.json").read_text())
            since = min((t for t, _ in trace["readies"]), default=0.0) + 1.0
            all_ms, path_ms = np.asarray(r["latency_ms"]), np.asarray(r["latency_path_ms"])
            print(
                f"{name}: capture-to-wire p50/p95 {np.median(all_ms):.1f}/{np.percentile(all_ms, 95):.1f} ms, "
                f"without look-back {np.median(path_ms):.1f}/{np.percentile(path_ms, 95):.1f} ms; look-back "
                f"{100 * r['lookback_share']:.1f} % of the timeline; CPU {r['visit']['daemon']:.0f} CPU-s/h"
            )
            sends = trace["sends"]
            seqs = {seq for _t, seq, _s, _n in sends}
            span = sends[-1][0] - sends[0][0] if len(sends) > 1 else 0.0
            print(f"  audio messages: {len(seqs) / span if span else 0.0:.1f}/s, "
                  f"{sum(n for _t, _q, _s, n in sends) / max(1, len(sends)) / 16:.1f} ms each (mean)")  # fmt: skip
            for which in ("all", "without", "only"):
                print(f"  stages, median/p95 ms, {which} look-back: {describe(trace, since, which)}")
            cb = np.asarray(trace["stages"]["blocks"], dtype=np.float64).reshape(-1, 5)[:, 0]
            gaps = np.diff(cb) * 1000
            print(
                f"  callback intervals p5/p50/p95 ms: {np.percentile(gaps, 5):.1f}/{np.median(gaps):.1f}/"
                f"{np.percentile(gaps, 95):.1f}"
            )
            sys.stdout.flush()
    return 0


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
