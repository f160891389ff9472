"""The speech stream's state names and counters (pure): what ``status``, the metrics and the benchmarks read."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent import BYTES_PER_SAMPLE, SAMPLE_RATE
from agent.stream.basic import BasicOutbox
from agent.stream.ring import SendRing


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    FORBIDDEN = "forbidden"
    """403: no active subscription; dialling stopped, capture and archive go on."""
    FAILED = "failed"
    """The server ended the session with a non-retryable error; dialling stopped."""
    DONE = "done"
    """The server confirmed the whole visit."""


@dataclass(slots=True)
class StreamStats:
    state: State = State.IDLE
    mode: str | None = None
    """``resume`` or ``basic`` once a connection picked it."""
    connections: int = 0
    reconnects: int = 0
    """Dials after the first (including failed handshakes)."""
    sent_messages: int = 0
    resent_messages: int = 0
    acked_messages: int = 0
    paced_messages: int = 0
    """Messages sent under replay pacing (``replay_speed``): the backlog after an outage."""
    bytes_sent: int = 0
    """Audio payload bytes written to the socket (resume mode), resends included."""
    ack_lag_s: float = 0.0
    """Seconds of timeline between the newest audio sent and the newest audio acknowledged (resume mode)."""
    duplicates_dropped: int = 0
    """Basic mode: transcriptions dropped as repeats."""
    chunks_sent: int = 0
    chunks_resent: int = 0
    chunks_transcribed: int = 0
    chunks_timed_out: int = 0
    dropped_samples: int = 0
    """Samples pushed out of a full ring before the server confirmed them (some may have reached it)."""
    gap_samples: int = 0
    """Samples announced to the server as lost (resume mode)."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    held_samples: int = 0
    """Samples held for sending that the server has not confirmed yet (ring fill; basic mode: chunks not done)."""
    protocol_errors: int = 0
    """Connections ended because the server claimed something impossible (e.g. audio stored that was never sent)."""
    ignored_messages: int = 0
    """Server messages ignored as unusable (binary, malformed, oversized, nested too deep)."""
    unmatched_transcriptions: int = 0
    """Basic mode: transcriptions that arrived while no chunk was outstanding (ignored)."""
    rejected_frames: int = 0
    """Frames refused because their timeline index went backwards (a caller bug, logged)."""
    last_error: str = ""
    """Why the last connection ended (one line, no patient data)."""
    end_reasons: list[str] = field(default_factory=list)
    """Why each connection ended, the last 100."""
    retry_delays: list[float] = field(default_factory=list)
    """Reconnect delays chosen, in seconds (the last 100)."""
    link_probes: int = 0
    """Reachability probes (TCP connects to the speech host) made while waiting to reconnect."""
    probe_cuts: int = 0
    """Reconnect waits cut short because a probe found the link back."""


def refresh(stats: StreamStats, ring: SendRing, basic: BasicOutbox, mode: str | None) -> None:
    """Copy the send ring's and the basic outbox's own counters into ``stats``."""
    s, r, b = stats, ring.stats, basic.stats
    s.sent_messages, s.resent_messages, s.acked_messages = r.sent_messages, r.resent_messages, r.acked_messages
    s.paced_messages, s.bytes_sent = r.paced_messages, r.bytes_sent
    s.ack_lag_s = max(0, r.sent_end - r.acked_end) / SAMPLE_RATE
    s.chunks_sent, s.chunks_resent, s.duplicates_dropped = b.sent, b.resent, b.duplicates_dropped
    s.chunks_transcribed, s.chunks_timed_out = b.transcribed, b.timed_out
    s.dropped_samples = r.dropped_samples + b.dropped_samples
    s.gap_samples, s.gaps = r.gap_samples_announced, list(r.gaps)
    s.held_samples = (basic.held_bytes if mode == "basic" else ring.held_bytes) // BYTES_PER_SAMPLE
    s.unmatched_transcriptions = b.unmatched


def snapshot(stats: StreamStats) -> StreamStats:
    """A copy (lists are replaced, never mutated in place, so a copy taken from another thread is whole)."""
    return StreamStats(**{name: getattr(stats, name) for name in StreamStats.__slots__})
