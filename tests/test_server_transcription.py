"""Transcription never holds up the speech socket: a recogniser held in its thread by a gate the test opens.

Acks, ``closed``, warnings and upload answers keep flowing while the recogniser is busy; transcripts follow in span
order when it is done, also after a reconnect; a full backlog gets the placeholder; a failing span costs only its
own words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.server import ServerSettings, ServerThread
from agent.server.transcriber import Span, TranscribedSegment
from agent.server.transcription import TranscriptionWorker, TranscriptPipe
from tests.plugins.archive import poll
from tests.plugins.server import DEMO_EMAIL, DEMO_PASSWORD, RunningServer
from tests.test_server_rest import Doctor, speech_then_silence, wav_bytes
from tests.test_server_speech_basic import next_message, open_basic, speech, wav_chunk
from tests.test_server_speech_resume import frame, open_resume, recv_json, tone, wait_ack

GATE_TIMEOUT_S = 60.0


class GatedTranscriber:
    """Blocks in ``transcribe`` until the test opens the gate; its words name the span's first sample."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def transcribe(self, span: Span) -> list[TranscribedSegment]:
        self.calls += 1
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        return [TranscribedSegment("SPEAKER_0", span.start, span.end, f"words from {span.start}")]


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[RunningServer, GatedTranscriber]]:
    recogniser = GatedTranscriber()
    thread = ServerThread(ServerSettings(data_dir=str(tmp_path / "server"), test_hooks=True), transcriber=recogniser)
    thread.server.add_user(DEMO_EMAIL, DEMO_PASSWORD)
    try:
        yield RunningServer(thread, thread.start(), tmp_path / "server"), recogniser
    finally:
        recogniser.gate.set()
        thread.stop()


def test_acks_and_closed_flow_while_the_recogniser_is_busy(gated: tuple[RunningServer, GatedTranscriber]) -> None:
    srv, recogniser = gated
    token, _ = srv.login()
    appointment = srv.create_appointment()

    async def scenario() -> tuple[list[str], list[dict[str, Any]]]:
        ws, _ = await open_resume(srv.speech_url, token, "s-busy", appointment)
        await ws.send(frame(0, 0, tone(16000)))
        await ws.send(frame(1, 32000, tone(4000)))  # a timeline jump closes the first span: to the recogniser
        assert await asyncio.to_thread(recogniser.entered.wait, 30)
        for seq in range(2, 12):  # 0.25 s frames keep coming while the recogniser is held
            await ws.send(frame(seq, 32000 + 4000 * (seq - 1), tone(4000, seed=seq)))
        await wait_ack(ws, 11)
        await ws.send(json.dumps({"type": "end", "last_seq": 11, "final_sample": 32000 + 4000 * 11}))
        before: list[str] = []
        while (message := await recv_json(ws))["type"] != "closed":
            before.append(message["type"])
        assert not recogniser.gate.is_set()  # everything above happened with the recogniser still held
        recogniser.gate.set()
        after = [await recv_json(ws), await recv_json(ws)]
        await ws.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert "transcription" not in before
    assert [(m["type"], m["start_time"]) for m in after] == [("transcription", 0.0), ("transcription", 2.0)]
    assert after[0]["end_time"] == 1.0 and after[1]["end_time"] == pytest.approx(4.75, abs=0.02)
    assert after[0]["text"] == "[SPEAKER_0 | 0.000 --> 1.000]: words from 0"
    segments = srv.server.store.segments(appointment)
    assert [(s.start_s, s.source) for s in segments] == [(0.0, "live"), (2.0, "live")]


def test_transcripts_ready_while_disconnected_follow_the_next_ready(
    gated: tuple[RunningServer, GatedTranscriber],
) -> None:
    srv, recogniser = gated
    token, _ = srv.login()

    async def scenario() -> dict[str, Any]:
        ws, _ = await open_resume(srv.speech_url, token, "s-away")
        await ws.send(frame(0, 0, tone(8000)))
        await ws.send(frame(1, 16000, tone(800)))
        await wait_ack(ws, 1)
        assert await asyncio.to_thread(recogniser.entered.wait, 30)
        await ws.close()  # the connection is gone before the words are ready
        recogniser.gate.set()
        await asyncio.to_thread(poll, lambda: srv.server.speech.undelivered.get("s-away"), "a held transcript")
        again, ready = await open_resume(srv.speech_url, token, "s-away")
        assert ready["next_seq"] == 2
        message = await recv_json(again)
        await again.close()
        return message

    message = asyncio.run(scenario())
    assert message["type"] == "transcription" and message["text"].endswith("words from 0")
    assert not srv.server.speech.undelivered.get("s-away")


def test_basic_mode_keeps_reading_and_answers_chunks_in_order(gated: tuple[RunningServer, GatedTranscriber]) -> None:
    srv, recogniser = gated

    async def scenario() -> list[dict[str, Any]]:
        ws = await open_basic(srv)
        await ws.send(wav_chunk(speech(1.0)))
        await ws.send(wav_chunk(speech(0.5, lead_silence_s=0.5)))
        assert await asyncio.to_thread(recogniser.entered.wait, 30)
        await ws.send(b"RIFF\x10\x00\x00\x00WAVEjunk")  # answered at once although the recogniser is held
        first = await next_message(ws)
        recogniser.gate.set()
        received = [first, await next_message(ws), await next_message(ws)]
        await ws.close()
        return received

    warning, one, two = asyncio.run(scenario())
    assert warning["type"] == "warning"
    assert one["text"] == "[SPEAKER_0 | 0.000 --> 1.000]: words from 0"
    assert two["text"] == "[SPEAKER_0 | 0.500 --> 1.000]: words from 8000"


def test_an_upload_is_answered_before_its_transcription(gated: tuple[RunningServer, GatedTranscriber]) -> None:
    srv, recogniser = gated
    doc = Doctor(srv)
    appointment = doc.appointment()
    uploaded = doc.upload(appointment, wav_bytes(speech_then_silence()))
    assert uploaded.status_code == 200
    assert recogniser.entered.wait(30) and not recogniser.gate.is_set()
    assert doc.call("GET", f"/transcriptions/{appointment}").json()["transcription"] == []
    recogniser.gate.set()
    poll(lambda: bool(doc.call("GET", f"/transcriptions/{appointment}").json()["transcription"]), "the transcript")
    [segment] = doc.call("GET", f"/transcriptions/{appointment}").json()["transcription"]
    assert segment["text"] == "words from 0" and segment["source"] == "recording"


def span(start: int, seconds: float = 1.0) -> Span:
    return Span(start, bytes(int(seconds * 16000) * 2))


def test_a_full_backlog_gets_the_placeholder_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    recogniser = GatedTranscriber()

    async def scenario() -> list[str]:
        worker = TranscriptionWorker("auto", transcriber=recogniser, max_backlog=2)
        await worker.start()
        try:
            futures = [worker.submit(span(16000 * i)) for i in range(4)]
            assert [f.done() for f in futures] == [False, False, True, True]
            assert worker.backlog == 2 and worker.overflowed == 2
            recogniser.gate.set()
            results = await asyncio.gather(*futures)
            assert worker.backlog == 0
            return [segments[0].text for segments in results]
        finally:
            recogniser.gate.set()
            worker.stop()

    with caplog.at_level(logging.WARNING, logger="agent.server.transcription"):
        texts = asyncio.run(scenario())
    assert texts == ["words from 0", "words from 16000", "[speech 2.000-3.000 s]", "[speech 3.000-4.000 s]"]
    assert [r.getMessage().startswith("transcription backlog full") for r in caplog.records] == [True, True]


def test_a_failing_recogniser_costs_one_span_its_words(caplog: pytest.LogCaptureFixture) -> None:
    class FailsOnce:
        def __init__(self) -> None:
            self.failed = False

        def transcribe(self, s: Span) -> list[TranscribedSegment]:
            if not self.failed:
                self.failed = True
                raise RuntimeError("decoder fell over")
            return [TranscribedSegment("SPEAKER_0", s.start, s.end, "fine")]

    async def scenario() -> list[str]:
        worker = TranscriptionWorker("auto", transcriber=FailsOnce())
        await worker.start()
        try:
            return [(await worker.submit(span(i * 16000)))[0].text for i in range(2)]
        finally:
            worker.stop()

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == ["[speech 0.000-1.000 s]", "fine"]
    assert any("recogniser failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_the_pipe_delivers_in_submission_order_and_never_waits_in_push() -> None:
    async def scenario() -> list[int]:
        delivered: list[int] = []

        async def deliver(_: list[TranscribedSegment], n: int) -> None:
            delivered.append(n)

        loop = asyncio.get_running_loop()
        slow: asyncio.Future[list[TranscribedSegment]] = loop.create_future()
        ready: asyncio.Future[list[TranscribedSegment]] = loop.create_future()
        ready.set_result([])
        pipe: TranscriptPipe[int] = TranscriptPipe(deliver)
        await pipe.push([(slow, 1), (ready, 2)])
        assert delivered == []  # 2 is ready but waits for 1: order is kept, and push did not wait for 1
        slow.set_result([])
        await pipe.settled()
        done: asyncio.Future[list[TranscribedSegment]] = loop.create_future()
        done.set_result([])
        await pipe.push([(done, 3)])
        assert delivered == [1, 2, 3]  # a result already done goes out before push returns
        return delivered

    asyncio.run(scenario())
