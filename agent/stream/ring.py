"""Resume-mode send ring: gated frames in, seq-numbered wire messages out, freed only by the server's word. Pure.

Unit of ``seq``. The protocol numbers binary messages ("+1 per frame", one frame = one binary message) and a seq
must mean the same bytes forever. Frames are therefore coalesced into a wire message *once*, the first time the
message is about to be sent, and from then on the message (its seq, start and payload) is fixed and replayed
byte-identical until the server stores it. Audio still waiting in the ring when a connection is up is formed into
short live messages (``message_ms``); a backlog that piled up during an outage is formed into long replay messages
(``replay_message_ms``) because it had not been formed yet. Numbering per 20 ms frame would make seq depend on the
coalescing; fixing the coalescing at enqueue time would make replay messages as small as live ones. A message is
formed only from timeline-contiguous frames (a jump in ``start`` is gated silence, so it starts a new message) and
never exceeds one second.

Positions kept in separate variables (never derived from each other):

- ``acked_next``: first seq the server has not confirmed (``ack`` + 1, or ``ready.next_seq``);
- ``send_next``: next seq to write on the current connection; rewound to ``ready.next_seq`` on every connection;
- ``base_seq``: seq of the oldest message still held; ``assign_next``: seq the next formed message gets;
- ``written_next``: one past the highest seq whose write *began* on this connection (the server may read a
  message before the write call returns), and ``highest_written``: the highest seq whose write began on any
  connection since the numbers were last reassigned. They bound what a server can truthfully claim to hold: an
  ``ack`` at or beyond ``written_next``, or a ``ready.next_seq`` beyond ``highest_written + 1``, is a protocol
  error (:mod:`agent.stream.policy`), and the ring refuses it rather than free audio the server never had.

A send is three steps: :meth:`SendRing.next_message` peeks (forming if needed), :meth:`SendRing.mark_writing`
records that the write begins, and :meth:`SendRing.mark_sent` advances the cursor after the write returned. A write
that fails half-way leaves the message where it was, formed once, so it cannot be queued twice.

Overflow (``ring_seconds`` / ``ring_bytes``, whichever is reached first) drops the oldest audio and records a gap.
A dropped message that was already sent may still be stored by the server: its gap entry keeps the seq and is
resolved by the next ``ready``/``ack`` (stored: forgotten; not stored: a real gap, and the kept messages are
renumbered from ``ready.next_seq``, safe because the server never stored those numbers). Gaps are announced on
every connection until an ``ack`` of audio sent after them, or ``closed``, confirms the server got them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.audio.types import Frame
from agent.errors import ProtocolError
from agent.settings import StreamSettings
from agent.stream.policy import check_ack, check_ready
from agent.stream.wire import LOST_REASON, MAX_PAYLOAD_BYTES, Gap


def ms_to_bytes(ms: float) -> int:
    """Whole samples of ``ms`` milliseconds as s16le bytes, between one sample and one second."""
    samples = int(SAMPLE_RATE * ms / 1000)
    return max(BYTES_PER_SAMPLE, min(MAX_PAYLOAD_BYTES, samples * BYTES_PER_SAMPLE))


def ring_capacity_bytes(settings: StreamSettings) -> int:
    return min(int(settings.ring_seconds * SAMPLE_RATE) * BYTES_PER_SAMPLE, settings.ring_bytes)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One resume-mode binary message: seq, timeline start and PCM payload."""

    seq: int
    start: int
    pcm: bytes
    capture_time: float

    @property
    def end(self) -> int:
        return self.start + len(self.pcm) // BYTES_PER_SAMPLE


@dataclass(slots=True)
class _GapEntry:
    start: int
    end: int
    seq: int | None
    """seq of a dropped message that was formed (the server may hold it); None: certainly not delivered."""
    confirm_seq: int | None = None
    """Set when announced on a connection: an ack of this seq proves the server read the gap."""
    reason: str = ""
    """Why the audio is absent; empty: lost (the wire's default reason). ``paused``: a privacy pause, not a loss."""


@dataclass(slots=True)
class RingStats:
    sent_messages: int = 0
    resent_messages: int = 0
    acked_messages: int = 0
    paced_messages: int = 0
    """Messages sent under replay pacing (audio that waited in the ring while there was no connection)."""
    bytes_sent: int = 0
    """PCM payload bytes written to sockets, resends included."""
    sent_end: int = 0
    """Timeline index one past the newest sample sent."""
    acked_end: int = 0
    """Timeline index one past the newest sample the server confirmed."""
    dropped_frames: int = 0
    dropped_samples: int = 0
    gap_samples_announced: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """Timeline ranges (start, end) announced as gaps, merged: several announcements of one gap are listed once."""


class SendRing:
    def __init__(self, settings: StreamSettings) -> None:
        self._capacity = ring_capacity_bytes(settings)
        self._live_bytes = ms_to_bytes(settings.message_ms)
        self._replay_bytes = ms_to_bytes(settings.replay_message_ms)
        self._pending: deque[Frame] = deque()
        self._pending_bytes = 0
        self._formed: deque[OutMessage] = deque()
        self._formed_bytes = 0
        self._base_seq = 0
        self._acked_next = 0
        self._send_next = 0
        self._highest_sent = -1
        self._highest_written = -1
        self._written_next = 0
        self._timeline_end = 0
        self._connected = False
        self._gaps: list[_GapEntry] = []
        self.stats = RingStats()

    # --- producer side -----------------------------------------------------------------------------------------

    def push(self, frame: Frame) -> None:
        """Add a gated frame; its ``start`` must not go back in time. Drops the oldest audio when full."""
        size = len(frame.pcm)
        if not size:
            return
        if frame.start < self._timeline_end or size % 2 or size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"frame at {frame.start} overlaps the timeline or has a bad payload length")
        self._timeline_end = frame.start + size // BYTES_PER_SAMPLE
        self._pending.append(frame)
        self._pending_bytes += size
        while self._formed_bytes + self._pending_bytes > self._capacity:
            self._drop_oldest()

    def add_gap(self, start: int, end: int, reason: str = "") -> None:
        """Timeline samples the source itself lost (device loss): announced with ``gap`` like an overflow.

        With a ``reason`` (``paused``) the stretch is announced under it, and not counted as lost."""
        if end > start:
            self._gaps.append(_GapEntry(start, end, None, reason=reason))

    @property
    def timeline_end(self) -> int:
        """Timeline index one past the last pushed sample."""
        return self._timeline_end

    def _drop_oldest(self) -> None:
        if self._formed:
            msg = self._formed.popleft()
            self._formed_bytes -= len(msg.pcm)
            samples = len(msg.pcm) // BYTES_PER_SAMPLE
            if self._connected and msg.seq >= self._written_next:
                # Not written on this connection, so the server does not hold this seq or any later one: the
                # remaining messages move down a number instead of leaving a hole the server would refuse.
                self._gaps.append(_GapEntry(msg.start, msg.end, None))
                self._formed = deque(OutMessage(m.seq - 1, m.start, m.pcm, m.capture_time) for m in self._formed)
                self._highest_written = min(self._highest_written, msg.seq - 1)
            else:
                self._gaps.append(_GapEntry(msg.start, msg.end, msg.seq))
                self._base_seq += 1
                self._send_next = max(self._send_next, self._base_seq)
        else:
            frame = self._pending.popleft()
            self._pending_bytes -= len(frame.pcm)
            last = self._gaps[-1] if self._gaps else None
            if (last is not None and last.seq is None and last.confirm_seq is None and last.end == frame.start
                    and not last.reason):
                last.end = frame.end
            else:
                self._gaps.append(_GapEntry(frame.start, frame.end, None))
            samples = frame.samples
        self.stats.dropped_frames += 1
        self.stats.dropped_samples += samples

    # --- connection side ---------------------------------------------------------------------------------------

    @property
    def acked_next(self) -> int:
        return self._acked_next

    @property
    def send_next(self) -> int:
        return self._send_next

    @property
    def highest_written(self) -> int:
        """Highest seq whose write began (on any connection) under the current numbering; -1 if none."""
        return self._highest_written

    @property
    def written_next(self) -> int:
        """One past the highest seq whose write began on this connection."""
        return self._written_next

    @property
    def assign_next(self) -> int:
        return self._base_seq + len(self._formed)

    @property
    def outstanding(self) -> bool:
        """Messages were written on this connection that the server has not acknowledged."""
        return self._send_next > self._acked_next

    @property
    def has_unsent(self) -> bool:
        return self._send_next < self.assign_next or bool(self._pending)

    @property
    def has_output(self) -> bool:
        """Something may be due on the connection: a message not written yet, or a gap not announced yet (False:
        :meth:`next_message` and :meth:`gaps_to_send` have nothing)."""
        return self._send_next < self.assign_next or bool(self._pending) or any(
            g.seq is None and g.confirm_seq is None for g in self._gaps)  # fmt: skip

    @property
    def held_bytes(self) -> int:
        return self._formed_bytes + self._pending_bytes

    @property
    def drained(self) -> bool:
        """Everything pushed is stored by the server (or announced lost)."""
        return not self._formed and not self._pending

    @property
    def last_seq(self) -> int:
        """seq of the last message formed so far (-1 if none): the ``end`` message's ``last_seq``."""
        return self.assign_next - 1

    def on_ready(self, next_seq: int) -> None:
        """A new connection's ``ready``: free what the server holds, resume sending at ``next_seq``.

        ProtocolError (and nothing changed) if ``next_seq`` claims audio never written."""
        problem = check_ready(next_seq, self._highest_written)
        if problem is not None:
            raise ProtocolError(problem)
        self._resolve_gaps_stored_below(next_seq)
        # Messages stored before the previous connection died are confirmed by next_seq rather than by an ack.
        self.stats.acked_messages += max(0, min(next_seq, self._highest_sent + 1) - self._acked_next)
        self._free_below(next_seq)
        if next_seq < self._base_seq:
            # The server lacks messages dropped from the ring: the numbers from next_seq on were never stored, so
            # the held messages take them. (next_seq is never beyond them: check_ready bounds it by what was
            # written, and everything written is formed or was freed.)
            self._formed = deque(
                OutMessage(next_seq + i, m.start, m.pcm, m.capture_time) for i, m in enumerate(self._formed)
            )
            self._base_seq = next_seq
            for gap in self._gaps:
                gap.seq = None
            self._highest_sent = min(self._highest_sent, next_seq - 1)
            self._highest_written = min(self._highest_written, next_seq - 1)
        self._acked_next = next_seq
        self._send_next = next_seq
        self._written_next = next_seq
        self._connected = True
        for gap in self._gaps:
            gap.confirm_seq = None

    def on_disconnected(self) -> None:
        """The connection is gone (or being replaced): nothing more is written until the next ``ready``."""
        self._connected = False

    def on_ack(self, seq: int) -> bool:
        """Cumulative ``ack``; returns True if it confirmed something new."""
        if seq < self._acked_next:
            return False
        problem = check_ack(seq, self._written_next)
        if problem is not None:
            raise ProtocolError(problem)
        self._resolve_gaps_stored_below(seq + 1)
        if self._gaps:
            self._gaps = [g for g in self._gaps if g.confirm_seq is None or g.confirm_seq > seq]
        self.stats.acked_messages += seq + 1 - self._acked_next
        self._acked_next = seq + 1
        self._free_below(self._acked_next)
        self._send_next = max(self._send_next, self._acked_next)
        return True

    def on_closed(self) -> None:
        """``closed`` arrived: every gap announced on this connection was read."""
        self._gaps = [g for g in self._gaps if g.confirm_seq is None]

    def _free_below(self, seq: int) -> None:
        while self._formed and self._base_seq < seq:
            msg = self._formed.popleft()
            self._formed_bytes -= len(msg.pcm)
            self._base_seq += 1
            self.stats.acked_end = max(self.stats.acked_end, msg.end)

    def _resolve_gaps_stored_below(self, seq: int) -> None:
        if self._gaps:
            self._gaps = [g for g in self._gaps if g.seq is None or g.seq >= seq]

    def gaps_to_send(self) -> list[Gap]:
        """Gaps to announce now, in timeline order; marks them announced (call right before the next audio)."""
        if not self._gaps:
            return []
        limit = self._formed[self._send_next - self._base_seq].start if self._send_next < self.assign_next else None
        out: list[Gap] = []
        for gap in sorted(self._gaps, key=lambda g: g.start):  # a drop can come after a later pause or device gap
            if gap.seq is not None or gap.confirm_seq is not None or (limit is not None and gap.end > limit):
                continue
            gap.confirm_seq = self._send_next
            if gap.reason:
                out.append(Gap(start=gap.start, end=gap.end, reason=gap.reason))
            elif out and out[-1].end == gap.start and out[-1].reason == LOST_REASON:
                out[-1] = Gap(start=out[-1].start, end=gap.end)
            else:
                out.append(Gap(start=gap.start, end=gap.end))
        for g in out:
            if g.reason == LOST_REASON:  # a loss (a pause is not one)
                self._record_announced(g.start, g.end)
        return out

    def _record_announced(self, start: int, end: int) -> None:
        # Kept as disjoint sorted ranges: a gap announced on several connections (maybe grown since) counts once.
        merged: list[tuple[int, int]] = []
        for s, e in sorted([*self.stats.gaps, (start, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        self.stats.gaps = merged
        self.stats.gap_samples_announced = sum(e - s for s, e in merged)

    def next_message(self) -> OutMessage | None:
        """The message to write next on this connection (formed now if needed), or None if nothing is waiting."""
        if self._send_next < self.assign_next:
            return self._formed[self._send_next - self._base_seq]
        if not self._pending:
            return None
        limit = self._replay_bytes if self._pending_bytes >= self._replay_bytes else self._live_bytes
        first = self._pending.popleft()
        parts = [first.pcm]
        size, end = len(first.pcm), first.end
        while self._pending and self._pending[0].start == end and size + len(self._pending[0].pcm) <= limit:
            frame = self._pending.popleft()
            parts.append(frame.pcm)
            size += len(frame.pcm)
            end = frame.end
        self._pending_bytes -= size
        msg = OutMessage(self.assign_next, first.start, b"".join(parts), first.capture_time)
        self._formed.append(msg)
        self._formed_bytes += size
        return msg

    def mark_writing(self, seq: int) -> None:
        """The write of message ``seq`` begins: from now on the server may hold it (and ack it)."""
        self._written_next = max(self._written_next, seq + 1)
        self._highest_written = max(self._highest_written, seq)

    def mark_sent(self, seq: int, *, paced: bool = False) -> None:
        """The write of message ``seq`` returned (which proves nothing about delivery)."""
        self.mark_writing(seq)
        self._send_next = max(self._send_next, seq + 1)
        self.stats.paced_messages += paced
        if 0 <= seq - self._base_seq < len(self._formed):
            msg = self._formed[seq - self._base_seq]
            self.stats.bytes_sent += len(msg.pcm)
            self.stats.sent_end = max(self.stats.sent_end, msg.end)
        if seq > self._highest_sent:
            self._highest_sent = seq
            self.stats.sent_messages += 1
        else:
            self.stats.resent_messages += 1
