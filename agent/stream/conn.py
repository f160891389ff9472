"""What the speech session (:mod:`agent.stream.session`) knows about its current connection. Pure values."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from agent.stream.basic import Chunk
from agent.stream.policy import AckWatchdog, Pacer


class Phase(enum.Enum):
    AWAIT_INIT = "await_init"
    AWAIT_READY = "await_ready"
    STREAMING = "streaming"
    ENDING = "ending"
    CONFIRMED = "confirmed"


@dataclass(slots=True)
class Conn:
    """What one connection knows; replaced on every connection."""

    resume: bool
    init_deadline: float
    watchdog: AckWatchdog
    phase: Phase = Phase.AWAIT_INIT
    init_seen: bool = False
    ready_deadline: float = 0.0
    early_ready: int | None = None
    pacer: Pacer | None = None
    replay_end: int = 0
    pace_until: float | None = None
    end_sent: bool = False
    queued: deque[str] = field(default_factory=deque)
    in_flight: tuple[int, bool, float] | Chunk | None = None
    replay_last_seq: int = -1
    """Highest seq written as replay (backlog) on this connection; -1: none. Until it is acked, reads are not held."""
    ignored: int = 0
