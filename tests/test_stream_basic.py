"""Basic mode without I/O: chunking by gate segments, attribution of results, timeouts, resends, dedupe."""

from __future__ import annotations

import io
import wave

from agent.audio.types import Frame
from agent.audio.vad import SegmentEnd, SegmentFrame, SegmentStart
from agent.settings import StreamSettings
from agent.stream.basic import BasicOutbox, Chunker, wav_bytes
from agent.stream.wire import Transcription

FRAME = 320


def seg(start: int, count: int) -> list[SegmentStart | SegmentFrame | SegmentEnd]:
    frames = [Frame(start + i * FRAME, bytes([i % 256]) * FRAME * 2) for i in range(count)]
    return [SegmentStart(start), *(SegmentFrame(f) for f in frames), SegmentEnd(start + count * FRAME)]


def test_wav_bytes_is_a_valid_wav() -> None:
    pcm = bytes(range(200)) * 4
    with wave.open(io.BytesIO(wav_bytes(pcm))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(10_000) == pcm


def test_one_chunk_per_segment_split_at_max_length() -> None:
    chunker = Chunker(max_chunk_s=0.1)  # 5 frames
    out = []
    for event in seg(0, 12) + seg(100_000, 2):
        out += chunker.push(event)
    assert [(start, len(pcm) // 2) for start, pcm in out] == [(0, 1600), (1600, 1600), (3200, 640), (100_000, 640)]


def outbox(**kw: object) -> BasicOutbox:
    return BasicOutbox(StreamSettings(**kw))  # type: ignore[arg-type]


def feed(box: BasicOutbox, *segments: tuple[int, int]) -> None:
    for start, count in segments:
        for event in seg(start, count):
            box.push(event)


def send_all(box: BasicOutbox, now: float) -> list[int]:
    sent = []
    while (chunk := box.next_chunk()) is not None:
        box.mark_sent(chunk, now)
        sent.append(chunk.index)
    return sent


def result(text: str, end: float = 0.5) -> Transcription:
    return Transcription(text=f"[SPEAKER_0 | 0.000 --> {end:.3f}]: {text}")


def test_results_are_attributed_in_order_with_timeline_times() -> None:
    box = outbox()
    feed(box, (0, 50), (32000, 50))
    assert send_all(box, 0.0) == [0, 1]
    first = box.on_transcription(result("one"))
    second = box.on_transcription(result("two"))
    assert first is not None and second is not None
    assert (first.chunk, first.words, first.start) == (0, "one", 0.0)
    assert (second.chunk, second.start, second.end) == (1, 2.0, 2.5)
    assert box.drained and box.stats.transcribed == 2


def test_result_too_long_for_the_oldest_chunk_skips_it() -> None:
    box = outbox()
    feed(box, (0, 10), (32000, 150))  # 0.2 s, then 3 s
    send_all(box, 0.0)
    event = box.on_transcription(result("long", end=2.9))
    assert event is not None and event.chunk == 1
    assert box.stats.timed_out == 1


def test_chunk_without_result_is_done_after_the_timeout() -> None:
    box = outbox(basic_chunk_timeout_s=30.0)
    feed(box, (0, 10))
    send_all(box, 100.0)
    assert box.next_deadline() == 130.0
    assert box.expire(129.9) == 0 and box.expire(130.0) == 1 and box.drained


def test_outstanding_chunks_are_resent_oldest_first_after_reconnect() -> None:
    box = outbox()
    feed(box, (0, 10), (32000, 10), (64000, 10))
    send_all(box, 0.0)
    box.on_transcription(result("zero"))
    box.on_connected()
    assert send_all(box, 5.0) == [1, 2]
    assert (box.stats.sent, box.stats.resent) == (3, 2)


def test_repeat_of_a_resent_chunks_result_is_dropped() -> None:
    box = outbox()
    feed(box, (0, 10), (32000, 10))
    send_all(box, 0.0)
    box.on_connected()
    send_all(box, 1.0)
    assert box.on_transcription(result("hello")) is not None
    assert box.on_transcription(result("hello")) is None  # the server answered both sends of chunk 0
    assert box.stats.duplicates_dropped == 1
    assert box.on_transcription(result("world")) is not None and box.drained


def test_overflow_drops_oldest_chunks_and_counts_them() -> None:
    box = outbox(ring_seconds=1.0)
    feed(box, (0, 40), (32000, 40))
    assert (box.stats.dropped_chunks, box.stats.dropped_samples) == (1, 40 * FRAME)
    assert send_all(box, 0.0) == [1]


def test_result_while_nothing_is_outstanding_is_unmatched_and_changes_nothing() -> None:
    box = outbox()
    assert box.on_transcription(result("phantom")) is None  # nothing sent yet
    feed(box, (0, 10))
    assert box.on_transcription(result("phantom")) is None  # formed but not sent
    assert box.stats.unmatched == 2 and box.stats.transcribed == 0 and not box.drained
    send_all(box, 0.0)
    event = box.on_transcription(result("real"))
    assert event is not None and event.chunk == 0 and box.drained


def test_the_same_message_twice_completes_one_chunk_only() -> None:
    box = outbox()
    feed(box, (0, 10), (32000, 10), (64000, 10))
    send_all(box, 0.0)
    flood = Transcription(text="[SPEAKER_0 | 0.000 --> 0.150]: hello", timestamp=1000.0)
    assert box.on_transcription(flood) is not None
    assert box.on_transcription(flood) is None and box.on_transcription(flood) is None  # a flood of one result
    assert box.stats.duplicates_dropped == 2 and len(box.outstanding) == 2
    # The same words at another time are another chunk's result.
    again = Transcription(text="[SPEAKER_0 | 0.000 --> 0.150]: hello", timestamp=1001.0)
    event = box.on_transcription(again)
    assert event is not None and event.chunk == 1


def test_a_result_that_fits_no_chunk_completes_only_the_oldest() -> None:
    box = outbox()
    feed(box, (0, 10), (32000, 10), (64000, 10))  # three 0.2 s chunks
    send_all(box, 0.0)
    event = box.on_transcription(result("far", end=500.0))  # no 0.2 s chunk can hold 500 s
    assert event is not None and event.chunk == 0
    assert len(box.outstanding) == 2 and box.stats.timed_out == 0
