"""Resume-mode send ring, without any I/O: numbering, coalescing, acks, replay, overflow and gaps."""

from __future__ import annotations

import random

import pytest

from agent.audio.types import Frame
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream.ring import SendRing

FRAME = 320  # 20 ms


def frame(start: int, n: int = FRAME) -> Frame:
    return Frame(start, bytes((start + i) % 251 for i in range(n)) * 2)


def frames(start: int, count: int) -> list[Frame]:
    return [frame(start + i * FRAME) for i in range(count)]


def send_all(ring: SendRing) -> list[tuple[int, int, bytes]]:
    out = []
    while (msg := ring.next_message()) is not None:
        out.append((msg.seq, msg.start, msg.pcm))
        ring.mark_sent(msg.seq)
    return out


def make(**kw: object) -> SendRing:
    return SendRing(StreamSettings(**kw))  # type: ignore[arg-type]


def test_live_messages_coalesce_contiguous_frames_up_to_message_ms() -> None:
    ring = make(message_ms=100)
    for f in frames(0, 7):
        ring.push(f)
    sent = send_all(ring)
    assert [(s, st, len(p)) for s, st, p in sent] == [(0, 0, 3200), (1, 1600, 1280)]
    assert b"".join(p for _, _, p in sent) == b"".join(f.pcm for f in frames(0, 7))


def test_a_jump_in_the_timeline_starts_a_new_message() -> None:
    ring = make(message_ms=100)
    ring.push(frame(0))
    ring.push(frame(16000))
    assert [(s, st) for s, st, _ in send_all(ring)] == [(0, 0), (1, 16000)]


def test_backlog_is_formed_into_replay_sized_messages() -> None:
    ring = make(message_ms=100, replay_message_ms=1000)
    for f in frames(0, 150):  # 3 s
        ring.push(f)
    sizes = [len(p) for _, _, p in send_all(ring)]
    assert sizes[:2] == [32000, 32000] and sum(sizes) == 150 * 640


def test_timeline_must_not_go_back() -> None:
    ring = make()
    ring.push(frame(640))
    with pytest.raises(ValueError):
        ring.push(frame(0))


def test_sent_and_acked_positions_are_separate() -> None:
    ring = make(message_ms=20)
    for f in frames(0, 5):
        ring.push(f)
    send_all(ring)
    assert (ring.send_next, ring.acked_next, ring.outstanding) == (5, 0, True)
    assert ring.on_ack(2)
    assert (ring.send_next, ring.acked_next, ring.last_seq) == (5, 3, 4)
    assert not ring.on_ack(1)  # stale
    ring.on_ack(4)
    assert not ring.outstanding and ring.drained and ring.last_seq == 4


def test_ack_for_audio_never_formed_is_a_protocol_error() -> None:
    ring = make()
    ring.push(frame(0))
    send_all(ring)
    with pytest.raises(ProtocolError):
        ring.on_ack(1)


def test_failed_send_leaves_the_message_queued_once() -> None:
    ring = make(message_ms=20)
    for f in frames(0, 2):
        ring.push(f)
    first = ring.next_message()
    again = ring.next_message()  # the write failed: nothing marked, same message, nothing formed twice
    assert first == again and ring.assign_next == 1
    assert [s for s, _, _ in send_all(ring)] == [0, 1]


def test_ready_rewinds_and_replays_byte_identical_messages() -> None:
    ring = make(message_ms=40)
    for f in frames(0, 6):
        ring.push(f)
    first = send_all(ring)
    ring.on_ack(0)
    ring.on_ready(1)  # new connection: the server stored only seq 0
    assert send_all(ring) == first[1:]
    assert ring.stats.resent_messages == 2 and ring.stats.sent_messages == 3


def test_overflow_drops_oldest_pending_and_announces_one_gap() -> None:
    ring = make(ring_seconds=0.1)  # 5 frames
    for f in frames(0, 8):
        ring.push(f)
    assert (ring.stats.dropped_frames, ring.stats.dropped_samples) == (3, 3 * FRAME)
    ring.on_ready(0)
    gaps = ring.gaps_to_send()
    assert [(g.start, g.end) for g in gaps] == [(0, 3 * FRAME)]
    sent = send_all(ring)
    assert sent[0][1] == 3 * FRAME
    ring.on_ready(0)  # cut before any ack: announced again
    assert [(g.start, g.end) for g in ring.gaps_to_send()] == [(0, 3 * FRAME)]
    send_all(ring)
    ring.on_ack(0)  # audio after the gap stored: the server read the gap
    ring.on_ready(1)
    assert ring.gaps_to_send() == []
    assert ring.stats.gaps == [(0, 3 * FRAME)] and ring.stats.gap_samples_announced == 3 * FRAME


def test_dropped_message_the_server_stored_is_not_a_gap() -> None:
    ring = make(ring_seconds=0.1, message_ms=20)
    for f in frames(0, 5):
        ring.push(f)
    send_all(ring)  # seq 0..4 written, no ack yet
    ring.push(frame(5 * FRAME))  # drops seq 0
    ring.on_ready(1)  # the server had stored seq 0 after all
    assert ring.gaps_to_send() == []
    assert [s for s, _, _ in send_all(ring)] == [1, 2, 3, 4, 5]


def test_dropped_message_the_server_lacks_is_a_gap_and_numbers_continue() -> None:
    ring = make(ring_seconds=0.1, message_ms=20)
    for f in frames(0, 5):
        ring.push(f)
    send_all(ring)
    ring.push(frame(5 * FRAME))  # drops seq 0, never stored
    ring.on_ready(0)
    assert [(g.start, g.end) for g in ring.gaps_to_send()] == [(0, FRAME)]
    sent = send_all(ring)
    assert [(s, st) for s, st, _ in sent] == [(i, (i + 1) * FRAME) for i in range(5)]


class FakeServer:
    """The resume-mode storage rules: duplicates ignored, a seq beyond the stored count is an error."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, bytes]] = []
        self.gaps: list[tuple[int, int]] = []

    def receive(self, seq: int, start: int, pcm: bytes) -> None:
        if seq > len(self.stored):
            raise AssertionError(f"seq {seq} beyond stored count {len(self.stored)}")
        if seq == len(self.stored):
            self.stored.append((start, pcm))


@pytest.mark.parametrize("seed", range(20))
def test_random_cuts_deliver_everything_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    ring = make(ring_seconds=rng.choice([0.5, 2.0, 600.0]), message_ms=rng.choice([20, 100]))
    server = FakeServer()
    fed: dict[int, bytes] = {}
    start = 0
    in_flight: list[tuple[int, int, bytes]] = []
    connected = False
    for _ in range(600):
        action = rng.random()
        if action < 0.4:
            if rng.random() < 0.2:
                start += FRAME * rng.randint(1, 50)  # gated silence
            f = frame(start)
            fed[f.start] = f.pcm
            ring.push(f)
            start = f.end
        elif action < 0.5:
            connected = False
            ring.on_disconnected()
            in_flight.clear()  # bytes in kernel buffers die with the connection
        elif not connected:
            ring.on_ready(len(server.stored))
            server.gaps += [(g.start, g.end) for g in ring.gaps_to_send()]
            connected = True
        elif action < 0.8 and (msg := ring.next_message()) is not None:
            ring.mark_sent(msg.seq)
            in_flight.append((msg.seq, msg.start, msg.pcm))
        elif in_flight:
            server.receive(*in_flight.pop(0))
            if rng.random() < 0.5:
                ring.on_ack(len(server.stored) - 1)
    # Deliver the rest over a clean connection.
    ring.on_ready(len(server.stored))
    server.gaps += [(g.start, g.end) for g in ring.gaps_to_send()]
    for seq, st, pcm in send_all(ring):
        server.receive(seq, st, pcm)
    stored = {}
    for st, pcm in server.stored:
        for i in range(0, len(pcm), FRAME * 2):
            assert st + i // 2 not in stored, "duplicated audio"
            stored[st + i // 2] = pcm[i : i + FRAME * 2]
    in_gap = {s for s in fed if any(a <= s < b for a, b in server.gaps)}
    assert set(stored) == set(fed) - in_gap
    assert all(stored[s] == fed[s] for s in stored)
    lost = sum(len(fed[s]) // 2 for s in in_gap)
    assert lost == ring.stats.gap_samples_announced <= ring.stats.dropped_samples
    starts = [st for st, _ in server.stored]
    assert starts == sorted(starts)


def test_counters_after_a_cut_confirmed_by_ready() -> None:
    # Three 100 ms messages sent, only the first acked before the cut; the server's ready.next_seq says it
    # stored all three: they count as acknowledged, nothing is resent, and the lag between sent and acked is 0.
    ring = make(message_ms=100)
    ring.on_ready(0)
    for f in frames(0, 15):
        ring.push(f)
    assert len(send_all(ring)) == 3
    ring.on_ack(0)
    assert (ring.stats.sent_end - ring.stats.acked_end) == 3200
    ring.on_disconnected()
    ring.on_ready(3)
    assert (ring.stats.sent_messages, ring.stats.acked_messages, ring.stats.resent_messages) == (3, 3, 0)
    assert ring.stats.bytes_sent == 15 * FRAME * 2
    assert ring.stats.sent_end == ring.stats.acked_end == 15 * FRAME
    assert ring.next_message() is None


def test_ready_beyond_what_was_written_is_refused_and_changes_nothing() -> None:
    ring = make(message_ms=20)
    for f in frames(0, 6):
        ring.push(f)
    ring.on_ready(0)
    for _ in range(3):
        msg = ring.next_message()
        assert msg is not None
        ring.mark_sent(msg.seq)
    ring.on_disconnected()
    before = (ring.acked_next, ring.send_next, ring.held_bytes, ring.stats.acked_messages)
    with pytest.raises(ProtocolError, match="beyond the frames written"):
        ring.on_ready(5)  # formed or not, seq 3 and 4 were never written: the server cannot hold them
    assert (ring.acked_next, ring.send_next, ring.held_bytes, ring.stats.acked_messages) == before
    ring.on_ready(3)  # the truth: everything written was stored
    assert [seq for seq, _, _ in send_all(ring)] == [3, 4, 5] and ring.stats.acked_messages == 3


def test_ack_beyond_this_connections_writes_is_refused() -> None:
    ring = make(message_ms=20)
    for f in frames(0, 4):
        ring.push(f)
    ring.on_ready(0)
    send_all(ring)
    ring.on_disconnected()
    ring.on_ready(1)  # a new connection: only seq 0 is stored, 1..3 must be written again
    with pytest.raises(ProtocolError):
        ring.on_ack(2)  # written on the old connection, not on this one
    msg = ring.next_message()
    assert msg is not None and msg.seq == 1
    ring.mark_writing(msg.seq)  # the server may read it, and ack it, before send() returns
    assert ring.on_ack(1) and ring.acked_next == 2


def test_a_message_being_written_is_not_renumbered_when_the_ring_overflows() -> None:
    ring = make(message_ms=20, ring_bytes=65536)  # about 100 frames
    ring.on_ready(0)
    pushed = frames(0, 160)
    ring.push(pushed[0])
    first = ring.next_message()
    assert first is not None
    ring.mark_writing(first.seq)  # the write is in progress (a slow socket) while capture goes on
    for f in pushed[1:]:  # more than the ring holds: the oldest audio goes, the one being written too
        ring.push(f)
    ring.mark_sent(first.seq)  # the write returns: the server may hold seq 0 = the first frame
    rest = send_all(ring)
    assert first.seq not in [seq for seq, _, _ in rest]  # never two different payloads under one seq
    sent = [(first.start, first.end)] + [(start, start + len(pcm) // 2) for _, start, pcm in rest]
    gaps = [(g.start, g.end) for g in ring.gaps_to_send()]
    # Every frame was written or is announced as a gap: none was marked sent under a seq it never went out with.
    assert all(any(s <= f.start < e for s, e in sent + gaps) for f in pushed)


def test_a_pause_is_announced_under_its_reason_and_not_counted_as_loss() -> None:
    ring = make(ring_seconds=0.1)  # 5 frames
    for f in frames(0, 8):
        ring.push(f)  # 3 frames dropped: lost audio right before the pause
    ring.add_gap(8 * FRAME, 20 * FRAME, "paused")
    ring.push(frame(20 * FRAME))
    ring.on_ready(0)
    gaps = ring.gaps_to_send()
    # The push after the pause dropped one more frame: announced with the earlier loss, in timeline order.
    assert [(g.start, g.end, g.reason) for g in gaps] == [(0, 4 * FRAME, "ring_overflow"),
                                                          (8 * FRAME, 20 * FRAME, "paused")]  # fmt: skip
    assert ring.stats.gaps == [(0, 4 * FRAME)] and ring.stats.gap_samples_announced == 4 * FRAME
