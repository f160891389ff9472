"""Reading the speech socket inside the sender's wake-ups (issue 11): acks read without a wake-up of their own.

In resume mode the server acks every audio message (ours: one per 100 ms message; others at least every 250 ms).
Each small ack was read on its own: a loop wake-up, a transport read and the WebSocket parser per ack (~300 us of
thread CPU each on the benchmark VM, the same whether the loop slept before it or not: the per-read Python is what
costs). While audio flows the loop wakes for every captured block anyway, so acks can wait for one, a few per read:

- after audio went out, the socket's receive low-water mark (Linux ``SO_RCVLOWAT``) is raised to
  :data:`HELD_LOWAT`: epoll no longer reports the socket readable for a few small frames, while an end of stream,
  a reset or an error still wakes it at once (``tcp_poll`` reports those whatever the mark);
- at a later audio send (the first :data:`READ_EVERY_S` after the last read: several acks per read) the mark goes
  back to 1. If bytes wait, Linux signals the socket readable right then (``tcp_set_rcvlowat`` calls
  ``tcp_data_ready``), so the loop's next select returns at once, within the same wake-up, and the transport reads
  everything waiting (if nothing waits, the next bytes to arrive are read as usual); the read raises the mark again;
- no read waits longer than :data:`HOLD_S`: when no audio went out for that long (mic stalled, gated silence,
  device lost, the visit ending) a loop timer releases the hold and reads are normal again. A text message sent
  (``start``, ``gap``, ``end``: the ones whose answers the session waits for), replayed audio (a backlog's acks
  are read as they come, until the last one: ``SpeechSession.reads_may_wait``) or a close frame releases it too.

:class:`HoldPolicy` is the timing rule (pure); :class:`HeldReads` applies it to one socket. Where the socket is not
Linux TCP, or the options fail, :func:`held_reads` returns None and reads stay as they were.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from asyncio.trsock import TransportSocket

log = logging.getLogger(__name__)

HELD_LOWAT = 2**14
"""Receive low-water mark while reads are held: far above a few acks (~30 bytes each), well below the buffer."""
HOLD_S = 0.5
"""The longest a read waits for the sender's next wake-up (the contract allows 1 s; timers may run late)."""
RENEW_S = 0.25
"""The hold's release time moves forward only once it is this close: one loop timer per ~0.25 s, not per block."""
READ_EVERY_S = 0.85
"""While audio flows, what waits is read at the first audio send this long after the last read: about once a
second (every 8th block of 120 ms), ~8-10 acks per read: each read costs ~300 us of Python whatever it holds
(issue 11). At most this plus one block late: within the 1 s a read may wait for blocks up to 150 ms, far inside
the 10 s ack watchdog and a ping timeout."""


class HoldPolicy:
    """When reads may wait for the sender's next wake-up: from an audio send until ``hold_s`` without one."""

    def __init__(self, hold_s: float = HOLD_S, renew_s: float = RENEW_S, read_every_s: float = READ_EVERY_S) -> None:
        self._hold, self._renew, self._every = hold_s, renew_s, read_every_s
        self._read_at = float("-inf")
        self.holding = False
        self.release_at: float | None = None
        """Monotonic time at which a hold ends unless audio went out since it was set."""

    def audio_sent(self, now: float) -> bool:
        """Audio went out at ``now``: reads are held. True when :attr:`release_at` moved (set the timer again)."""
        self.holding = True
        if self.release_at is not None and self.release_at - now > self._renew:
            return False
        self.release_at = now + self._hold
        return True

    def read_due(self, now: float) -> bool:
        """Whether what waits should be read at this audio send."""
        return now - self._read_at >= self._every

    def was_read(self, now: float) -> None:
        self._read_at = now

    def release(self) -> None:
        self.holding = False
        self.release_at = None


class HeldReads:
    """:class:`HoldPolicy` applied to one connected TCP socket (see the module's description)."""

    def __init__(self, sock: TransportSocket, loop: asyncio.AbstractEventLoop, policy: HoldPolicy) -> None:
        self._sock, self._loop, self._policy = sock, loop, policy
        self._mark = 1
        self._due = False
        """The mark was lowered for a read: the transport reads what waits in this wake-up, then :meth:`read`."""
        self._timer: asyncio.TimerHandle | None = None

    def audio_sent(self) -> None:
        """Audio was just written: hold reads, or have what waits read now (within this wake-up)."""
        policy, now = self._policy, self._loop.time()
        if policy.audio_sent(now):
            if self._timer is not None:
                self._timer.cancel()
            assert policy.release_at is not None
            self._timer = self._loop.call_at(policy.release_at, self._expired)
        if self._due:
            return
        if policy.read_due(now):
            self._due = True
            self._set(1)
        else:
            self._set(HELD_LOWAT)

    def read(self) -> None:
        """The transport read: hold the next bytes again (while audio flows)."""
        if self._due:
            self._due = False
            self._policy.was_read(self._loop.time())
            self._set(HELD_LOWAT)

    def release(self) -> None:
        """Reads as usual from now on (until audio goes out again)."""
        self._stop()
        self._set(1)

    def lost(self) -> None:
        """The connection is gone (its socket is closed after this): only the timer is left to stop."""
        self._stop()

    def _stop(self) -> None:
        self._policy.release()
        self._due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self.release()

    def _set(self, mark: int) -> None:
        if mark != self._mark:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            self._mark = mark


def held_reads(transport: asyncio.BaseTransport) -> HeldReads | None:
    """A :class:`HeldReads` for the transport's socket, or None where holding reads cannot work (not Linux, not
    TCP, or the socket refused the options)."""
    sock = transport.get_extra_info("socket")
    if sys.platform != "linux" or sock is None or sock.type != socket.SOCK_STREAM or \
            sock.family not in (socket.AF_INET, socket.AF_INET6):  # fmt: skip
        log.debug("speech socket: reads not held (not a Linux TCP socket)")
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    except OSError as exc:
        log.debug("speech socket: reads not held (%s)", exc)
        return None
    return HeldReads(sock, asyncio.get_running_loop(), HoldPolicy())
