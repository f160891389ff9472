"""Speech socket, basic mode (MediSync's documented API), driven by a plain `websockets` client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import wave
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from tests.plugins.server import RunningServer

LINE = re.compile(r"^\[SPEAKER_\d+ \| (\d+\.\d{3}) --> (\d+\.\d{3})\]: (.+)$")


def wav_chunk(pcm: bytes, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def speech(seconds: float, lead_silence_s: float = 0.0) -> bytes:
    t = np.arange(int(seconds * 16000))
    voiced = (np.sin(t * 2 * np.pi * 220 / 16000) * 7000).astype("<i2").tobytes()
    return bytes(int(lead_silence_s * 16000) * 2) + voiced


async def open_basic(srv: RunningServer, offer_resume: bool = False, query: str = "") -> ClientConnection:
    token, _ = srv.login()
    ws = await connect(f"{srv.speech_url}/ws/transcribe{query}",
                       additional_headers={"Authorization": f"Bearer {token}"},
                       subprotocols=["medisync.resume.v1"] if offer_resume else None)
    async with asyncio.timeout(10):
        init = json.loads(await ws.recv())
    assert init["type"] == "session_init"
    return ws


async def next_message(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10):
        return dict(json.loads(await ws.recv()))


def test_chunks_with_speech_get_documented_transcriptions_and_silence_gets_none(medisync_server: RunningServer) -> None:
    silent, voiced = wav_chunk(bytes(16000)), wav_chunk(speech(1.5, lead_silence_s=0.5))

    async def scenario() -> list[dict[str, Any]]:
        ws = await open_basic(medisync_server)
        assert ws.subprotocol is None
        await ws.send(silent)
        await ws.send(voiced)
        await ws.send(speech(1.0))  # raw PCM is accepted too
        received = [await next_message(ws), await next_message(ws)]
        await ws.close()
        return received

    first, second = asyncio.run(scenario())
    assert first["type"] == second["type"] == "transcription"
    match = LINE.match(first["text"])
    assert match and (match[1], match[2]) == ("0.500", "2.000") and match[3] == "[speech 0.500-2.000 s]"
    assert isinstance(first["timestamp"], float) and first["audio_file"].startswith("audio_chunks/")
    assert LINE.match(second["text"])
    sent = medisync_server.basic_transcriptions()
    assert [t["chunk_sha256"] for t in sent] == [hashlib.sha256(voiced).hexdigest(),
                                                 hashlib.sha256(speech(1.0)).hexdigest()]
    assert medisync_server.basic_chunk_counts()[hashlib.sha256(silent).hexdigest()] == 1


def test_unusable_chunks_get_warnings(medisync_server: RunningServer) -> None:
    async def scenario() -> list[dict[str, Any]]:
        ws = await open_basic(medisync_server)
        await ws.send(b"RIFF\x10\x00\x00\x00WAVEjunk")
        await ws.send(wav_chunk(speech(0.5), rate=8000))
        received = [await next_message(ws), await next_message(ws)]
        await ws.close()
        return received

    malformed, wrong_rate = asyncio.run(scenario())
    assert malformed["type"] == wrong_rate["type"] == "warning"
    assert "malformed" in malformed["message"] and "8000" in wrong_rate["message"]


def test_force_basic_knob_and_duplicate_chunks_are_counted(medisync_server: RunningServer) -> None:
    medisync_server.knobs.force_basic = True
    chunk = wav_chunk(speech(1.0))

    async def scenario() -> str | None:
        ws = await open_basic(medisync_server, offer_resume=True)
        for _ in range(2):
            await ws.send(chunk)
            assert (await next_message(ws))["type"] == "transcription"
        await ws.close()
        return ws.subprotocol

    assert asyncio.run(scenario()) is None
    assert medisync_server.basic_chunk_counts() == {hashlib.sha256(chunk).hexdigest(): 2}
    assert len(medisync_server.basic_transcriptions()) == 2
