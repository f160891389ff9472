"""Faults on real sockets: connections cut and reset through a TCP proxy, half-open stalls, ring overflow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from agent.stream import wire
from agent.stream.basic import wav_bytes
from agent.stream.client import SpeechStream, State
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer, ServerProcess
from tests.plugins.stream import (
    LoginTokens,
    Visit,
    cut_while_feeding,
    expected_runs,
    fast_settings,
    feed_paced,
    gated_visit,
    wait_until,
)


def proxied(tcp_proxy: Callable[[str, int], TcpProxy], server: RunningServer) -> TcpProxy:
    target = urlsplit(server.speech_url)
    assert target.hostname is not None and target.port is not None
    return tcp_proxy(target.hostname, target.port)


@pytest.mark.slow
def test_resume_survives_many_random_cuts_exactly_once(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(240.0, seed=11)
    rng = random.Random(7)
    cuts = 0

    async def run() -> SpeechStream:
        nonlocal cuts  # set from cut_while_feeding's count
        stream = SpeechStream(fast_settings(), speech_url=proxy.url(), appointment_id="a", session_id="chaos",
                              token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        feeder = asyncio.create_task(feed_paced(stream, visit, speed=20.0))
        cuts = await cut_while_feeding(proxy, feeder, rng, min_cuts=20, pause_s=(0.1, 0.6))
        assert await stream.finish(final_sample=visit.end, wait_s=60)
        return stream

    stream = asyncio.run(run())
    audio = medisync_server.session_audio("chaos")
    assert cuts >= 20 and proxy.connections > 20 and stream.stats.reconnects >= 20
    print(
        f"chaos: {cuts} cuts, {stream.stats.connections} connections, {stream.stats.resent_messages} messages resent,"
        f" {audio.duplicates_ignored} duplicates ignored by the server, {len(audio.runs)} runs stored"
    )
    assert audio.runs == expected_runs(visit.frames)  # 0 lost, 0 duplicated, same timeline indices
    assert audio.gaps == [] and stream.stats.dropped_samples == 0
    assert stream.stats.state is State.DONE


def test_a_returned_link_is_used_at_once_not_after_the_backoff(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    """The link goes down (connections refused) while every reconnect delay is ~990 s; the reachability probe
    (a TCP connect every ``link_probe_s``) finds it back and the stream resumes without sleeping the rest."""
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(8.0, seed=14)
    half = len(visit.events) // 2
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the reconnect waits, recorded; a little real time passes
        slept.append(seconds)
        await asyncio.sleep(0.01)

    async def run() -> SpeechStream:
        settings = fast_settings(backoff_first_s=1000.0, backoff_cap_s=1000.0, link_probe_s=2.0)
        stream = SpeechStream(settings, speech_url=proxy.url(), appointment_id="a", session_id="probe",
                              token=LoginTokens(medisync_server.login), sleep=fake_sleep,
                              rand=lambda: 0.99)  # fmt: skip
        await stream.start()
        stream.feed(visit.events[:half])
        await wait_until(lambda: stream.stats.acked_messages > 0)
        proxy.down()
        await wait_until(lambda: stream.stats.link_probes >= 3, "probes failing while the link is down")
        assert stream.stats.probe_cuts == 0
        stream.feed(visit.events[half:])
        proxy.up()
        assert await stream.finish(final_sample=visit.end, wait_s=60)
        return stream

    stream = asyncio.run(run())
    stats = stream.stats
    assert stats.probe_cuts == 1 and stats.retry_delays and min(stats.retry_delays) > 900
    assert sum(slept) < sum(stats.retry_delays)  # a wait was cut short: the probing one
    assert any("connect failed" in reason for reason in stats.end_reasons)
    assert medisync_server.session_audio("probe").runs == expected_runs(visit.frames)


@pytest.mark.slow
def test_half_open_connection_is_replaced(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(20.0, seed=12)
    half = len(visit.events) // 2

    async def run() -> SpeechStream:
        stream = SpeechStream(
            fast_settings(ack_timeout_s=1.0, ping_interval_s=30.0),
            speech_url=proxy.url(),
            appointment_id="a",
            session_id="stall",
            token=LoginTokens(medisync_server.login),
        )
        await stream.start()
        stream.feed(visit.events[:half])
        await wait_until(lambda: stream.stats.acked_messages > 0)
        proxy.stall()  # TCP stays open, nothing gets through: only the ack watchdog can notice
        stream.feed(visit.events[half:])
        await wait_until(lambda: proxy.connections >= 2)
        assert await stream.finish(final_sample=visit.end, wait_s=30)
        return stream

    stream = asyncio.run(run())
    assert any("no ack progress" in reason for reason in stream.stats.end_reasons)
    assert medisync_server.session_audio("stall").runs == expected_runs(visit.frames)


def test_outage_longer_than_the_ring_announces_the_gap(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(12.0, seed=13)
    first = visit.events[: len(visit.events) // 4]
    rest = visit.events[len(visit.events) // 4 :]
    ring_s = 2.0

    async def run() -> SpeechStream:
        settings = fast_settings(ring_seconds=ring_s, backoff_first_s=0.05)
        stream = SpeechStream(settings, speech_url=proxy.url(), appointment_id="a", session_id="outage",
                              token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(first)
        await wait_until(lambda: stream.stats.sent_messages > 0 and stream.stats.acked_messages > 0)
        await wait_until(lambda: stream.stats.held_samples == 0)  # all sent audio acknowledged
        proxy.stall()  # the outage: nothing gets through
        medisync_server.knobs.refuse_handshake(503, count=-1)
        stream.feed(rest)
        await wait_until(lambda: stream.stats.dropped_samples > 0)
        medisync_server.knobs.refuse_handshake(503, count=0)
        proxy.cut()
        assert await stream.finish(final_sample=visit.end, wait_s=30)
        return stream

    stream = asyncio.run(run())
    audio = medisync_server.session_audio("outage")
    fed = {f.start: f.pcm for f in visit.frames}
    stored = {start for start, _ in _frames_of(audio.runs)}
    lost = sorted(set(fed) - stored)
    assert lost, "the outage was meant to overflow the ring"
    gaps = [(g.start, g.end) for g in audio.gaps]
    assert gaps == stream.stats.gaps
    assert all(any(s <= start < e for s, e in gaps) for start in lost)  # every lost frame announced
    assert not any(s <= start < e for s, e in gaps for start in stored)  # nothing stored is called lost
    assert all(pcm == fed[start] for start, pcm in _frames_of(audio.runs))
    # What the server holds is exactly the newest ring_seconds of audio plus what it had before the outage.
    assert stream.stats.gap_samples == sum(len(fed[s]) // 2 for s in lost)


def _frames_of(runs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(start + i // 2, pcm[i : i + 640]) for start, pcm in runs for i in range(0, len(pcm), 640)]


@pytest.mark.slow
def test_server_killed_and_restarted_resumes_at_next_seq(server_process: Callable[..., ServerProcess]) -> None:
    proc = server_process()
    assert proc.urls is not None
    visit = gated_visit(40.0, seed=14)

    async def run() -> SpeechStream:
        assert proc.urls is not None
        stream = SpeechStream(fast_settings(backoff_cap_s=0.5), speech_url=proc.urls.speech_url, appointment_id="a",
                              session_id="killed", token=LoginTokens(proc.login))  # fmt: skip
        await stream.start()
        # Audio before, during and after the outage, in that order whatever the machine's speed (under arm64
        # emulation a paced feeder can be done before a kill and restart are).
        third = len(visit.events) // 3
        before, during, after = (Visit(events=visit.events[a:b]) for a, b in ((0, third), (third, 2 * third),
                                                                               (2 * third, None)))  # fmt: skip
        feeder = asyncio.create_task(feed_paced(stream, before, speed=10.0))
        # Not a message count: how audio is cut into messages depends on timing (fed before the first `ready`,
        # it is replayed in 1 s messages).
        await wait_until(lambda: stream.stats.acked_messages > 0, "the server to store some audio")
        await asyncio.to_thread(proc.kill)  # kill -9 while audio flows (the feeder may still be feeding)
        await feeder
        await feed_paced(stream, during, speed=10.0)  # captured while the server is down
        await asyncio.to_thread(proc.start)  # same port, same data
        await feed_paced(stream, after, speed=10.0)
        assert await stream.finish(final_sample=visit.end, wait_s=60)
        return stream

    stream = asyncio.run(run())
    session = proc.inspect_session("killed")
    runs = [(r["start"], base64.b64decode(r["pcm_b64"])) for r in session["runs"]]
    assert runs == expected_runs(visit.frames)
    assert session["gaps"] == [] and stream.stats.connections >= 2


@pytest.mark.slow
def test_basic_mode_through_cuts_loses_and_doubles_nothing(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    medisync_server.knobs.force_basic = True
    proxy = proxied(tcp_proxy, medisync_server)
    proxy.delay_s = 0.1  # results take a while: cuts catch chunks outstanding
    visit = gated_visit(90.0, seed=15)
    rng = random.Random(8)
    transcripts: list[wire.TranscriptEvent] = []
    cuts = 0

    async def run() -> SpeechStream:
        nonlocal cuts  # set from cut_while_feeding's count
        stream = SpeechStream(
            fast_settings(),
            speech_url=proxy.url(),
            appointment_id="a",
            token=LoginTokens(medisync_server.login),
            on_transcript=transcripts.append,
        )
        await stream.start()
        feeder = asyncio.create_task(feed_paced(stream, visit, speed=15.0))
        cuts = await cut_while_feeding(proxy, feeder, rng, min_cuts=10, pause_s=(0.1, 0.5))
        assert await stream.finish(final_sample=visit.end, wait_s=60)
        return stream

    stream = asyncio.run(run())
    utterances = [pcm for _, pcm in expected_runs(visit.frames)]
    counts = medisync_server.basic_chunk_counts()
    expected = [hashlib.sha256(wav_bytes(pcm)).hexdigest() for pcm in utterances]
    assert set(counts) == set(expected)  # every chunk arrived, and every chunk is one whole utterance
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= stream.stats.chunks_resent and stream.stats.chunks_resent > 0
    assert [t.chunk for t in transcripts] == list(range(len(utterances)))  # one each, in order, none doubled
    assert stream.stats.chunks_timed_out == 0
    print(
        f"basic chaos: {cuts} cuts, {stream.stats.chunks_resent} chunks resent, {duplicates} seen twice by the server"
    )


@pytest.mark.slow
def test_basic_mode_half_open_is_caught_by_keepalive(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    medisync_server.knobs.force_basic = True
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(10.0, seed=16)
    half = len(visit.events) // 2
    transcripts: list[wire.TranscriptEvent] = []

    async def run() -> SpeechStream:
        settings = fast_settings(ping_interval_s=0.5, ping_timeout_s=0.5)
        stream = SpeechStream(
            settings,
            speech_url=proxy.url(),
            appointment_id="a",
            token=LoginTokens(medisync_server.login),
            on_transcript=transcripts.append,
        )
        await stream.start()
        stream.feed(visit.events[:half])
        await wait_until(lambda: stream.stats.chunks_transcribed > 0)
        proxy.stall()  # no acks exist in basic mode: only the missing pongs reveal the dead connection
        stream.feed(visit.events[half:])
        await wait_until(lambda: proxy.connections >= 2)
        assert await stream.finish(final_sample=visit.end, wait_s=30)
        return stream

    stream = asyncio.run(run())
    utterances = len(expected_runs(visit.frames))
    assert [t.chunk for t in transcripts] == list(range(utterances))
    assert stream.stats.connections >= 2
