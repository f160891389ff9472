"""A speech server that lies, over real WebSockets on loopback (the local server's lie knobs, agent/server/knobs.py).

For every lie: no audio skipped (what the server stored equals what the voice gate passed: 0 lost, 0 duplicated,
no gap, and nothing counted as acknowledged that was not), no reconnect storm (handshakes during the first 10 s of
the lie, counted by the server, within what the backoff policy allows), no traceback in the logs, and the one
WARNING line a person reads.

The stream draws its full jitter from the middle of the range every time (``rand``), so the policy's bound is
exact; the real reconnect times also include dialling, which only lowers the count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from agent.audit import audit_stream
from agent.server.knobs import LieKind
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.client import SpeechStream, State
from agent.stream.policy import MAX_RETRY_AFTER_S, Failure, ReconnectPolicy
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.stream import LoginTokens, Visit, expected_runs, fast_settings, gated_visit, wait_until

WINDOW_S = 10.0
"""Seconds of lying during which reconnects are counted."""
HALF = 0.5
SETTINGS = fast_settings(backoff_first_s=0.25, backoff_cap_s=4.0)
"""The product's first reconnect delay; a 4 s cap keeps the test short (the bound follows the settings)."""


def policy_bound(settings: StreamSettings, window_s: float, floor_s: float = 0.0) -> int:
    """Most reconnects the contract's backoff allows within ``window_s`` of connections that never make progress:
    full jitter (drawn at HALF) over ``backoff_first_s`` doubling up to ``backoff_cap_s``, never below the
    server's ``floor_s`` (its clamped retry_after). Computed from the settings, not by the code under test."""
    elapsed, count = 0.0, 0
    while True:
        elapsed += max(HALF * min(settings.backoff_cap_s, settings.backoff_first_s * 2**count), floor_s)
        if elapsed > window_s:
            return count
        count += 1


def test_the_bound_is_a_real_limit_and_the_policy_keeps_it() -> None:
    # 0.125 + 0.25 + 0.5 + 1 + 2 + 2 + 2 + 2 = 9.875 s; the next one lands after 10 s. Without the backoff (a
    # retry_after of -5 used as the delay, the old behaviour) the server saw 61 reconnects in one second.
    assert policy_bound(SETTINGS, WINDOW_S) == 8 and policy_bound(SETTINGS, WINDOW_S, floor_s=3.0) == 3
    for retry_after, floor in ((None, 0.0), (-5.0, 0.0), (float("nan"), 0.0), (3.0, 3.0)):
        policy = ReconnectPolicy(SETTINGS, lambda: HALF)
        delays = [policy.on_failure(Failure.TRANSIENT, now=0.0, retry_after=retry_after).delay_s for _ in range(20)]
        expected = [max(HALF * min(4.0, 0.25 * 2**i), floor) for i in range(20)]
        assert delays == expected


@dataclass
class Outcome:
    confirmed: bool
    stream: SpeechStream
    handshakes_in_window: int


def proxied(tcp_proxy: Callable[[str, int], TcpProxy], server: RunningServer) -> TcpProxy:
    target = urlsplit(server.speech_url)
    assert target.hostname is not None and target.port is not None
    return tcp_proxy(target.hostname, target.port)


async def lie_mid_visit(server: RunningServer, proxy: TcpProxy, visit: Visit, session_id: str,
                        lie: Callable[[], None]) -> Outcome:  # fmt: skip
    """Stream half the visit honestly; then the server starts lying and the connection is cut; the rest of the
    visit is fed and the visit ends (``finish``) while the lie goes on for WINDOW_S; then the server is honest."""
    stream = SpeechStream(SETTINGS, speech_url=proxy.url(), appointment_id="a", session_id=session_id,
                          token=LoginTokens(server.login), rand=lambda: HALF)  # fmt: skip
    await stream.start()
    half = len(visit.events) // 2
    stream.feed(visit.events[:half])
    await wait_until(lambda: stream.stats.acked_messages > 0, "the first acks")
    lie()
    started = time.monotonic()
    await asyncio.to_thread(proxy.cut)
    stream.feed(visit.events[half:])
    finishing = asyncio.create_task(stream.finish(final_sample=visit.end))
    await asyncio.sleep(WINDOW_S)  # the measurement window, not a wait for something to happen
    times = list(server.server.speech.handshake_times)
    server.knobs.tell_lie(None)
    server.knobs.refuse_handshake(503, count=0)
    return Outcome(await finishing, stream, sum(1 for t in times if started <= t <= started + WINDOW_S))


def assert_nothing_skipped(server: RunningServer, outcome: Outcome, visit: Visit, session_id: str) -> None:
    stats = outcome.stream.stats
    assert outcome.confirmed and stats.state is State.DONE, stats.end_reasons[-5:]
    audio = server.session_audio(session_id)
    audit = audit_stream(expected_runs(visit.frames), audio.runs)
    assert (audit.lost, audit.duplicated, audit.mismatched, audit.unexpected) == (0, 0, 0, 0)
    assert audio.runs == expected_runs(visit.frames) and audio.gaps == [] and stats.gap_samples == 0
    assert stats.acked_messages == stats.sent_messages  # nothing counted as acknowledged that was not stored


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a log record carries a traceback"
    assert "Traceback" not in caplog.text


def agent_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("agent.stream")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "claim"),
    [("ready_ahead", "ready.next_seq"), ("ack_ahead", "ack of seq"), ("closed_ahead", "closed.last_seq")],
)
def test_a_claim_beyond_what_was_sent_is_caught(
    kind: LieKind, claim: str, medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(12.0, seed=31)
    session = f"lie-{kind}"

    outcome = asyncio.run(lie_mid_visit(medisync_server, proxy, visit, session,
                                        lambda: medisync_server.knobs.tell_lie(kind, amount=1000)))  # fmt: skip

    assert_nothing_skipped(medisync_server, outcome, visit, session)
    assert outcome.stream.stats.protocol_errors >= 1
    assert 1 <= outcome.handshakes_in_window <= policy_bound(SETTINGS, WINDOW_S)
    warnings = [w for w in agent_warnings(caplog) if "broke the protocol" in w]
    assert warnings and all(claim in w and "nothing counted as delivered" in w for w in warnings)
    assert len(warnings) == outcome.stream.stats.protocol_errors  # one line per lie caught
    assert_no_traceback(caplog)


@pytest.mark.slow
@pytest.mark.parametrize(("where", "value"), [("error", "-5"), ("error", '"NaN"'), ("error", '"soon"'), ("error", "0"),
                                              ("header", "-5"), ("header", "nan")])
def test_a_silly_retry_after_causes_no_storm(
    where: str, value: str, medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A retryable ``error`` whose retry_after is the JSON ``value``, or handshakes refused (503) with the header
    ``Retry-After: value``: the jittered backoff still applies."""
    caplog.set_level(logging.INFO)
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(12.0, seed=32)
    knobs = medisync_server.knobs

    def lie() -> None:
        if where == "error":
            knobs.tell_lie("retry_error", retry_after_json=value)
        else:
            knobs.refuse_handshake(503, retry_after=float(value), count=-1)

    outcome = asyncio.run(lie_mid_visit(medisync_server, proxy, visit, "retry-after", lie))

    assert_nothing_skipped(medisync_server, outcome, visit, "retry-after")
    assert 1 <= outcome.handshakes_in_window <= policy_bound(SETTINGS, WINDOW_S)
    expected = "server error 'busy'" if where == "error" else "handshake refused with HTTP 503"
    assert any(expected in r for r in outcome.stream.stats.end_reasons)
    assert_no_traceback(caplog)


@pytest.mark.parametrize("how", ["error", "header"])
def test_a_huge_retry_after_is_clamped(how: str, medisync_server: RunningServer,
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    if how == "error":
        medisync_server.knobs.tell_lie("retry_error", retry_after_json="1e999", connections=1)
    else:
        medisync_server.knobs.refuse_handshake(503, retry_after=1e9, count=1)
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the delay is what is checked; waiting 5 minutes is not
        delays.append(seconds)

    visit = gated_visit(3.0, seed=34)

    async def run() -> tuple[bool, SpeechStream]:
        stream = SpeechStream(SETTINGS, speech_url=medisync_server.speech_url, appointment_id="a", session_id="huge",
                              token=LoginTokens(medisync_server.login), sleep=fake_sleep)  # fmt: skip
        await stream.start()
        stream.feed(visit.events)
        return await stream.finish(final_sample=visit.end), stream

    confirmed, stream = asyncio.run(run())
    assert confirmed and delays == [MAX_RETRY_AFTER_S] == stream.stats.retry_delays
    assert medisync_server.session_audio("huge").runs == expected_runs(visit.frames)
    assert_no_traceback(caplog)


JUNK: tuple[str | bytes, ...] = (
    '{"type":"transcription","text":"x","deep":' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError bait
    '{"type":"ack","seq":"seven"}',  # a known type with a field of the wrong kind
    '{"type":"ready","next_seq":1e999}',
    "this is not JSON",
    "[1, 2, 3]",
    '{"type":"transcription","text":"' + "x" * (wire.MAX_TEXT_BYTES + 1) + '"}',  # over the parse limit
    b"\x00\x01binary from the server",
    '{"type":"a type from the future","x":1}',  # not junk: ignored silently, as the contract says
)


def test_junk_from_the_server_is_ignored_with_one_warning_and_no_traceback(
    medisync_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    medisync_server.knobs.tell_lie("junk", junk=JUNK, connections=1)
    visit = gated_visit(6.0, seed=35)

    async def run() -> tuple[bool, SpeechStream]:
        stream = SpeechStream(SETTINGS, speech_url=medisync_server.speech_url, appointment_id="a",
                              session_id="junk", token=LoginTokens(medisync_server.login))  # fmt: skip
        await stream.start()
        stream.feed(visit.events)
        return await stream.finish(final_sample=visit.end), stream

    confirmed, stream = asyncio.run(run())
    assert confirmed and stream.stats.connections == 1 and stream.stats.reconnects == 0  # the junk cost nothing
    assert stream.stats.ignored_messages == len(JUNK) - 1
    assert medisync_server.session_audio("junk").runs == expected_runs(visit.frames)
    [warning] = agent_warnings(caplog)
    assert "nested deeper than" in warning and "ignored" in warning
    assert len(warning) < 200  # one line, and no message content in it
    assert_no_traceback(caplog)


@pytest.mark.slow
def test_a_message_over_the_socket_limit_ends_the_connection_without_a_storm(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    proxy = proxied(tcp_proxy, medisync_server)
    visit = gated_visit(12.0, seed=36)
    huge = '{"type":"transcription","text":"' + "x" * wire.MAX_MESSAGE_BYTES + '"}'

    outcome = asyncio.run(lie_mid_visit(medisync_server, proxy, visit, "huge-message",
                                        lambda: medisync_server.knobs.tell_lie("junk", junk=(huge,))))  # fmt: skip

    assert_nothing_skipped(medisync_server, outcome, visit, "huge-message")
    assert 1 <= outcome.handshakes_in_window <= policy_bound(SETTINGS, WINDOW_S)
    assert any("over 1048576 bytes" in w for w in agent_warnings(caplog))
    assert_no_traceback(caplog)


# --- basic mode: no acks, so a server can only be caught where its results fit no audio sent -------------------


async def basic_visit(server: RunningServer, visit: Visit, transcripts: list[wire.TranscriptEvent], *,
                      phantoms: int = 0) -> tuple[bool, SpeechStream]:  # fmt: skip
    """Stream a whole visit in basic mode, all at once (many chunks outstanding at a time). With ``phantoms``,
    first wait until that many results arrived before any audio was sent."""
    stream = SpeechStream(SETTINGS, speech_url=server.speech_url, appointment_id="a",
                          token=LoginTokens(server.login), on_transcript=transcripts.append)  # fmt: skip
    await stream.start()
    if phantoms:
        await wait_until(lambda: stream.stats.unmatched_transcriptions == phantoms, "the phantom results")
    stream.feed(visit.events)
    return await stream.finish(final_sample=visit.end), stream


def utterances(visit: Visit) -> int:
    return len(expected_runs(visit.frames))


def assert_one_result_per_chunk_in_order(server: RunningServer, stream: SpeechStream,
                                         transcripts: list[Any], visit: Visit) -> None:  # fmt: skip
    n = utterances(visit)
    assert sorted(server.basic_chunk_counts().values()) == [1] * n  # every utterance reached the server, once
    assert [t.chunk for t in transcripts] == list(range(n))
    stats = stream.stats
    assert stats.chunks_sent == stats.chunks_transcribed == n and stats.chunks_timed_out == 0
    assert stats.connections == 1 and stats.reconnects == 0


def test_basic_results_for_chunks_never_sent_change_nothing(
    medisync_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    medisync_server.knobs.force_basic = True
    medisync_server.knobs.tell_lie("phantom_transcripts", amount=5)
    visit = gated_visit(10.0, seed=37)
    transcripts: list[wire.TranscriptEvent] = []

    confirmed, stream = asyncio.run(basic_visit(medisync_server, visit, transcripts, phantoms=5))

    assert confirmed and stream.stats.unmatched_transcriptions == 5
    assert not any("phantom" in t.words for t in transcripts)
    assert_one_result_per_chunk_in_order(medisync_server, stream, transcripts, visit)
    assert_no_traceback(caplog)


def test_basic_a_flood_of_repeated_results_completes_one_chunk_each(
    medisync_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    medisync_server.knobs.force_basic = True
    medisync_server.knobs.tell_lie("transcript_flood", amount=3)
    visit = gated_visit(15.0, seed=38)
    transcripts: list[wire.TranscriptEvent] = []

    confirmed, stream = asyncio.run(basic_visit(medisync_server, visit, transcripts))

    assert confirmed
    assert_one_result_per_chunk_in_order(medisync_server, stream, transcripts, visit)
    assert stream.stats.duplicates_dropped + stream.stats.unmatched_transcriptions == 3 * utterances(visit)
    assert_no_traceback(caplog)
