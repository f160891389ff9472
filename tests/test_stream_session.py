"""Every rule of shared/speech-protocol.md, byte by byte, against the pure session (no socket, no event loop).

Each test feeds server messages (JSON text / binary), audio and the time into :class:`SpeechSession` and checks
the exact messages it hands out to write, and what it says to do with the connection (end, retry, stop).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from agent.audio.dsp import Gap as SourceGap
from agent.audio.types import Frame
from agent.audio.vad import SegmentEnd, SegmentFrame, SegmentStart
from agent.settings import StreamSettings
from agent.stream import wire
from agent.stream.actions import Ended, Retry, Stop
from agent.stream.policy import Failure
from agent.stream.session import SpeechSession
from agent.stream.stats import State

RESUME = wire.RESUME_SUBPROTOCOL
START = wire.Start(session_id="visit-1", appointment_id="appt-7")
START_JSON = {"type": "start", "session_id": "visit-1", "appointment_id": "appt-7", "sample_rate": 16000,
              "encoding": "pcm_s16le", "channels": 1}  # fmt: skip
FRAME = 320
"""Samples per 20 ms gate frame."""


def make(rand: Callable[[], float] = lambda: 0.5, **overrides: Any) -> SpeechSession:
    # the rules below are written for 100 ms live messages (five 20 ms frames), not the default's length
    return SpeechSession(msgspec.structs.replace(StreamSettings(message_ms=100), **overrides), START, rand=rand)


def m(**fields: Any) -> str:
    return json.dumps(fields)


def frames(start: int, count: int, samples: int = FRAME) -> list[Frame]:
    """Contiguous frames whose samples are all distinct (a resend or a shift shows in the bytes)."""
    return [Frame(start + i * samples, struct.pack(f"<{samples}h", *(((start + i * samples + k) % 30000)
                                                                      for k in range(samples))))
            for i in range(count)]  # fmt: skip


def pcm_of(fs: list[Frame]) -> bytes:
    return b"".join(f.pcm for f in fs)


def audio(data: str | bytes | Ended | None) -> tuple[int, int, bytes]:
    assert isinstance(data, bytes), data
    seq, start = struct.unpack_from("<QQ", data)
    return seq, start, data[16:]


def text(data: str | bytes | Ended | None) -> dict[str, Any]:
    assert isinstance(data, str), data
    doc = json.loads(data)
    assert isinstance(doc, dict)
    return doc


def writes(s: SpeechSession, now: float = 0.0) -> list[str | bytes]:
    """Everything the session writes now (each write completing at once)."""
    out: list[str | bytes] = []
    while (x := s.poll(now)) is not None:
        assert not isinstance(x, Ended), x
        out.append(x)
        s.sent(now)
    return out


def open_resume(s: SpeechSession, now: float = 0.0, next_seq: int = 0) -> None:
    assert s.connected(RESUME, now) is None
    assert s.poll(now) is None  # nothing before session_init
    assert s.receive(m(type="session_init", session_id="conn"), now).wake
    assert text(s.poll(now)) == START_JSON  # first message on every connection
    assert s.poll(now) is None  # no audio before ready
    assert s.receive(m(type="ready", session_id="visit-1", next_seq=next_seq), now).wake


def lose(s: SpeechSession, now: float = 0.0) -> Retry | Stop:
    return s.connection_ended(s.peer_closed(1006), now)


# --- handshake -------------------------------------------------------------------------------------------------


def test_session_init_is_awaited_then_start_comes_first() -> None:
    s = make()
    assert s.connected(RESUME, 0.0) is None
    s.feed(frames(0, 5))
    assert s.poll(1.0) is None and s.deadline() == 5.0  # session_init_timeout_s
    s.receive(m(type="session_init", session_id="server-side-id"), 1.0)
    assert text(s.poll(1.0)) == START_JSON  # the client's session_id, not the connection's


def test_without_session_init_the_client_proceeds_after_the_bounded_wait() -> None:
    s = make()
    s.connected(RESUME, 0.0)
    assert s.poll(4.99) is None
    assert text(s.poll(5.0)) == START_JSON


def test_no_ready_within_the_connect_timeout_ends_the_connection() -> None:
    s = make()
    s.connected(RESUME, 0.0)
    s.receive(m(type="session_init"), 0.0)
    s.poll(0.0)
    s.feed(frames(0, 5))
    assert s.poll(9.9) is None and s.deadline() == 10.0
    ended = s.poll(10.0)
    assert isinstance(ended, Ended) and ended.failure is Failure.TRANSIENT
    assert s.poll(10.1) is None  # nothing more is written on a connection being replaced


def test_mode_is_the_first_connections_and_a_switch_is_transient() -> None:
    s = make()
    open_resume(s)
    lose(s)
    ended = s.connected(None, 1.0)
    assert ended is not None and ended.failure is Failure.TRANSIENT and "basic mode" in ended.reason


# --- resume: audio bytes ---------------------------------------------------------------------------------------


def test_audio_message_is_seq_start_then_pcm_little_endian() -> None:
    s = make()
    open_resume(s)
    fs = frames(48000, 10)
    s.feed(fs)
    first, second = writes(s)
    assert first[:16] == (0).to_bytes(8, "little") + (48000).to_bytes(8, "little")
    assert audio(first) == (0, 48000, pcm_of(fs[:5]))  # message_ms 100 = five 20 ms frames
    assert audio(second) == (1, 48000 + 5 * FRAME, pcm_of(fs[5:]))


def test_payload_is_even_and_at_most_one_second() -> None:
    s = make()
    s.feed(frames(0, 200))  # 4 s backlog: replay messages of replay_message_ms (1000)
    open_resume(s)
    sizes = [len(audio(x)[2]) for x in writes(s, 0.0) + writes(s, 0.25) + writes(s, 0.5) + writes(s, 0.75)]
    assert sizes == [32000] * 4


def test_a_jump_in_start_is_gated_silence_and_starts_a_new_message() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 2) + frames(16000, 2))
    assert [audio(x)[:2] for x in writes(s)] == [(0, 0), (1, 16000)]


# --- resume: acknowledgements, ready, resuming ------------------------------------------------------------------


def test_ack_is_cumulative_frees_audio_and_wakes_no_one() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 15))
    assert len(writes(s)) == 3
    got = s.receive(m(type="ack", seq=1), 0.1)
    assert got == type(got)()  # no end, no transcript, no wake-up of the sender
    stats = s.snapshot()
    assert (stats.acked_messages, stats.held_samples) == (2, 5 * FRAME)


def test_unacknowledged_frames_are_resent_byte_identical_from_ready_next_seq() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 15))
    sent = writes(s)
    s.receive(m(type="ack", seq=0), 0.1)
    assert isinstance(lose(s), Retry)
    open_resume(s, 1.0, next_seq=2)  # the server stored 0 and 1 (the ack of 1 was lost with the connection)
    assert writes(s, 1.0) == [sent[2]]
    assert s.snapshot().acked_messages == 2


def test_seq_is_never_reused_across_reconnects() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    writes(s)
    lose(s)
    open_resume(s, 1.0, next_seq=2)
    s.feed(frames(10 * FRAME, 5))
    [x] = writes(s, 1.0)
    assert audio(x)[:2] == (2, 10 * FRAME)


def test_ready_below_what_was_acknowledged_continues_from_there() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    writes(s)
    s.receive(m(type="ack", seq=1), 0.1)
    lose(s)
    open_resume(s, 1.0, next_seq=0)  # the server forgot: nothing left to resend (the upload holds it)
    assert writes(s, 1.0) == []
    s.feed(frames(10 * FRAME, 5))
    assert audio(writes(s, 1.0)[0])[0] == 0  # numbering follows the server's next_seq


@pytest.mark.parametrize("next_seq", [-1, 3, 1000])
def test_ready_claiming_frames_never_written_is_a_protocol_error(next_seq: int) -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    writes(s)  # seq 0 and 1
    lose(s)
    open_resume(s, 1.0, next_seq=next_seq)
    ended = s.poll(1.0)
    assert isinstance(ended, Ended) and ended.protocol_error and ended.failure is Failure.TRANSIENT
    assert isinstance(s.connection_ended(ended, 1.0), Retry)
    stats = s.snapshot()
    assert (stats.protocol_errors, stats.acked_messages, stats.held_samples) == (1, 0, 10 * FRAME)


def test_ack_beyond_what_was_written_is_a_protocol_error_and_frees_nothing() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    writes(s)
    got = s.receive(m(type="ack", seq=2), 0.1)
    assert got.ended is not None and got.ended.protocol_error
    s.feed(frames(10 * FRAME, 5))
    assert s.poll(0.2) is None  # nothing more written on it
    s.receive(m(type="ack", seq=1), 0.2)  # nothing read from it counts any more
    assert s.snapshot().acked_messages == 0


def test_closed_beyond_what_was_written_is_a_protocol_error() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 5))
    writes(s)
    s.finish(5 * FRAME)
    assert text(s.poll(0.1))["type"] == "end"
    got = s.receive(m(type="closed", last_seq=7), 0.2)
    assert got.ended is not None and got.ended.protocol_error
    assert s.snapshot().acked_messages == 0


# --- resume: end and closed ------------------------------------------------------------------------------------


def test_end_follows_the_last_frame_and_is_sent_again_until_closed() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    s.finish(final_sample=10 * FRAME + 800)
    *frames_out, end = writes(s)
    assert len(frames_out) == 2
    assert text(end) == {"type": "end", "last_seq": 1, "final_sample": 10 * FRAME + 800}
    assert s.poll(0.0) is None  # once per connection
    lose(s)
    open_resume(s, 1.0, next_seq=2)
    assert [text(x) for x in writes(s, 1.0)] == [text(end)]  # again after the reconnect
    got = s.receive(m(type="closed", last_seq=1), 1.1)
    assert got.ended == Ended(None, "server confirmed the visit")
    assert s.connection_ended(got.ended, 1.1) == Stop(State.DONE)


def test_end_names_the_last_frame_sent_not_the_last_acknowledged() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 15))
    writes(s)
    s.receive(m(type="ack", seq=0), 0.1)
    s.finish(None)
    assert text(writes(s, 0.2)[-1]) == {"type": "end", "last_seq": 2, "final_sample": 15 * FRAME}


def test_a_visit_without_audio_ends_with_last_seq_minus_one() -> None:
    s = make()
    open_resume(s)
    s.finish(16000)
    assert [text(x) for x in writes(s)] == [{"type": "end", "last_seq": -1, "final_sample": 16000}]
    assert s.receive(m(type="closed", last_seq=-1), 0.1).ended == Ended(None, "server confirmed the visit")


def test_closed_short_of_the_last_frame_is_not_the_end() -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 10))
    s.finish(None)
    writes(s)
    assert s.receive(m(type="closed", last_seq=0), 0.1).ended is None
    assert s.snapshot().acked_messages == 1  # it confirms storage like an ack


# --- resume: gaps ----------------------------------------------------------------------------------------------


def test_ring_overflow_drops_the_oldest_and_announces_a_gap_in_their_place() -> None:
    s = make(ring_seconds=0.1)  # 1600 samples
    s.feed(frames(0, 10))  # 3200 samples during an outage
    open_resume(s)
    gap, *rest = writes(s)
    assert text(gap) == {"type": "gap", "start": 0, "end": 5 * FRAME, "reason": "ring_overflow"}
    assert [audio(x)[:2] for x in rest] == [(0, 5 * FRAME)]
    assert s.snapshot().dropped_samples == 5 * FRAME


def test_a_gap_is_announced_on_every_connection_until_audio_after_it_is_acked() -> None:
    s = make(ring_seconds=0.1)
    s.feed(frames(0, 10))
    open_resume(s)
    first = writes(s)
    lose(s)
    open_resume(s, 1.0)
    assert writes(s, 1.0) == first  # gap again, then the same frame
    s.receive(m(type="ack", seq=0), 1.1)
    lose(s, 1.2)
    open_resume(s, 2.0, next_seq=1)
    s.feed(frames(10 * FRAME, 5))
    assert [audio(x)[:2] for x in writes(s, 2.0)] == [(1, 10 * FRAME)]


def test_audio_the_source_lost_is_announced_as_a_gap() -> None:
    s = make()
    open_resume(s)
    s.feed([*frames(0, 5), SourceGap(5 * FRAME, 16000), *frames(16000, 5)])
    out = writes(s)
    assert [audio(x)[:2] if isinstance(x, bytes) else text(x) for x in out] == [
        (0, 0), {"type": "gap", "start": 5 * FRAME, "end": 16000, "reason": "ring_overflow"}, (1, 16000)]


# --- resume: liveness and pacing -------------------------------------------------------------------------------


def test_no_ack_progress_while_frames_are_outstanding_ends_the_connection() -> None:
    s = make()
    open_resume(s)
    assert writes(s) == [] and s.deadline() is None  # nothing outstanding: no timer at all
    s.feed(frames(0, 5))
    writes(s, 1.0)
    assert s.deadline() == 11.0  # ack_timeout_s after the write
    s.receive(m(type="ack", seq=0), 4.0)
    assert s.deadline() is None
    s.feed(frames(5 * FRAME, 5))
    writes(s, 5.0)
    assert s.poll(14.9) is None
    ended = s.poll(15.0)
    assert isinstance(ended, Ended) and "no ack progress" in ended.reason


def test_reads_may_wait_only_after_live_audio_once_every_replayed_message_is_acked() -> None:
    """agent.stream.readhold: a backlog's acks are read as they come (the catch-up is seen at once); after live
    audio, with the backlog confirmed, what the server sends may wait for a later block."""
    s = make()
    s.feed(frames(0, 50))  # 1 s waited for the connection: one replay message
    open_resume(s)
    assert audio(s.poll(0.0))[0] == 0 and not s.reads_may_wait()  # replayed audio
    s.sent(0.0)
    s.feed(frames(50 * FRAME, 5))
    assert audio(s.poll(0.1))[:2] == (1, 50 * FRAME) and not s.reads_may_wait()  # live, the backlog's ack still due
    s.sent(0.1)
    s.receive(m(type="ack", seq=0), 0.15)
    s.feed(frames(55 * FRAME, 5))
    assert audio(s.poll(0.2))[0] == 2 and s.reads_may_wait()
    s.sent(0.2)
    assert not s.reads_may_wait()  # nothing handed out


def test_replay_is_paced_at_replay_speed() -> None:
    s = make()
    s.feed(frames(0, 150))  # a 3 s backlog
    open_resume(s)
    assert len(writes(s, 0.0)) == 1  # one replay message (1 s) at once
    assert s.deadline() == pytest.approx(0.25)  # the next second of audio after 1/4 s at 4x
    assert writes(s, 0.2) == []
    assert len(writes(s, 0.25)) == 1
    assert s.snapshot().paced_messages == 2


# --- errors, close codes, unknown messages ---------------------------------------------------------------------


def test_non_retryable_error_ends_the_session() -> None:
    s = make()
    open_resume(s)
    got = s.receive(m(type="error", code="bad_session", message="x", retryable=False), 0.1)
    assert got.ended is not None and got.ended.failure is Failure.FATAL
    assert s.connection_ended(got.ended, 0.1) == Stop(State.FAILED)


@pytest.mark.parametrize(("raw", "floor"), [("7", 7.0), ("1e999", 300.0), ("-5", 0.0), ('"12"', 12.0)])
def test_retryable_error_reconnects_after_retry_after_clamped(raw: str, floor: float) -> None:
    s = make(rand=lambda: 0.0)
    open_resume(s)
    got = s.receive('{"type": "error", "code": 503, "retryable": true, "retry_after": ' + raw + "}", 0.1)
    assert got.ended is not None
    action = s.connection_ended(got.ended, 0.1)
    assert isinstance(action, Retry) and action.delay_s == floor


@pytest.mark.parametrize(("code", "failure"), [(4403, Failure.FORBIDDEN), (4409, Failure.TRANSIENT),
                                               (4001, Failure.TRANSIENT), (1006, Failure.TRANSIENT)])  # fmt: skip
def test_close_codes(code: int, failure: Failure) -> None:
    s = make()
    open_resume(s)
    ended = s.peer_closed(code)
    assert ended.failure is failure
    action = s.connection_ended(ended, 0.1)
    assert action == Stop(State.FORBIDDEN) if code == 4403 else isinstance(action, Retry)


def test_unknown_types_and_fields_are_ignored_unusable_messages_counted_once_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = make()
    open_resume(s)
    s.feed(frames(0, 5))
    writes(s)
    assert s.receive(m(type="novelty", x=1), 0.1) == type(s.receive(m(type="novelty"), 0.1))()
    assert s.receive(m(type="ack", seq=0, extra={"nested": True}), 0.1).ended is None
    with caplog.at_level(logging.DEBUG):
        for junk in (b"\x00binary", "not json", '{"type": "ack", "seq": "zero"}'):
            assert s.receive(junk, 0.2).ended is None
    lose(s)
    assert s.snapshot().acked_messages == 1 and s.snapshot().ignored_messages == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_warning_is_logged_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    s = make()
    open_resume(s)
    with caplog.at_level(logging.WARNING):
        s.receive(m(type="warning", code="slow", message="patient Jane Doe"), 0.1)
    assert "slow" in caplog.text and "Jane" not in caplog.text


def test_resume_transcription_is_on_the_visit_timeline_fields_win() -> None:
    s = make()
    open_resume(s)
    got = s.receive(m(type="transcription", text="[SPEAKER_1 | 12.500 --> 14.000]: good morning"), 0.1)
    assert got.transcript == wire.TranscriptEvent("good morning", "SPEAKER_1", 12.5, 14.0, True)
    got = s.receive(m(type="transcription", text="[SPEAKER_1 | 1.0 --> 2.0]: hi", speaker="DR", start_time=3.0,
                      end_time=4.0, final=False), 0.1)  # fmt: skip
    assert got.transcript == wire.TranscriptEvent("hi", "DR", 3.0, 4.0, False)


# --- reconnect policy ------------------------------------------------------------------------------------------


def refused(status: int, retry_after: float | None = None) -> Ended:
    failure = {401: Failure.UNAUTHORIZED, 403: Failure.FORBIDDEN}.get(status, Failure.TRANSIENT)
    return Ended(failure, f"handshake refused with HTTP {status}", retry_after)


def test_backoff_full_jitter_first_within_250_ms_doubling_capped_at_30_s_never_giving_up() -> None:
    s = make(rand=lambda: 0.999999)
    delays = []
    for _ in range(20):
        action = s.connection_ended(refused(503), 0.0)
        assert isinstance(action, Retry)
        delays.append(action.delay_s)
    assert delays[0] <= 0.25 and delays[1] <= 0.5 and delays[2] <= 1.0
    assert max(delays) <= 30.0 and delays[-1] == pytest.approx(30.0, rel=1e-4)


def test_backoff_resets_only_after_a_connection_stayed_up_and_advanced_the_ack() -> None:
    s = make(rand=lambda: 0.999999)
    for _ in range(6):
        s.connection_ended(refused(503), 0.0)
    open_resume(s, 10.0)
    action = lose(s, 13.0)  # up 3 s but never acked anything: no reset
    assert isinstance(action, Retry) and action.delay_s > 10.0
    open_resume(s, 20.0)
    s.feed(frames(0, 5))
    writes(s, 20.0)
    s.receive(m(type="ack", seq=0), 20.1)
    action = lose(s, 23.0)
    assert isinstance(action, Retry) and action.delay_s <= 0.25


def test_401_logs_in_again_and_dials_at_once_then_backs_off_403_stops_429_honours_retry_after() -> None:
    s = make(rand=lambda: 0.0)
    assert s.connection_ended(refused(401), 0.0) == Retry(0.0, relogin=True, probe=False)
    again = s.connection_ended(refused(401), 0.0)
    assert isinstance(again, Retry) and again.relogin
    assert s.connection_ended(refused(429, retry_after=7.0), 0.0) == Retry(7.0, relogin=False, probe=False)
    assert s.connection_ended(refused(403), 0.0) == Stop(State.FORBIDDEN)


def test_a_link_probe_may_cut_the_wait_only_when_the_host_was_unreachable() -> None:
    s = make()
    unreachable = Ended(Failure.TRANSIENT, "connect failed: ConnectionRefusedError", unreachable=True)
    action = s.connection_ended(unreachable, 0.0)
    assert isinstance(action, Retry) and action.probe
    action = s.connection_ended(refused(503), 0.0)  # the server answered: probing would only hammer it
    assert isinstance(action, Retry) and not action.probe


# --- basic mode ------------------------------------------------------------------------------------------------


def speech(start: int, count: int) -> tuple[list[Frame], list[Any]]:
    fs = frames(start, count)
    return fs, [SegmentStart(start), *(SegmentFrame(f) for f in fs), SegmentEnd(fs[-1].end)]


def open_basic(s: SpeechSession, now: float = 0.0) -> None:
    assert s.connected(None, now) is None
    assert s.receive(m(type="session_init", session_id="c"), now).wake


def wav(data: str | bytes | Ended | None) -> tuple[int, int, int, bytes]:
    assert isinstance(data, bytes)
    riff, size, wave, fmt, _, tag, channels, rate, _, _, bits, dat, n = struct.unpack_from("<4sI4s4sIHHIIHH4sI", data)
    assert (riff, wave, fmt, dat, tag) == (b"RIFF", b"WAVE", b"fmt ", b"data", 1)
    assert (size, n) == (len(data) - 8, len(data) - 44)
    return rate, channels, bits, data[44:]


def test_basic_mode_sends_no_start_and_each_utterance_as_one_complete_wav() -> None:
    s = make()
    open_basic(s)
    fs, events = speech(8000, 10)
    s.feed(events[:5])
    assert writes(s) == []  # an utterance goes out when it ends
    s.feed(events[5:])
    [chunk] = writes(s)
    assert wav(chunk) == (16000, 1, 16, pcm_of(fs))


def test_basic_raw_pcm_option_and_split_at_the_maximum_chunk() -> None:
    s = make(basic_format="pcm", basic_max_chunk_s=0.1)
    open_basic(s)
    fs, events = speech(0, 12)
    s.feed(events)
    assert writes(s) == [pcm_of(fs[:5]), pcm_of(fs[5:10]), pcm_of(fs[10:])]


def test_basic_results_complete_chunks_in_order_on_the_visit_timeline() -> None:
    s = make()
    open_basic(s)
    s.feed(speech(32000, 10)[1] + speech(80000, 10)[1])
    assert len(writes(s)) == 2
    first = s.receive(m(type="transcription", text="[SPEAKER_0 | 0.000 --> 0.150]: hello", timestamp=1.0), 1.0)
    assert first.transcript == wire.TranscriptEvent("hello", "SPEAKER_0", 2.0, 2.15, True, chunk=0)
    second = s.receive(m(type="transcription", text="[SPEAKER_1 | 0.0 --> 0.1]: hi", timestamp=2.0), 1.1)
    assert second.transcript is not None and second.transcript.chunk == 1 and second.transcript.start == 5.0
    s.finish(None)
    assert s.poll(1.2) == Ended(None, "every chunk done")


def test_basic_a_chunk_without_result_is_done_after_its_timeout() -> None:
    s = make(basic_chunk_timeout_s=30.0)
    open_basic(s)
    s.feed(speech(0, 5)[1])
    writes(s, 1.0)
    s.finish(None)
    assert s.poll(30.9) is None and s.deadline() == 31.0
    assert s.poll(31.0) == Ended(None, "every chunk done")
    assert s.snapshot().chunks_timed_out == 1


def test_basic_outstanding_chunks_are_resent_oldest_first_after_a_reconnect() -> None:
    s = make()
    open_basic(s)
    s.feed(speech(0, 5)[1] + speech(16000, 5)[1] + speech(32000, 5)[1])
    sent = writes(s)
    s.receive(m(type="transcription", text="[S | 0.0 --> 0.1]: a", timestamp=1.0), 0.5)
    lose(s, 0.6)
    open_basic(s, 1.0)
    assert writes(s, 1.0) == sent[1:]
    assert s.snapshot().chunks_resent == 2


def test_basic_a_repeated_result_is_dropped() -> None:
    s = make()
    open_basic(s)
    s.feed(speech(0, 5)[1] + speech(16000, 5)[1])
    writes(s)
    result = m(type="transcription", text="[S | 0.0 --> 0.1]: a", timestamp=1.0)
    assert s.receive(result, 0.5).transcript is not None
    assert s.receive(result, 0.6).transcript is None
    assert s.snapshot().duplicates_dropped == 1 and s.snapshot().chunks_transcribed == 1


def test_basic_a_result_with_nothing_outstanding_changes_nothing() -> None:
    s = make()
    open_basic(s)
    assert s.receive(m(type="transcription", text="invented"), 0.1).transcript is None
    assert s.snapshot().unmatched_transcriptions == 1


# --- the sender's one poll per write (issue 11) ----------------------------------------------------------------


def test_more_is_false_only_when_poll_has_nothing() -> None:
    """The sender skips the poll after a write when ``more`` says so: that must never leave a write behind."""
    s = make(message_ms=40)
    open_resume(s)
    checked = 0

    def drain(now: float) -> None:
        nonlocal checked
        while (out := s.poll(now)) is not None:
            assert not isinstance(out, Ended), out
            s.sent(now)
            if not s.more(now):
                assert s.poll(now) is None
                checked += 1
                return

    s.feed([SegmentStart(0), *(SegmentFrame(f) for f in frames(0, 4))])
    drain(0.1)
    s.feed([SourceGap(4 * FRAME, 8 * FRAME), *(SegmentFrame(f) for f in frames(8 * FRAME, 3)), SegmentEnd(11 * FRAME)])
    drain(0.2)  # the gap, then audio: more stays True until both are out
    s.receive(m(type="ack", seq=2), 0.3)
    s.finish(11 * FRAME)
    drain(0.4)  # the rest and ``end``
    assert checked >= 2
    assert s.poll(0.5) is None and not s.more(0.5)


def test_more_reports_an_expired_ack_watchdog() -> None:
    s = make(ack_timeout_s=10.0)
    open_resume(s)
    s.feed(frames(0, 5))
    assert writes(s, 1.0)
    assert not s.more(10.9)
    assert s.more(11.0) and isinstance(s.poll(11.0), Ended)
