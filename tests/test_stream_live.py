"""SpeechStream against the local MediSync server over real sockets (both modes, refusals, re-login)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.stream import wire
from agent.stream.client import SpeechStream, State
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit


async def stream_visit(url: str, tokens: LoginTokens, visit: Any, *, settings: Any = None, batch: int = 25,
                       sleep: Any = asyncio.sleep, transcripts: list[wire.TranscriptEvent] | None = None,
                       session_id: str = "visit-1") -> tuple[bool, SpeechStream]:  # fmt: skip
    stream = SpeechStream(settings or fast_settings(), speech_url=url, appointment_id="appt-1", token=tokens,
                          on_transcript=None if transcripts is None else transcripts.append,
                          session_id=session_id, sleep=sleep)  # fmt: skip
    await stream.start()
    for i in range(0, len(visit.events), batch):
        await asyncio.to_thread(stream.feed, visit.events[i : i + batch])
    ok = await stream.finish(final_sample=visit.end)
    return ok, stream


def test_resume_mode_stores_every_frame_once(medisync_server: RunningServer) -> None:
    visit = gated_visit(20.0, seed=1)
    tokens = LoginTokens(medisync_server.login)
    ok, stream = asyncio.run(stream_visit(medisync_server.speech_url, tokens, visit))
    assert ok and stream.stats.state is State.DONE and stream.stats.mode == "resume"
    audio = medisync_server.session_audio("visit-1")
    assert audio.runs == expected_runs(visit.frames)
    assert audio.gaps == [] and audio.closed_last_seq == stream.stats.sent_messages - 1
    assert stream.stats.connections == 1 and tokens.calls == [False]


def test_basic_mode_sends_one_wav_per_utterance(medisync_server: RunningServer) -> None:
    medisync_server.knobs.force_basic = True
    visit = gated_visit(15.0, seed=2)
    transcripts: list[wire.TranscriptEvent] = []
    ok, stream = asyncio.run(
        stream_visit(medisync_server.speech_url, LoginTokens(medisync_server.login), visit, transcripts=transcripts)
    )
    utterances = sum(1 for e in visit.events if type(e).__name__ == "SegmentStart")
    assert ok and stream.stats.mode == "basic"
    assert stream.stats.chunks_sent == utterances and stream.stats.chunks_resent == 0
    assert sorted(medisync_server.basic_chunk_counts().values()) == [1] * utterances
    assert [t.chunk for t in transcripts] == list(range(len(transcripts)))
    assert len(transcripts) == stream.stats.chunks_transcribed == utterances
    assert all(t.start is not None and t.start * 16000 >= visit.frames[0].start for t in transcripts)


def test_401_logs_in_again_and_continues(medisync_server: RunningServer) -> None:
    tokens = LoginTokens(medisync_server.login)
    asyncio.run(tokens(False))
    medisync_server.server.expire_tokens()
    visit = gated_visit(3.0, seed=3)
    ok, _ = asyncio.run(stream_visit(medisync_server.speech_url, tokens, visit))
    assert ok and tokens.calls[-2:] == [False, True]
    assert medisync_server.session_audio("visit-1").runs == expected_runs(visit.frames)


def test_403_stops_dialling(medisync_server: RunningServer) -> None:
    medisync_server.knobs.refuse_handshake(403, count=-1)
    visit = gated_visit(2.0, seed=4)

    async def run() -> SpeechStream:
        stream = SpeechStream(fast_settings(), speech_url=medisync_server.speech_url, appointment_id="a",
                              token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(visit.events)  # capture goes on; it is simply not streamed
        assert not await stream.finish(wait_s=30)
        return stream

    stream = asyncio.run(run())
    assert stream.stats.state is State.FORBIDDEN and stream.stats.connections == 0
    assert stream.stats.reconnects == 0 and stream.stats.retry_delays == []


def test_429_retry_after_is_honoured(medisync_server: RunningServer) -> None:
    medisync_server.knobs.refuse_handshake(429, retry_after=7, count=2)
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    visit = gated_visit(2.0, seed=5)
    ok, stream = asyncio.run(
        stream_visit(medisync_server.speech_url, LoginTokens(medisync_server.login), visit, sleep=fake_sleep)
    )
    assert ok and delays == [7.0, 7.0] and stream.stats.reconnects == 2
    assert medisync_server.session_audio("visit-1").runs == expected_runs(visit.frames)


def test_closed_confirms_what_its_late_acks_would(medisync_server: RunningServer) -> None:
    # Every ack leaves the server 1 s after the audio is stored; `closed` answers `end` at once, before them.
    medisync_server.knobs.ack_delay_s = 1.0
    visit = gated_visit(3.0, seed=6)
    ok, stream = asyncio.run(stream_visit(medisync_server.speech_url, LoginTokens(medisync_server.login), visit,
                                          settings=fast_settings(ack_timeout_s=30.0)))  # fmt: skip
    assert ok and stream.stats.connections == 1
    assert medisync_server.session_audio("visit-1").closed_last_seq == stream.stats.sent_messages - 1
    # What the visit summary prints as "messages sent / acknowledged": equal when the server confirmed everything.
    assert stream.stats.acked_messages == stream.stats.sent_messages > 0
