"""Fault and behaviour knobs for tests, demo and benchmarks (thread-safe: tests set them from another thread).

Each knob is a plain method here; the HTTP admin endpoint (``--test-hooks``) maps JSON onto the same methods.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

RestFaultKind = Literal["status", "malformed", "envelope"]
GarbageKind = Literal["not_json", "array", "wrong_types", "empty", "html", "server_error", "bad_encoding", "stall",
                      "other_appointment"]
GARBAGE_KINDS: tuple[GarbageKind, ...] = ("not_json", "array", "wrong_types", "empty", "html", "server_error",
                                          "bad_encoding", "stall", "other_appointment")
RestShape = Literal["documented", "data", "named", "top"]
REST_SHAPES: tuple[RestShape, ...] = ("documented", "data", "named", "top")
LieKind = Literal["ready_ahead", "ack_ahead", "closed_ahead", "retry_error", "junk", "phantom_transcripts",
                  "transcript_flood"]
LIE_KINDS: tuple[str, ...] = get_args(LieKind)
SEARCH_FAULTS = ("error_out_of_tokens", "error_internal", "error_llm", "error_not_enough_articles",
                 "http_429", "http_500")


@dataclass
class RestFault:
    path_prefix: str
    remaining: int
    kind: RestFaultKind | GarbageKind = "status"
    status: int | None = None
    """HTTP status; default 500 for ``status`` faults and 200 for ``malformed`` / ``envelope``."""
    retry_after: float | None = None
    delay_s: float = 0.0
    """``stall``: seconds the answer is held back."""

    @property
    def garbage(self) -> bool:
        """Garbage replaces the answer after the endpoint did its work (a stored upload stays stored)."""
        return self.kind in GARBAGE_KINDS


@dataclass
class Refusal:
    status: int
    retry_after: float | None
    remaining: int
    """Handshakes still to refuse; -1 refuses until cleared."""


@dataclass(frozen=True)
class Lie:
    """A speech server that lies (tests of the client's checks), one kind per connection:

    - ``ready_ahead`` / ``ack_ahead`` / ``closed_ahead``: resume mode; ``ready.next_seq``, every ``ack.seq`` or
      ``closed.last_seq`` is ``amount`` higher than what the server stored;
    - ``retry_error``: resume mode; ``start`` is answered with a retryable ``error`` whose ``retry_after`` is the
      raw JSON text ``retry_after_json`` (``-5``, ``1e999``, ``"soon"``), then the connection closes (1013);
    - ``junk``: the messages in ``junk`` (text or binary) are sent right after ``session_init``; then normal;
    - ``phantom_transcripts``: basic mode; ``amount`` transcriptions right after ``session_init``, before any chunk;
    - ``transcript_flood``: basic mode; every transcription is sent ``amount`` extra times.
    """

    kind: LieKind
    amount: int = 1000
    retry_after_json: str = "null"
    junk: tuple[str | bytes, ...] = ()


@dataclass
class Knobs:
    rest_faults: list[RestFault] = field(default_factory=list)
    refusal: Refusal | None = None
    drop_after_frames: int | None = None
    """Abort a connection right after storing its N-th binary frame (before acking it)."""
    drop_connections: int = 0
    """How many further connections the drop knob applies to (-1: all)."""
    outage_s: float = 0.0
    """After each drop, refuse handshakes (HTTP 503) for this many seconds: the network stays down a while."""
    outage_until: float = 0.0
    """time.monotonic() until which handshakes are refused after the last drop."""
    ack_delay_s: float = 0.0
    """Seconds to wait before sending each ack (the audio is stored at once)."""
    withhold_acks: bool = False
    """Store audio but send no acks at all (a silent connection)."""
    force_basic: bool = False
    """Never select ``medisync.resume.v1``: every connection runs MediSync's documented basic mode."""
    search_faults: list[str] = field(default_factory=list)
    """Next MediSearch requests fail with these codes, one per request, oldest first."""
    rest_shape: RestShape = "documented"
    """Where REST answers carry their object: ``documented`` (under ``data``, plus the quickstart's key where the
    quickstart shows one; login at the top level), only under ``data``, only under the quickstart's key
    (``named``: ``subscription``, ``appointment``, ``patient``, ``recording``, ``transcription``, ``notes``), or
    at the top level (``top``: the object's fields beside ``success``, a list endpoint a bare JSON array)."""
    lie: Lie | None = None
    """How the speech socket lies to the next ``lie_connections`` connections (see :class:`Lie`)."""
    lie_connections: int = 0
    """Connections the lie still applies to (-1: all until cleared)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- REST ---------------------------------------------------------------------------------------------------
    def fail_next(self, path_prefix: str, count: int = 1, *, kind: RestFaultKind = "status", status: int | None = None,
                  retry_after: float | None = None) -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` (e.g. ``/api/recordings/add``)
        answer ``status`` with an error envelope (kind ``status``), 200 with a body that is not JSON
        (``malformed``) or 200 with ``{"success": false, ...}`` (``envelope``)."""
        with self._lock:
            self.rest_faults.append(RestFault(path_prefix, count, kind, status, retry_after))

    def garble_next(self, path_prefix: str, kind: GarbageKind, count: int = 1, *, status: int | None = None,
                    delay_s: float = 0.0) -> None:
        """The next ``count`` requests under ``path_prefix`` are served, then answered with garbage of ``kind``:
        ``not_json`` (200, plain text), ``array`` (200, a JSON array of numbers), ``wrong_types`` (200, the real
        answer with every value of the wrong JSON type), ``empty`` (200, no body), ``html`` (200, an HTML error
        page), ``server_error`` (``status`` or 502, an HTML page), ``bad_encoding`` (200, claims gzip, is not),
        ``stall`` (the real answer after ``delay_s`` seconds), ``other_appointment`` (the real answer with every
        ``appointment_id`` naming another appointment)."""
        if kind not in GARBAGE_KINDS:
            raise ValueError(f"unknown garbage kind {kind!r}; known: {GARBAGE_KINDS}")
        with self._lock:
            self.rest_faults.append(RestFault(path_prefix, count, kind, status, delay_s=delay_s))

    def answer_shape(self, shape: RestShape) -> None:
        """Answer every REST endpoint in ``shape`` from now on (see ``rest_shape``)."""
        if shape not in REST_SHAPES:
            raise ValueError(f"unknown answer shape {shape!r}; known: {REST_SHAPES}")
        self.rest_shape = shape

    def take_rest_fault(self, path: str) -> RestFault | None:
        with self._lock:
            for fault in self.rest_faults:
                if path.startswith(fault.path_prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            self.rest_faults = [f for f in self.rest_faults if f.remaining > 0]
        return None

    # --- speech socket ------------------------------------------------------------------------------------------
    def refuse_handshake(self, status: int, *, retry_after: float | None = None, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket handshakes (-1: until cleared) with HTTP ``status``."""
        with self._lock:
            self.refusal = Refusal(status, retry_after, count) if count else None

    def take_refusal(self) -> Refusal | None:
        with self._lock:
            if time.monotonic() < self.outage_until:
                return Refusal(503, None, -1)
            refusal = self.refusal
            if refusal is None:
                return None
            if refusal.remaining > 0:
                refusal.remaining -= 1
                if refusal.remaining == 0:
                    self.refusal = None
            return refusal

    def drop_after(self, frames: int, *, connections: int = 1, outage_s: float = 0.0) -> None:
        """Abort the next ``connections`` connections (-1: all) right after their ``frames``-th binary frame;
        with ``outage_s``, refuse handshakes for that long after each drop."""
        with self._lock:
            self.drop_after_frames, self.drop_connections, self.outage_s = frames, connections, outage_s

    def dropped(self) -> None:
        """A connection was just dropped by the drop knob: start the outage, if one is set."""
        with self._lock:
            self.outage_until = time.monotonic() + self.outage_s

    def take_drop(self) -> int | None:
        with self._lock:
            if self.drop_after_frames is None or self.drop_connections == 0:
                return None
            if self.drop_connections > 0:
                self.drop_connections -= 1
            return self.drop_after_frames

    def tell_lie(self, kind: LieKind | None, *, connections: int = -1, amount: int = 1000,
                 retry_after_json: str = "null", junk: tuple[str | bytes, ...] = ()) -> None:
        """Lie to the next ``connections`` speech connections (-1: all until cleared; ``kind`` None clears)."""
        if kind is not None and kind not in LIE_KINDS:
            raise ValueError(f"unknown lie {kind!r}; known: {LIE_KINDS}")
        with self._lock:
            self.lie = None if kind is None else Lie(kind, amount, retry_after_json, tuple(junk))
            self.lie_connections = 0 if kind is None else connections

    def take_lie(self) -> Lie | None:
        """The lie for a connection being opened, if any (counts the connection)."""
        with self._lock:
            if self.lie is None or self.lie_connections == 0:
                return None
            if self.lie_connections > 0:
                self.lie_connections -= 1
            return self.lie

    # --- MediSearch ---------------------------------------------------------------------------------------------
    def fail_search(self, *codes: str) -> None:
        """Make the next MediSearch requests fail, one code per request (see ``SEARCH_FAULTS``)."""
        unknown = [c for c in codes if c not in SEARCH_FAULTS]
        if unknown:
            raise ValueError(f"unknown MediSearch fault {unknown}; known: {SEARCH_FAULTS}")
        with self._lock:
            self.search_faults.extend(codes)

    def take_search_fault(self) -> str | None:
        with self._lock:
            return self.search_faults.pop(0) if self.search_faults else None

    # --- all ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.rest_faults, self.refusal, self.search_faults = [], None, []
            self.drop_after_frames, self.drop_connections = None, 0
            self.outage_s, self.outage_until = 0.0, 0.0
            self.ack_delay_s, self.withhold_acks, self.force_basic = 0.0, False, False
            self.rest_shape = "documented"
            self.lie, self.lie_connections = None, 0

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply a JSON knob spec (the admin endpoint's body); keys mirror the methods' names and arguments."""
        if spec.get("reset"):
            self.reset()
        for fault in spec.get("fail_next", []):
            self.fail_next(fault["path"], int(fault.get("count", 1)), kind=fault.get("kind", "status"),
                           status=fault.get("status"), retry_after=fault.get("retry_after"))
        for garble in spec.get("garble_next", []):
            self.garble_next(garble["path"], garble["kind"], int(garble.get("count", 1)), status=garble.get("status"),
                             delay_s=float(garble.get("delay_s", 0.0)))
        if "rest_shape" in spec:
            self.answer_shape(spec["rest_shape"])
        if "refuse_handshake" in spec:
            ref = spec["refuse_handshake"]
            self.refuse_handshake(int(ref["status"]), retry_after=ref.get("retry_after"),
                                  count=int(ref.get("count", 1)))
        if "drop_after" in spec:
            drop = spec["drop_after"]
            self.drop_after(int(drop["frames"]), connections=int(drop.get("connections", 1)))
        if "ack_delay_s" in spec:
            self.ack_delay_s = float(spec["ack_delay_s"])
        if "withhold_acks" in spec:
            self.withhold_acks = bool(spec["withhold_acks"])
        if "force_basic" in spec:
            self.force_basic = bool(spec["force_basic"])
        if "fail_search" in spec:
            self.fail_search(*spec["fail_search"])
        if "lie" in spec:  # {"kind", "connections": -1, "amount": 1000, "retry_after_json": "-5", "junk": [text]}
            lie = spec["lie"] or {}
            self.tell_lie(lie.get("kind"), connections=int(lie.get("connections", -1)),
                          amount=int(lie.get("amount", 1000)),
                          retry_after_json=str(lie.get("retry_after_json", "null")),
                          junk=tuple(str(j) for j in lie.get("junk", ())))
