"""Acks read in the sender's wake-ups (agent/stream/readhold.py) over real loopback: while audio flows the event loop
is not woken for what the server sends, and with audio stopped every read still happens within the hold's bound.

Wake-ups are counted with the loop's own epoll selector: a select that returns at once (something was ready when
the loop asked) is no wake-up; one that had to wait and was ended by a TCP socket is a wake-up for the socket."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from agent.audio.types import Frame
from agent.audio.vad import GateEvent, SegmentEnd, SegmentFrame
from agent.stream import wire
from agent.stream.client import SpeechStream, State
from agent.stream.connection import dial
from agent.stream.link import SpeechLink
from agent.stream.readhold import HOLD_S, READ_EVERY_S, HoldPolicy
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit, wait_until

T = TypeVar("T")
BLOCK_S = 0.05
BLOCK_SAMPLES = 800
BOUND_S = 1.0
"""What the protocol allows a read to wait (the hold itself is :data:`HOLD_S`)."""


class WakeCounter(selectors.EpollSelector):
    """The loop's real selector; counts, while :attr:`counting`, the waits that a TCP socket ended."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.tcp_wakeups = 0
        self._tcp: dict[int, bool] = {}

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        events = super().select(timeout)
        if self.counting and any(self._is_tcp(key.fd) for key, _ in events):
            self.tcp_wakeups += 1
        return events

    def _is_tcp(self, fd: int) -> bool:
        if fd not in self._tcp:
            with socket.socket(fileno=os.dup(fd)) as sock:
                self._tcp[fd] = sock.family in (socket.AF_INET, socket.AF_INET6)
        return self._tcp[fd]


def run_counted(main: Callable[[WakeCounter], Awaitable[T]]) -> T:
    counter = WakeCounter()
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(counter)) as runner:
        return runner.run(main(counter))  # type: ignore[arg-type]


def noise_frames(count: int, start: int = 0, seed: int = 5) -> list[Frame]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        pcm = (rng.standard_normal(BLOCK_SAMPLES) * 6000).clip(-32768, 32767).astype("<i2").tobytes()
        frames.append(Frame(start + i * BLOCK_SAMPLES, pcm))
    return frames


def test_the_hold_policy_renews_rarely_and_releases() -> None:
    policy = HoldPolicy(hold_s=0.5, renew_s=0.25, read_every_s=0.4)
    assert not policy.holding and policy.release_at is None
    assert policy.audio_sent(10.0) and policy.release_at == 10.5 and policy.holding
    assert not policy.audio_sent(10.1) and not policy.audio_sent(10.2)  # still > 0.25 s to go: the timer stays
    assert policy.audio_sent(10.3) and policy.release_at == 10.8
    policy.release()
    assert not policy.holding and policy.release_at is None
    assert policy.audio_sent(11.0) and policy.release_at == 11.5


def test_the_hold_policy_reads_a_few_acks_at_a_time() -> None:
    policy = HoldPolicy(hold_s=0.5, renew_s=0.25, read_every_s=0.4)
    assert policy.read_due(3.0)  # nothing read yet
    policy.was_read(3.0)
    assert not policy.read_due(3.1) and not policy.read_due(3.39) and policy.read_due(3.41)


def test_acks_are_read_in_the_block_wake_ups_and_the_last_within_the_bound(medisync_server: RunningServer) -> None:
    """With blocks flowing every 50 ms (one message, one ack each) the loop is not woken by the socket and the acks
    are read a few at a time, in block wake-ups; once the audio stops, the last ack and the transcription its
    timeline jump closed are read within the bound."""
    frames = noise_frames(81)  # 4 s of flow: a few reads at the read interval
    last = Frame(frames[-1].end + 16000, frames[0].pcm)  # a jump in the timeline closes the server's speech span
    transcripts: list[float] = []

    async def run(counter: WakeCounter) -> tuple[SpeechStream, int, int, int, float, float]:
        loop = asyncio.get_running_loop()
        stream = SpeechStream(fast_settings(), speech_url=medisync_server.speech_url, appointment_id="a",
                              session_id="hold", token=LoginTokens(medisync_server.login),
                              on_transcript=lambda _: transcripts.append(loop.time()))  # fmt: skip
        await stream.start()
        stream.feed(frames[:1])
        await wait_until(lambda: stream.stats.acked_messages == 1, "the first ack")
        counter.counting = True
        reads, acked = 0, stream.stats.acked_messages
        for frame in frames[1:]:  # the recorder's pace: one block per wake-up, fed on the loop
            await asyncio.sleep(BLOCK_S)
            stream.feed([frame])
            reads += stream.stats.acked_messages != acked
            acked = stream.stats.acked_messages
        counter.counting = False
        acked_while_flowing = stream.stats.acked_messages
        stream.feed([last])
        stopped = loop.time()
        await wait_until(lambda: stream.stats.acked_messages == len(frames) + 1 and bool(transcripts), "the rest")
        acked_at = loop.time()
        assert await stream.finish(final_sample=last.end, wait_s=10)
        return stream, counter.tcp_wakeups, reads, acked_while_flowing, acked_at - stopped, transcripts[0] - stopped

    stream, wakeups, reads, acked_while_flowing, ack_wait, transcript_wait = run_counted(run)
    assert wakeups <= 2, f"the socket woke the loop {wakeups} times for {len(frames) - 1} acks"
    flowing_s = (len(frames) - 1) * BLOCK_S
    assert 2 <= reads <= flowing_s / READ_EVERY_S + 2, f"{len(frames) - 1} acks taken in {reads} reads"
    assert acked_while_flowing >= len(frames) - (READ_EVERY_S / BLOCK_S + 2)  # read in time
    assert ack_wait < BOUND_S and transcript_wait < BOUND_S
    assert stream.stats.state is State.DONE and stream.stats.connections == 1
    assert medisync_server.session_audio("hold").runs == expected_runs([*frames, last])


def test_a_server_drop_while_audio_is_held_is_seen_at_once(medisync_server: RunningServer) -> None:
    """The server aborts the connection right after a frame (before its ack): the end of the stream wakes the loop
    whatever the mark, the stream dials again and nothing is lost or doubled."""
    frames = noise_frames(20)
    medisync_server.knobs.drop_after(12)

    async def run(counter: WakeCounter) -> tuple[SpeechStream, float]:
        loop = asyncio.get_running_loop()
        stream = SpeechStream(fast_settings(), speech_url=medisync_server.speech_url, appointment_id="a",
                              session_id="drop", token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(frames[:1])
        await wait_until(lambda: stream.stats.acked_messages == 1, "the first ack")
        for frame in frames[1:12]:
            await asyncio.sleep(BLOCK_S)
            stream.feed([frame])
        stopped = loop.time()  # the 12th frame is out: the server drops the connection; no audio from now on
        await wait_until(lambda: bool(stream.stats.end_reasons), "the drop")
        seen = loop.time() - stopped
        stream.feed(frames[12:])
        assert await stream.finish(final_sample=frames[-1].end, wait_s=10)
        return stream, seen

    stream, seen = run_counted(run)
    assert seen < HOLD_S  # not left for the hold's timer
    assert stream.stats.connections == 2 and stream.stats.state is State.DONE
    assert medisync_server.session_audio("drop").runs == expected_runs(frames)


def test_a_server_ping_is_answered_while_the_microphone_is_stalled(medisync_server: RunningServer) -> None:
    """A websockets server that selects the resume subprotocol pings once the first audio message arrived; no more
    audio comes (the microphone stalled): the pong still goes out within the bound, and the server's close too."""
    token = medisync_server.login()[0]
    pongs: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the one audio message
        loop = asyncio.get_running_loop()
        sent = loop.time()
        waiter = await ws.ping()
        await asyncio.wait_for(waiter, 5.0)
        pongs.append(loop.time() - sent)
        await ws.close()

    async def run() -> tuple[SpeechLink, float]:
        loop = asyncio.get_running_loop()
        async with serve(handler, "127.0.0.1", 0, subprotocols=[wire.RESUME_SUBPROTOCOL],  # type: ignore[list-item]
                         ping_interval=None) as server:  # fmt: skip
            port = server.sockets[0].getsockname()[1]
            link = await dial(f"ws://127.0.0.1:{port}/ws/transcribe", token, fast_settings())
            assert isinstance(link, SpeechLink)
            link.attach(lambda _: None, lambda: None, lambda: None)
            link.send(wire.encode_audio(0, 0, noise_frames(1)[0].pcm), hold_reads=True)
            sent = loop.time()
            await wait_until(link.lost.done, "the server's close", deadline_s=10)
            return link, loop.time() - sent

    link, closed_after = asyncio.run(run())
    assert link.subprotocol == wire.RESUME_SUBPROTOCOL
    assert len(pongs) == 1 and pongs[0] < BOUND_S
    assert closed_after < 2 * BOUND_S and link.close_code == 1000


def test_a_full_gated_visit_is_stored_exactly_with_reads_held(medisync_server: RunningServer) -> None:
    """Gate events at twice the recorder's pace, 100 ms of audio per block, with gated-out pauses both shorter and
    longer than the hold: every frame stored once, in order, on one connection, and the visit confirmed."""
    visit = gated_visit(8.0, seed=44, pause_s=(0.3, 2.0))
    speed = 2.0

    async def run(counter: WakeCounter) -> tuple[SpeechStream, bool]:
        loop = asyncio.get_running_loop()
        stream = SpeechStream(fast_settings(), speech_url=medisync_server.speech_url, appointment_id="a",
                              session_id="gated", token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        began = loop.time()
        for block in _blocks(visit.events, 5):
            first = next((e.frame.start for e in block if isinstance(e, SegmentFrame)), None)
            if first is not None:  # the block's wall time on the visit's timeline
                await asyncio.sleep(max(0.0, began + first / 16000 / speed - loop.time()))
            stream.feed(block)
        return stream, await stream.finish(final_sample=visit.end, wait_s=20)

    stream, ok = run_counted(run)
    assert ok and stream.stats.state is State.DONE and stream.stats.connections == 1
    assert medisync_server.session_audio("gated").runs == expected_runs(visit.frames)


def _blocks(events: list[GateEvent], frames_per_block: int) -> list[list[GateEvent]]:
    """Events cut into blocks as the recorder hands them on: at most ``frames_per_block`` frames, ended at a
    segment's end."""
    blocks: list[list[GateEvent]] = [[]]
    frames = 0
    for event in events:
        blocks[-1].append(event)
        frames += isinstance(event, SegmentFrame)
        if frames == frames_per_block or isinstance(event, SegmentEnd):
            blocks.append([])
            frames = 0
    return [b for b in blocks if b]
