"""Issue 13, privacy pause: a visit fed from the bundled dialogue file, paused for 10 s of its timeline in the middle.

Content checks, sample for sample: the archive holds zeros over the paused stretch and exactly the pipeline's
output of the file everywhere else (keep-wall-time, see agent/visit_pause.py); the server stored no sample of the
stretch (its runs end before it and start after it) and got a ``gap`` with reason ``paused`` covering it; while the
pause lasted (inside a speech-server outage through a real TCP proxy, so the send ring held audio all along) the ring
held no frame of it and the voice gate passed none; every transcript's time span lies
outside the pause and over the same audio in the archive as in the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.account import token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import Credentials, Secret
from agent.archive.upload_queue import UploadQueue
from agent.audio.pipeline import PipelineOutput
from agent.audio.sources import FileSource
from agent.audio.vad import SegmentFrame
from agent.audit_log import AuditLog, read_events
from agent.figures import VisitSummary
from agent.settings import AudioSettings
from agent.stream.wire import TranscriptEvent
from agent.visit import Visit
from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import TEST_KEYS
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.visit import proxied_file_visit, sped_up_clock, wav_samples

RATE = 16000
PAUSE_AT_S = 15.0
PAUSE_FOR_S = 10.0


async def wait_for(predicate: object, what: str, deadline_s: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def ring_spans(visit: Visit) -> list[tuple[int, int]]:
    """Timeline spans of the audio the send ring holds now (unsent frames and unacknowledged messages)."""
    assert visit.stream is not None
    ring = visit.stream._session._ring
    return [(f.start, f.end) for f in ring._pending] + [(m.start, m.end) for m in ring._formed]


def test_ten_second_pause_leaves_no_sample_in_archive_server_or_ring(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path, dialogue_pcm: bytes
) -> None:
    settings, proxy = proxied_file_visit(medisync_server, tcp_proxy, tmp_path)
    appointment = medisync_server.create_appointment()
    transcripts: list[TranscriptEvent] = []
    outputs: list[PipelineOutput] = []
    ring_during_pause: list[tuple[int, int]] = []
    audit = AuditLog(tmp_path / "audit", settings.audit)

    async def main() -> tuple[VisitSummary, int, int]:
        client = MediSyncClient(settings.api, Credentials(medisync_server.email, Secret(medisync_server.password)))
        async with client:
            await client.login()
            clock, sleep = sped_up_clock(6.0)
            visit = Visit(settings, appointment_id=appointment, source=FileSource(str(DIALOGUE), pace="realtime",
                          clock=clock, sleep=sleep), queue=UploadQueue(settings.upload, keys=TEST_KEYS),
                          token=token_provider(client), on_transcript=transcripts.append, on_output=outputs.append,
                          audit=audit)  # fmt: skip
            running = asyncio.create_task(visit.run())
            # An outage from 3 s before the pause to 3 s after it: the ring holds audio all through the pause.
            await wait_for(lambda: visit.samples_captured >= (PAUSE_AT_S - 3) * RATE, "the outage's start")
            medisync_server.knobs.refuse_handshake(503, count=-1)
            await asyncio.to_thread(proxy.reset)
            await wait_for(lambda: visit.samples_captured >= PAUSE_AT_S * RATE or running.done(), "mid-visit")
            assert not running.done(), running.result()
            assert visit.pause() and not visit.pause()  # a second pause is refused
            await wait_for(lambda: visit.pause_gate.applied_from is not None, "the pause to take effect")
            start = visit.pause_gate.applied_from
            assert start is not None
            while visit.samples_captured < start + PAUSE_FOR_S * RATE:
                ring_during_pause.extend(ring_spans(visit))
                await asyncio.sleep(0.01)
            assert visit.resume() and not visit.resume()
            await wait_for(lambda: visit.samples_captured >= start + (PAUSE_FOR_S + 3) * RATE, "the outage's end")
            medisync_server.knobs.refuse_handshake(503, count=0)
            summary = await running
            [stretch] = summary.paused
            return summary, stretch.start, stretch.end

    summary, p0, p1 = asyncio.run(main())
    print(f"paused [{p0}, {p1}) = {(p1 - p0) / RATE:.2f} s of a {summary.record.samples / RATE:.1f} s visit")
    assert p0 >= PAUSE_AT_S * RATE and p1 - p0 >= PAUSE_FOR_S * RATE
    assert summary.record.samples == len(dialogue_pcm) // 2  # wall time kept: the timeline is the whole file

    # The archive: zeros over the pause, the file's audio sample for sample everywhere else.
    archive = np.frombuffer(wav_samples(summary.record.path), dtype="<i2")
    expected = np.frombuffer(dialogue_pcm, dtype="<i2")
    assert not archive[p0:p1].any(), "audio of the paused stretch is in the archive"
    assert np.array_equal(archive[:p0], expected[:p0]) and np.array_equal(archive[p1:], expected[p1:])
    assert expected[p0:p1].any()  # there was something to hide

    # The voice gate passed nothing of it, and the ring never held it.
    passed = [(e.frame.start, e.frame.end) for o in outputs for e in o.events if isinstance(e, SegmentFrame)]
    assert passed and not [s for s in passed if s[0] < p1 and s[1] > p0]
    assert ring_during_pause  # the outage kept pre-pause audio in the ring, looked at every 10 ms of the pause
    assert not [s for s in ring_during_pause if s[0] < p1 and s[1] > p0]

    # The server: no stored sample inside the pause, every stored sample equals the archive; the gap announced.
    stored = medisync_server.session_audio(summary.session_id)
    assert stored.runs and summary.stream_confirmed
    for start, pcm in stored.runs:
        end = start + len(pcm) // 2
        assert end <= p0 or start >= p1, f"server holds [{start}, {end}) inside the pause"
        assert np.array_equal(np.frombuffer(pcm, dtype="<i2"), archive[start:end])
    assert [(g.start, g.end, g.reason) for g in stored.gaps] == [(p0, p1, "paused")]

    # Transcript times: outside the pause, over audio the archive holds exactly as the file has it.
    assert transcripts
    for event in transcripts:
        assert event.start is not None and event.end is not None
        t0, t1 = round(event.start * RATE), round(event.end * RATE)
        assert t1 <= p0 + 1 or t0 >= p1 - 1, f"transcript {event.start}-{event.end} s inside the pause"
        assert archive[t0:t1].any() and np.array_equal(archive[t0:t1], expected[t0:t1])

    # The audit trail says when and how long.
    events = [e for e in read_events(tmp_path / "audit").events if e.visit == summary.session_id]
    names = [e.event for e in events]
    assert names == ["consent", "started", "paused", "resumed", "gap", "stopped", "archived"]
    gap = events[4]
    assert (gap.start, gap.end, gap.reason) == (p0, p1, "paused")
    assert events[5].seconds == round((p1 - p0) / RATE, 3)


def test_pause_to_the_end_in_the_pipeline_closes_the_segment_and_announces_the_rest() -> None:
    from agent.audio.pipeline import AudioPipeline
    from agent.audio.types import Block
    from agent.settings import VadSettings
    from agent.visit_pause import PauseGate

    gate = PauseGate()
    pipeline = AudioPipeline(RATE, AudioSettings(), VadSettings(), is_speech=lambda pcm: True, pause=gate)
    tone = (0.3 * np.sin(np.arange(RATE) * 2 * np.pi * 440 / RATE)).astype(np.float32).reshape(-1, 1)
    outs = [pipeline.process(Block(tone, 0.0))]
    gate.request(True)
    assert not gate.request(True)
    outs += [pipeline.process(Block(tone, 1.0)), pipeline.finish()]
    frames = [f for o in outs for f in o.frames]
    events = [e for o in outs for e in o.events]
    gaps = [g for o in outs for g in o.gaps]
    assert [(g.start, g.end, g.reason) for g in gaps] == [(RATE, 2 * RATE, "paused")]
    assert not any(f.pcm.strip(b"\0") for f in frames if f.start >= RATE)
    assert all(f.pcm.strip(b"\0") for f in frames if f.end <= RATE)
    assert sum(f.samples for f in frames) == 2 * RATE  # wall time kept
    ends = [e.end for e in events if type(e).__name__ == "SegmentEnd"]
    assert ends == [RATE]  # the segment open when the pause began ends where it began
    assert not [e for e in events if isinstance(e, SegmentFrame) and e.frame.end > RATE]
    assert [(p.start, p.end) for p in gate.stretches] == [(RATE, 2 * RATE)]
