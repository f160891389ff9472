"""The sender's step inside the producer's own call (``Sender.flush``), against the local server over loopback.

A frame fed on the event loop (the recorder's block callback does that) is written to the socket before ``feed``
returns, with no wake-up of the sender task in between; when a write could wait (the socket's buffers are full) the
task takes over, and every frame still reaches the server exactly once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

from agent.audio.types import Frame
from agent.audio.vad import SegmentFrame
from agent.stream.client import SpeechStream, State
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, expected_runs, fast_settings, gated_visit, wait_until


def test_a_frame_fed_on_the_loop_is_written_within_the_feed_call(medisync_server: RunningServer) -> None:
    visit = gated_visit(4.0, seed=11)

    async def run() -> tuple[bool, SpeechStream, list[tuple[bool, int]]]:
        stream = SpeechStream(fast_settings(), speech_url=medisync_server.speech_url, appointment_id="appt-1",
                              token=LoginTokens(medisync_server.login), session_id="flush-1")  # fmt: skip
        await stream.start()
        stream.feed(visit.events[:2])  # a segment's start and first frame: dial, start, ready, the first message
        await wait_until(lambda: stream.stats.acked_messages == 1, "the first message's ack")
        written = []
        for event in visit.events[2:]:
            before = stream.stats.sent_messages
            stream.feed([event])  # no await before the count: the write happened inside feed
            written.append((type(event) is SegmentFrame, stream.stats.sent_messages - before))
        return await stream.finish(final_sample=visit.end), stream, written

    ok, stream, written = asyncio.run(run())
    assert ok and stream.stats.state is State.DONE and stream.stats.connections == 1
    assert written == [(is_frame, 1 if is_frame else 0) for is_frame, _ in written]
    assert sum(n for _, n in written) == len(visit.frames) - 1
    assert medisync_server.session_audio("flush-1").runs == expected_runs(visit.frames)


def test_a_full_socket_hands_the_writes_to_the_task_and_loses_nothing(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    target = urlsplit(medisync_server.speech_url)
    assert target.hostname is not None and target.port is not None
    proxy = tcp_proxy(target.hostname, target.port)
    noise = np.random.default_rng(5)
    frames = [Frame(i * 320, (noise.standard_normal(320) * 6000).astype("<i2").tobytes()) for i in range(20000)]
    settings = fast_settings(ack_timeout_s=60.0, message_ms=1000)

    async def run() -> tuple[bool, SpeechStream, int]:
        stream = SpeechStream(settings, speech_url=proxy.url(), appointment_id="appt-1",
                              token=LoginTokens(medisync_server.login), session_id="flush-2")  # fmt: skip
        await stream.start()
        stream.feed(frames[:1])
        await wait_until(lambda: stream.stats.acked_messages == 1, "the first message's ack")
        await asyncio.to_thread(proxy.stall)  # the proxy stops reading: the kernel's buffers fill, then ours
        stream.feed(frames[1:])  # 400 s of audio (12.8 MB) in one call
        sent_in_feed = stream.stats.sent_messages
        await asyncio.to_thread(proxy.unstall)
        return await stream.finish(), stream, sent_in_feed

    ok, stream, sent_in_feed = asyncio.run(run())
    assert sent_in_feed < 400, "the feed call wrote everything: the socket never filled, the test proves nothing"
    assert ok and stream.stats.connections == 1 and stream.stats.resent_messages == 0
    assert stream.stats.sent_messages == 401
    assert medisync_server.session_audio("flush-2").runs == expected_runs(frames)
