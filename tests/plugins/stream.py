"""Helpers for speech-stream tests (owner: H-stream): synthetic gated audio, a login token provider, a runner.

gated_visit(seconds, seed) -> Visit(events, frames)   gate events with speech bursts and gated-out silence
LoginTokens(login)                                    async token provider; records calls (force flags)
stored_matches(session_audio, frames)                 server-stored runs equal the fed frames exactly
fast_settings(**overrides)                            StreamSettings with short timers for loopback tests
await feed_paced(stream, visit, speed)                feed gate events in batches at speed x real time
await wait_until(predicate, what)                     poll with a deadline (no fixed sleeps)
await cut_while_feeding(proxy, feeder, rng, min_cuts, pause_s)   cut/reset at random moments while feeding
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentEnd, SegmentFrame, SegmentStart
from agent.settings import StreamSettings

FRAME_SAMPLES = 320


@dataclass
class Visit:
    events: list[GateEvent] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    end: int = 0
    """Timeline index one past the last captured sample (gated or not)."""


def gated_visit(seconds: float, seed: int = 0, *, burst_s: tuple[float, float] = (0.6, 4.0),
                pause_s: tuple[float, float] = (0.2, 2.0)) -> Visit:  # fmt: skip
    """Loud noise bursts ("speech") separated by gated-out pauses, as the voice gate would pass them."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    visit = Visit()
    t = 0
    total = int(seconds * 16000)
    while t < total:
        t += int(rng.uniform(*pause_s) * 16000) // FRAME_SAMPLES * FRAME_SAMPLES
        count = max(1, int(rng.uniform(*burst_s) * 50))
        visit.events.append(SegmentStart(t))
        for _ in range(count):
            pcm = (noise.standard_normal(FRAME_SAMPLES) * 6000).clip(-32768, 32767).astype("<i2").tobytes()
            frame = Frame(t, pcm)
            visit.frames.append(frame)
            visit.events.append(SegmentFrame(frame))
            t += FRAME_SAMPLES
        visit.events.append(SegmentEnd(t))
    visit.end = t + 16000
    return visit


def expected_runs(frames: list[Frame]) -> list[tuple[int, bytes]]:
    runs: list[tuple[int, bytearray]] = []
    for f in frames:
        if runs and runs[-1][0] + len(runs[-1][1]) // 2 == f.start:
            runs[-1][1].extend(f.pcm)
        else:
            runs.append((f.start, bytearray(f.pcm)))
    return [(s, bytes(p)) for s, p in runs]


class LoginTokens:
    """Token provider over a blocking ``login() -> (token, uid)``; logs in again only when forced."""

    def __init__(self, login: Callable[[], tuple[str, str]]) -> None:
        self._login = login
        self.token: str | None = None
        self.calls: list[bool] = []

    async def __call__(self, force: bool) -> str:
        self.calls.append(force)
        if force or self.token is None:
            self.token = (await asyncio.to_thread(self._login))[0]
        return self.token


def fast_settings(**overrides: object) -> StreamSettings:
    values: dict[str, object] = {
        "backoff_first_s": 0.05, "backoff_cap_s": 0.3, "ack_timeout_s": 2.0, "ping_interval_s": 1.0,
        "ping_timeout_s": 1.0, "session_init_timeout_s": 2.0, "connect_timeout_s": 5.0, "end_timeout_s": 30.0,
        "replay_speed": 50.0,
    }  # fmt: skip
    values.update(overrides)
    return StreamSettings(**values)  # type: ignore[arg-type]


async def feed_paced(stream: Any, visit: Visit, speed: float, batch: int = 25) -> None:
    """Feed a visit's gate events in batches, as the audio thread does, at ``speed`` x real time."""
    for i in range(0, len(visit.events), batch):
        stream.feed(visit.events[i : i + batch])
        await asyncio.sleep(batch * 0.02 / speed)


async def wait_until(predicate: Callable[[], bool], what: str = "the condition", deadline_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not predicate():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def cut_while_feeding(proxy: Any, feeder: asyncio.Task[None], rng: random.Random, *, min_cuts: int,
                            pause_s: tuple[float, float]) -> int:  # fmt: skip
    """Cut or reset (at random) every connection through ``proxy`` at random moments until the feeder is done and
    at least ``min_cuts`` happened; returns the number of cuts."""
    cuts = 0
    while not feeder.done() or cuts < min_cuts:
        await asyncio.sleep(rng.uniform(*pause_s))
        await asyncio.to_thread(proxy.reset if rng.random() < 0.5 else proxy.cut)
        cuts += 1
    await feeder
    return cuts
