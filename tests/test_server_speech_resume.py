"""Speech socket, resume mode (medisync.resume.v1), driven by a plain `websockets` client over loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import uuid
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.plugins.server import RunningServer

RESUME = "medisync.resume.v1"
TIMEOUT = 10.0


def tone(samples: int, amplitude: int = 8000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28)
    t = np.arange(samples)
    return (np.sin(t * 2 * np.pi * 440 / 16000 + phase) * amplitude).astype("<i2").tobytes()


def frame(seq: int, start: int, pcm: bytes) -> bytes:
    return struct.pack("<QQ", seq, start) + pcm


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                return dict(json.loads(message))


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await recv_json(ws)
        if message["type"] == kind:
            return message


async def open_resume(speech_url: str, token: str, session_id: str,
                      appointment_id: str | None = None) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"{speech_url}/ws/transcribe?session_id={session_id}&sample_rate=16000",
                       additional_headers={"Authorization": f"Bearer {token}"}, subprotocols=[RESUME])
    assert ws.subprotocol == RESUME
    init = await recv_json(ws)
    assert init["type"] == "session_init" and uuid.UUID(init["session_id"])
    await ws.send(json.dumps({"type": "start", "session_id": session_id, "appointment_id": appointment_id,
                              "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}))
    return ws, await recv_type(ws, "ready")


async def wait_ack(ws: ClientConnection, seq: int, seen: list[int] | None = None) -> None:
    while True:
        message = await recv_json(ws)
        if message["type"] == "ack":
            if seen is not None:
                seen.append(message["seq"])
            if message["seq"] >= seq:
                return


async def close_code(ws: ClientConnection) -> int | None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


def test_frames_stored_once_in_order_acked_cumulatively_and_closed(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()
    appointment = medisync_server.create_appointment()
    session = str(uuid.uuid4())
    pcms = [tone(1600, seed=i) for i in range(6)]

    async def scenario() -> list[int]:
        ws, ready = await open_resume(medisync_server.speech_url, token, session, appointment)
        assert ready == {"type": "ready", "session_id": session, "next_seq": 0}
        for seq in range(4):
            await ws.send(frame(seq, seq * 1600, pcms[seq]))
        acks: list[int] = []
        await wait_ack(ws, 3, acks)
        for seq in (1, 2, 3):  # replayed duplicates must be ignored
            await ws.send(frame(seq, seq * 1600, pcms[seq]))
        for seq in (4, 5):
            await ws.send(frame(seq, seq * 1600, pcms[seq]))
        await wait_ack(ws, 5, acks)
        await ws.send(json.dumps({"type": "end", "last_seq": 5, "final_sample": 6 * 1600}))
        closed = await recv_type(ws, "closed")
        assert closed["last_seq"] == 5
        await ws.close()
        return acks

    acks = asyncio.run(scenario())
    assert acks == sorted(acks) and acks[-1] == 5
    audio = medisync_server.session_audio(session)
    assert audio.runs == [(0, b"".join(pcms))]
    assert audio.frames_stored == 6 and audio.next_seq == 6
    assert audio.frames_received == 9 and audio.duplicates_ignored == 3
    assert audio.closed_last_seq == 5


def test_frame_from_the_future_is_refused_with_4409(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()

    async def scenario() -> tuple[int | None, int]:
        ws, _ = await open_resume(medisync_server.speech_url, token, "s-future")
        await ws.send(frame(0, 0, tone(320)))
        await ws.send(frame(2, 640, tone(320)))
        code = await close_code(ws)
        ws2, ready = await open_resume(medisync_server.speech_url, token, "s-future")
        await ws2.close()
        return code, ready["next_seq"]

    code, next_seq = asyncio.run(scenario())
    assert code == 4409
    assert next_seq == 1
    assert medisync_server.session_audio("s-future").frames_stored == 1


def test_second_connection_takes_over_and_old_one_is_closed_with_4001(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()

    async def scenario() -> tuple[int | None, int]:
        old, _ = await open_resume(medisync_server.speech_url, token, "s-takeover")
        await old.send(frame(0, 0, tone(320)))
        await wait_ack(old, 0)
        new, ready = await open_resume(medisync_server.speech_url, token, "s-takeover")
        code = await close_code(old)
        await new.send(frame(1, 320, tone(320, seed=1)))
        await wait_ack(new, 1)
        await new.close()
        return code, ready["next_seq"]

    code, next_seq = asyncio.run(scenario())
    assert code == 4001
    assert next_seq == 1
    assert medisync_server.session_audio("s-takeover").frames_stored == 2


def test_gap_and_timeline_jumps_are_kept_and_transcribed_on_the_visit_timeline(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()
    speech = tone(16000)

    async def scenario() -> list[dict[str, Any]]:
        ws, _ = await open_resume(medisync_server.speech_url, token, "s-gap")
        await ws.send(frame(0, 32000, speech))  # 2.000 s .. 3.000 s
        await ws.send(json.dumps({"type": "gap", "start": 48000, "end": 64000, "reason": "ring_overflow"}))
        await ws.send(frame(1, 80000, speech))  # 5.000 s .. 6.000 s
        await ws.send(json.dumps({"type": "end", "last_seq": 1, "final_sample": 96000}))
        transcriptions = []
        while (message := await recv_json(ws))["type"] != "closed":
            if message["type"] == "transcription":
                transcriptions.append(message)
        await ws.close()
        return transcriptions

    transcriptions = asyncio.run(scenario())
    assert [t["text"] for t in transcriptions] == [
        "[SPEAKER_0 | 2.000 --> 3.000]: [speech 2.000-3.000 s]",
        "[SPEAKER_0 | 5.000 --> 6.000]: [speech 5.000-6.000 s]",
    ]
    assert transcriptions[0]["start_time"] == 2.0 and transcriptions[1]["end_time"] == 6.0
    audio = medisync_server.session_audio("s-gap")
    assert audio.runs == [(32000, speech), (80000, speech)]
    assert [(g.start, g.end, g.reason) for g in audio.gaps] == [(48000, 64000, "ring_overflow")]


def test_handshake_refusals_are_http_statuses(medisync_server: RunningServer) -> None:
    url = f"{medisync_server.speech_url}/ws/transcribe"
    medisync_server.server.add_user("lapsed@example.org", "pw", subscription=False)
    lapsed, _ = medisync_server.login("lapsed@example.org", "pw")
    token, _ = medisync_server.login()

    async def status(headers: dict[str, str]) -> tuple[int, str | None]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=headers, subprotocols=[RESUME])
        response = refused.value.response
        return response.status_code, response.headers.get("Retry-After")

    async def scenario() -> list[tuple[int, str | None]]:
        results = [await status({}), await status({"Authorization": "Bearer not.a.token"}),
                   await status({"Authorization": f"Bearer {lapsed}"})]
        medisync_server.knobs.refuse_handshake(429, retry_after=7)
        results.append(await status({"Authorization": f"Bearer {token}"}))
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"})  # knob was one-shot
        await ws.close()
        medisync_server.server.expire_tokens()
        results.append(await status({"Authorization": f"Bearer {token}"}))
        return results

    assert asyncio.run(scenario()) == [(401, None), (401, None), (403, None), (429, "7"), (401, None)]


def test_drop_knob_cuts_after_storing_and_resume_continues_at_next_seq(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()
    pcms = [tone(800, seed=i) for i in range(5)]
    medisync_server.knobs.drop_after(3)

    async def scenario() -> int:
        ws, _ = await open_resume(medisync_server.speech_url, token, "s-drop")
        for seq in range(5):
            try:
                await ws.send(frame(seq, seq * 800, pcms[seq]))
            except ConnectionClosed:
                break
        await close_code(ws)
        ws2, ready = await open_resume(medisync_server.speech_url, token, "s-drop")
        for seq in range(ready["next_seq"], 5):
            await ws2.send(frame(seq, seq * 800, pcms[seq]))
        await wait_ack(ws2, 4)
        await ws2.close()
        return int(ready["next_seq"])

    assert asyncio.run(scenario()) == 3
    assert medisync_server.session_audio("s-drop").runs == [(0, b"".join(pcms))]


def test_withheld_acks_store_audio_without_acknowledging(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()
    medisync_server.knobs.withhold_acks = True

    async def scenario() -> list[str]:
        ws, _ = await open_resume(medisync_server.speech_url, token, "s-silent")
        await ws.send(frame(0, 0, tone(320)))
        await ws.send(json.dumps({"type": "end", "last_seq": 0, "final_sample": 320}))
        kinds = []
        while (message := await recv_json(ws))["type"] != "closed":
            kinds.append(message["type"])
        await ws.close()
        return kinds

    assert "ack" not in asyncio.run(scenario())
    assert medisync_server.session_audio("s-silent").frames_stored == 1


@pytest.mark.slow
def test_next_seq_survives_a_kill_9_restart(server_process: Any) -> None:
    proc = server_process()
    token, _ = proc.login()
    pcms = [tone(1600, seed=i) for i in range(4)]

    async def first() -> None:
        ws, _ = await open_resume(proc.urls.speech_url, token, "s-restart")
        for seq in range(3):
            await ws.send(frame(seq, seq * 1600, pcms[seq]))
        await wait_ack(ws, 2)

    async def second() -> int:
        ws, ready = await open_resume(proc.urls.speech_url, token, "s-restart")
        await ws.send(frame(3, 3 * 1600, pcms[3]))
        await wait_ack(ws, 3)
        await ws.close()
        return int(ready["next_seq"])

    asyncio.run(first())
    proc.restart(kill=True)
    assert asyncio.run(second()) == 3  # the token also survives the restart (signing key persisted)
    stored = proc.inspect_session("s-restart")
    assert [(r["start"], r["samples"]) for r in stored["runs"]] == [(0, 6400)]
    assert base64.b64decode(stored["runs"][0]["pcm_b64"]) == b"".join(pcms)


def test_frames_still_arriving_on_a_taken_over_connection_are_ignored(medisync_server: RunningServer) -> None:
    token, _ = medisync_server.login()
    stale, fresh = tone(320, seed=1), tone(320, seed=2)

    async def scenario() -> None:
        old, _ = await open_resume(medisync_server.speech_url, token, "s-stale")
        new, ready = await open_resume(medisync_server.speech_url, token, "s-stale")
        assert ready["next_seq"] == 0
        with contextlib.suppress(ConnectionClosed):  # if the close arrived first, nothing can be stored either
            await old.send(frame(0, 0, stale))
        await new.send(frame(0, 0, fresh))
        await wait_ack(new, 0)
        await new.close()

    asyncio.run(scenario())
    audio = medisync_server.session_audio("s-stale")
    assert audio.runs == [(0, fresh)] and audio.duplicates_ignored == 0
