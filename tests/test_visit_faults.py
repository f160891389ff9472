"""Whole visits through :class:`agent.visit.Visit` against the local server, with faults on real sockets.

The source is a WAV file paced by a clock that runs faster than real time, so minutes of visit take seconds while
capture, archive and stream still run concurrently. Every check is content: what the server stored from the live
stream is compared sample for sample, at the same timeline indices, with what the voice gate passed and with the
WAV archive; the uploaded recording is compared byte for byte with the archive.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from agent.account import token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import Credentials, Secret
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.archive.upload_runner import drain
from agent.audio.pipeline import PipelineOutput
from agent.audio.sources import FileSource
from agent.audio.types import Block
from agent.audio.vad import SegmentFrame
from agent.audit import audit_stream
from agent.figures import VisitSummary
from agent.settings import AgentSettings, ApiSettings, ArchiveSettings, AudioSettings, StreamSettings, UploadSettings
from agent.stream.client import State
from agent.visit import Visit
from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import TEST_KEYS, uploaded_bytes
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.visit import FAST_STREAM, looped_dialogue, sped_up_clock, stored_recording, wait_for, wav_samples


@dataclass
class Harness:
    server: RunningServer
    proxy: TcpProxy
    root: Path
    gated: list[tuple[int, bytes]] = field(default_factory=list)

    def settings(self, **stream: object) -> AgentSettings:
        return AgentSettings(
            audio=AudioSettings(source=f"file:{DIALOGUE}"),
            api=ApiSettings(api_url=self.server.api_url, speech_url=self.proxy.url(), email=self.server.email),
            archive=ArchiveSettings(directory=str(self.root / "archive")),
            stream=StreamSettings(**{**FAST_STREAM, **stream}),  # type: ignore[arg-type]
            upload=UploadSettings(queue_dir=str(self.root / "queue"), backoff_first_s=0.1, backoff_cap_s=0.5),
        )

    def client(self, settings: AgentSettings) -> MediSyncClient:
        return MediSyncClient(settings.api, Credentials(self.server.email, Secret(self.server.password)))

    def collect(self, out: PipelineOutput) -> None:
        self.gated.extend((e.frame.start, e.frame.pcm) for e in out.events if isinstance(e, SegmentFrame))

    def visit(self, settings: AgentSettings, client: MediSyncClient, wav: Path, speed: float) -> Visit:
        clock, sleep = sped_up_clock(speed)
        source = FileSource(str(wav), pace="realtime", clock=clock, sleep=sleep)
        queue = UploadQueue(settings.upload, keys=TEST_KEYS)
        return Visit(settings, appointment_id=self.appointment, source=source, queue=queue,
                     token=token_provider(client), on_output=self.collect)  # fmt: skip

    @property
    def appointment(self) -> str:
        if not hasattr(self, "_appointment"):
            self._appointment = self.server.create_appointment()
        return self._appointment


@pytest.fixture
def harness(medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path) -> Harness:
    target = urlsplit(medisync_server.speech_url)
    assert target.hostname is not None and target.port is not None
    return Harness(medisync_server, tcp_proxy(target.hostname, target.port), tmp_path)


def assert_server_runs_match_archive(runs: list[tuple[int, bytes]], archive: bytes) -> None:
    for start, pcm in runs:
        assert archive[start * 2 : start * 2 + len(pcm)] == pcm, f"stored run at {start} differs from the archive"


async def upload(queue: UploadQueue, client: MediSyncClient, *, force: bool = False) -> ItemState:
    await drain(queue, client, force=force)
    [item] = queue.items()
    return item.state


@pytest.mark.slow
def test_minutes_long_visit_through_twenty_plus_cuts_loses_and_doubles_nothing(harness: Harness) -> None:
    wav = looped_dialogue(harness.root / "long.wav", 4)  # 3 min 13 s of dialogue, about 85 % of it speech
    settings = harness.settings()
    rng = random.Random(20261121)
    cuts = 0

    async def main() -> tuple[VisitSummary, ItemState]:
        nonlocal cuts
        async with harness.client(settings) as client:
            await client.login()
            visit = harness.visit(settings, client, wav, speed=12.0)
            running = asyncio.create_task(visit.run())
            while not running.done():
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                if visit.samples_captured and not running.done():
                    await asyncio.to_thread(harness.proxy.reset if rng.random() < 0.5 else harness.proxy.cut)
                    cuts += 1
            summary = await running
            return summary, await upload(UploadQueue(settings.upload, keys=TEST_KEYS), client)

    summary, state = asyncio.run(main())
    stored = harness.server.session_audio(summary.session_id)
    archive = wav_samples(summary.record.path)
    audit = audit_stream(harness.gated, stored.runs)
    stats = summary.stream
    assert stats is not None
    print(
        f"visit chaos: {cuts} cuts, {stats.reconnects} reconnects, {stats.resent_messages} messages resent, "
        f"{stored.duplicates_ignored} duplicates ignored by the server, {audit.expected_samples} gated samples"
    )
    assert cuts >= 20 and stats.reconnects >= 20
    assert summary.stream_confirmed and stats.state == State.DONE.value
    assert audit.exact and audit.expected_samples == summary.gated_samples > 0  # 0 lost, 0 duplicated
    assert stored.gaps == [] and stats.gap_samples == 0
    assert len(archive) // 2 == summary.record.samples > 190 * 16000  # the whole timeline, gated or not
    assert_server_runs_match_archive(stored.runs, archive)
    assert state is ItemState.DONE
    assert stored_recording(harness.server, harness.appointment) == uploaded_bytes(summary.record.path)


@pytest.mark.slow
def test_outage_longer_than_the_ring_announces_the_gap_and_the_upload_holds_everything(harness: Harness) -> None:
    ring_s = 3.0
    settings = harness.settings(ring_seconds=ring_s)
    outage_start = 0
    gaps: list[tuple[int, int]] = []

    async def main() -> tuple[VisitSummary, ItemState]:
        nonlocal outage_start
        async with harness.client(settings) as client:
            await client.login()
            visit = harness.visit(settings, client, DIALOGUE, speed=8.0)
            running = asyncio.create_task(visit.run())
            await wait_for(lambda: visit.stream is not None and visit.stream.stats.acked_messages > 5, "acks")
            harness.server.knobs.refuse_handshake(503, count=-1)  # MediSync is down: every dial fails
            await asyncio.to_thread(harness.proxy.reset)
            outage_start = visit.gated_samples
            await wait_for(lambda: visit.gated_samples > outage_start + 2 * ring_s * 16000, "the ring to overflow")
            harness.server.knobs.refuse_handshake(503, count=0)
            summary = await running
            assert visit.stream is not None
            gaps.extend(visit.stream.stats.gaps)  # the stream's own list (the summary's figures count its samples)
            return summary, await upload(UploadQueue(settings.upload, keys=TEST_KEYS), client)

    summary, state = asyncio.run(main())
    stats = summary.stream
    assert stats is not None
    stored = harness.server.session_audio(summary.session_id)
    audit = audit_stream(harness.gated, stored.runs)
    announced = [(g.start, g.end) for g in stored.gaps]
    print(f"outage: gaps announced {announced}, {audit.lost} gated samples lost from the live stream")
    assert announced and announced == gaps and stats.gap_samples == sum(e - s for s, e in gaps)
    assert audit.lost > 0 and audit.duplicated == audit.mismatched == audit.unexpected == 0
    # The right indices: the gated samples the server lacks are exactly the gated samples inside the announced
    # gaps, and every gap starts at the start and ends at the end of gated frames.
    gated, held, in_gap = timeline_masks(harness.gated, stored.runs, announced, summary.record.samples)
    assert np.array_equal(gated & ~held, gated & in_gap)
    starts = {s for s, _ in harness.gated}
    ends = {s + len(p) // 2 for s, p in harness.gated}
    assert all(g0 in starts and g1 in ends for g0, g1 in announced)
    assert stats.dropped_samples >= audit.lost
    assert summary.stream_confirmed and stats.state == State.DONE.value
    # The live stream lost audio; the recording did not.
    archive = wav_samples(summary.record.path)
    assert len(archive) // 2 == summary.record.samples
    assert_server_runs_match_archive(stored.runs, archive)
    assert all(archive[s * 2 : s * 2 + len(p)] == p for s, p in harness.gated)
    assert state is ItemState.DONE
    assert stored_recording(harness.server, harness.appointment) == uploaded_bytes(summary.record.path)


def timeline_masks(
    gated: list[tuple[int, bytes]], runs: list[tuple[int, bytes]], gaps: list[tuple[int, int]], length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks over the visit timeline: gated by the VAD, held by the server, inside an announced gap."""
    masks = [np.zeros(length, dtype=bool) for _ in range(3)]
    for mask, spans in zip(masks, ([(s, s + len(p) // 2) for s, p in gated], [(s, s + len(p) // 2) for s, p in runs],
                                   gaps), strict=True):  # fmt: skip
        for start, end in spans:
            mask[start:end] = True
    return masks[0], masks[1], masks[2]


@pytest.mark.slow
def test_403_mid_visit_stops_streaming_but_archive_and_upload_go_on(harness: Harness) -> None:
    settings = harness.settings()
    server = harness.server

    async def main() -> tuple[VisitSummary, ItemState, ItemState]:
        async with harness.client(settings) as client:
            await client.login()
            visit = harness.visit(settings, client, DIALOGUE, speed=8.0)
            running = asyncio.create_task(visit.run())
            await wait_for(lambda: visit.stream is not None and visit.stream.stats.acked_messages > 5, "acks")
            server.server.set_subscription(server.email, False)
            await asyncio.to_thread(harness.proxy.cut)
            assert visit.stream is not None
            await wait_for(lambda: visit.stream is not None and visit.stream.stats.state is State.FORBIDDEN, "403")
            at_403 = visit.samples_captured
            connections = harness.proxy.connections
            summary = await running
            assert harness.proxy.connections == connections  # dialling stopped for the rest of the visit
            assert summary.record.samples > at_403  # capture and archive went on
            queue = UploadQueue(settings.upload, keys=TEST_KEYS)
            blocked = await upload(queue, client)
            server.server.set_subscription(server.email, True)
            return summary, blocked, await upload(queue, client, force=True)

    summary, blocked, after = asyncio.run(main())
    assert summary.stream is not None and summary.stream.state == State.FORBIDDEN.value
    assert not summary.stream_confirmed
    archive = wav_samples(summary.record.path)
    assert len(archive) // 2 == summary.record.samples
    assert all(archive[s * 2 : s * 2 + len(p)] == p for s, p in harness.gated)
    assert (blocked, after) == (ItemState.BLOCKED, ItemState.DONE)
    assert stored_recording(server, harness.appointment) == uploaded_bytes(summary.record.path)


class LossySource(FileSource):
    """The dialogue, with the source reporting 0.5 s lost before one block (as a hand-off overflow or device
    loss would): the timeline must keep that time as silence and the stream must announce it."""

    LOST_AT_BLOCK, LOST_FRAMES = 40, 11025  # about 0.8 s in; 0.5 s at 22.05 kHz

    def __init__(self, path: str, **kw: object) -> None:
        super().__init__(path, **kw)  # type: ignore[arg-type]
        self.blocks = 0

    def read(self) -> Block | None:
        block = super().read()
        self.blocks += 1
        if block is None or self.blocks != self.LOST_AT_BLOCK:
            return block
        return Block(block.samples, block.capture_time, missed=self.LOST_FRAMES)


def test_source_loss_is_archived_as_silence_and_announced_as_gap(harness: Harness) -> None:
    settings = harness.settings()

    async def run() -> VisitSummary:
        async with harness.client(settings) as client:
            clock, sleep = sped_up_clock(20.0)
            source = LossySource(str(DIALOGUE), pace="realtime", clock=clock, sleep=sleep)
            visit = Visit(settings, appointment_id=harness.appointment, source=source,
                          queue=UploadQueue(settings.upload, keys=TEST_KEYS), token=token_provider(client))  # fmt: skip
            return await visit.run()

    summary = asyncio.run(run())
    [lost] = summary.record.gaps
    assert lost.end - lost.start == 8000  # 0.5 s on the 16 kHz timeline
    stored = harness.server.session_audio(summary.session_id)
    assert [(g.start, g.end) for g in stored.gaps] == [(lost.start, lost.end)]
    assert summary.stream is not None and summary.stream.gap_samples == 8000
