"""Replay pacing applies to the backlog of an outage only, never to fresh audio (over real sockets)."""

from __future__ import annotations

import asyncio

from agent.stream.client import SpeechStream
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit, wait_until

DEADLINE_S = 30.0


def test_fresh_audio_is_not_paced(medisync_server: RunningServer) -> None:
    # At 0.001x real time, 30 s of paced audio would take 8 hours: finish() could only succeed if none is paced.
    settings = fast_settings(replay_speed=0.001, end_timeout_s=DEADLINE_S)
    visit = gated_visit(30.0, seed=11)

    async def run() -> tuple[bool, SpeechStream]:
        stream = SpeechStream(settings, speech_url=medisync_server.speech_url, appointment_id="a",
                              token=LoginTokens(medisync_server.login), session_id="fresh")  # fmt: skip
        await stream.start()
        stream.feed(visit.events[:2])  # segment start + one frame: may count as waiting, within the burst
        await wait_until(lambda: stream.stats.acked_messages >= 1, "the first ack")
        for i in range(2, len(visit.events), 50):
            stream.feed(visit.events[i : i + 50])
        return await stream.finish(final_sample=visit.end), stream

    ok, stream = asyncio.run(run())
    assert ok, stream.stats.last_error
    assert stream.stats.paced_messages <= 1 < stream.stats.sent_messages
    assert medisync_server.session_audio("fresh").runs == expected_runs(visit.frames)


def test_backlog_after_a_cut_is_paced(medisync_server: RunningServer) -> None:
    medisync_server.knobs.drop_after(3, connections=1)
    settings = fast_settings(replay_speed=50.0, end_timeout_s=DEADLINE_S)
    visit = gated_visit(20.0, seed=12)

    async def run() -> tuple[bool, SpeechStream]:
        stream = SpeechStream(settings, speech_url=medisync_server.speech_url, appointment_id="a",
                              token=LoginTokens(medisync_server.login), session_id="cut")  # fmt: skip
        await stream.start()
        stream.feed(visit.events)
        return await stream.finish(final_sample=visit.end), stream

    ok, stream = asyncio.run(run())
    assert ok, stream.stats.last_error
    assert stream.stats.reconnects >= 1
    assert stream.stats.paced_messages > 0
    assert medisync_server.session_audio("cut").runs == expected_runs(visit.frames)
