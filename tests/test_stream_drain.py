"""The end of a visit after an outage: the backlog is replayed and confirmed, not abandoned after a fixed wait
(real sockets, the local server's outage knob)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agent.settings import StreamSettings
from agent.stream.client import SpeechStream, State
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit


def test_a_backlog_that_needs_longer_than_end_timeout_is_confirmed_with_progress(
    medisync_server: RunningServer,
) -> None:
    # 30 s of visit, all of it captured during an outage: at 4x real time the replay alone takes several seconds,
    # far more than the 1 s end_timeout_s that the old fixed wait would have given it.
    settings = fast_settings(end_timeout_s=1.0, replay_speed=4.0, backoff_cap_s=0.3)
    medisync_server.knobs.drop_after(3, connections=1, outage_s=2.0)
    visit = gated_visit(30.0, seed=41)
    reports: list[float] = []

    async def run() -> tuple[bool, SpeechStream, float]:
        stream = SpeechStream(settings, speech_url=medisync_server.speech_url, appointment_id="a",
                              session_id="drain", token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(visit.events)
        started = time.monotonic()
        ok = await stream.finish(final_sample=visit.end, progress=reports.append)
        return ok, stream, time.monotonic() - started

    ok, stream, waited = asyncio.run(run())
    assert ok and stream.stats.state is State.DONE, stream.stats.end_reasons
    assert medisync_server.session_audio("drain").runs == expected_runs(visit.frames)
    gated_s = sum(f.samples for f in visit.frames) / 16000
    assert waited > settings.end_timeout_s and stream.stats.paced_messages > 0
    assert reports and reports == sorted(reports, reverse=True) and reports[0] <= gated_s  # seconds left, shrinking
    print(f"drain: {gated_s:.1f} s gated, confirmed {waited:.1f} s after the end, progress {reports}")


async def finish_during_endless_outage(server: RunningServer, settings: StreamSettings, *,
                                      give_up: bool = False) -> tuple[bool, float]:  # fmt: skip
    """Feed a short visit while the speech server refuses every handshake, then end it: (confirmed, seconds the
    end waited). With ``give_up``, another thread asks the stream to stop waiting (a second Ctrl-C)."""
    server.knobs.refuse_handshake(503, count=-1)  # the server never comes back
    visit = gated_visit(4.0, seed=42)
    stream = SpeechStream(settings, speech_url=server.speech_url, appointment_id="a",
                          token=LoginTokens(server.login))  # fmt: skip
    await stream.start()
    stream.feed(visit.events)
    started = time.monotonic()
    finishing = asyncio.create_task(stream.finish(final_sample=visit.end))
    if give_up:
        await asyncio.sleep(0)  # finish() starts waiting
        await asyncio.to_thread(stream.give_up)
    return await finishing, time.monotonic() - started


def test_without_progress_the_wait_ends_after_what_the_backlog_needs_with_one_warning(
    medisync_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast_settings(end_timeout_s=1.0, replay_speed=50.0, backoff_cap_s=0.3, drain_max_s=300.0)
    ok, waited = asyncio.run(finish_during_endless_outage(medisync_server, settings))
    assert not ok
    assert waited < 30.0  # grace + pending reconnect + backlog / replay_speed, nowhere near drain_max_s
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "not confirmed by the server" in warning and "uploaded recording holds it" in warning


def test_drain_max_s_bounds_the_wait(medisync_server: RunningServer) -> None:
    settings = fast_settings(end_timeout_s=60.0, drain_max_s=1.5)
    ok, waited = asyncio.run(finish_during_endless_outage(medisync_server, settings))
    assert not ok and 1.5 <= waited < 10.0


def test_give_up_stops_the_wait_at_once(medisync_server: RunningServer) -> None:
    settings = fast_settings(end_timeout_s=60.0)
    ok, waited = asyncio.run(finish_during_endless_outage(medisync_server, settings, give_up=True))
    assert not ok and waited < 5.0
