"""``--duration`` cuts every output at the same sample (issue 11): the WAV archive, the live stream (what the
server stored) and the stream's ``end.final_sample`` agree, for a cut in the middle of a capture block and of a
frame, and the summary's ``samples`` is that same number.

A real visit (:class:`agent.visit.Visit`) against the local server on loopback; the source is 48 kHz synthetic
noise (so the resampler runs) delivered in 100 ms blocks, every frame classified as speech so the stream carries
the whole timeline. The only spy is on :func:`agent.stream.wire.encode` (to read the ``end`` message as sent).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.account import token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import Credentials, Secret
from agent.archive.upload_queue import UploadQueue
from agent.audio.sources import open_source
from agent.figures import VisitSummary
from agent.settings import AgentSettings, ApiSettings, ArchiveSettings, AudioSettings, StreamSettings, UploadSettings
from agent.stream import wire
from agent.visit import Visit
from tests.plugins.archive import wav_pcm
from tests.plugins.keys import TEST_KEYS
from tests.plugins.server import RunningServer
from tests.plugins.visit import FAST_STREAM

DURATION_S = 1.2345
"""19752 samples at 16 kHz: 12.345 blocks of 100 ms, 61.725 frames of 20 ms."""
CUT = 19752


def test_archive_stream_and_end_agree_to_the_sample_at_a_cut_mid_block(
    medisync_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ends: list[wire.End] = []
    encode = wire.encode

    def spy(message: wire.ClientMessage) -> str:
        if isinstance(message, wire.End):
            ends.append(message)
        return encode(message)

    monkeypatch.setattr(wire, "encode", spy)
    settings = AgentSettings(
        audio=AudioSettings(source="synth:48000:noise=5/5/-20", pace="realtime"),
        api=ApiSettings(api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                        email=medisync_server.email),
        archive=ArchiveSettings(directory=str(tmp_path / "archive")),
        stream=StreamSettings(**FAST_STREAM),  # type: ignore[arg-type]
        upload=UploadSettings(queue_dir=str(tmp_path / "queue")),
    )
    appointment = medisync_server.create_appointment()

    async def main() -> VisitSummary:
        client = MediSyncClient(settings.api, Credentials(medisync_server.email, Secret(medisync_server.password)))
        async with client:
            source = open_source(settings.audio.source, settings.audio, block_frames=4800)
            visit = Visit(settings, appointment_id=appointment, source=source,
                          queue=UploadQueue(settings.upload, keys=TEST_KEYS), token=token_provider(client),
                          duration_s=DURATION_S, is_speech=lambda pcm: True)  # fmt: skip
            return await visit.run()

    summary = asyncio.run(main())
    archived = wav_pcm(summary.record.path)
    assert summary.record.stopped_by == "duration"
    assert summary.record.samples == len(archived) // 2 == CUT
    assert [e.final_sample for e in ends] == [CUT]
    assert summary.stream_confirmed and summary.gated_samples == CUT
    stored = medisync_server.session_audio(summary.session_id)
    assert sum(len(pcm) // 2 for _, pcm in stored.runs) == CUT
    assert b"".join(pcm for _, pcm in sorted(stored.runs)) == archived  # the same samples, not just as many
