"""systemd notification (``sd_notify``) and the watchdog policy.

:class:`Notifier` is the thin adapter: datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); without that variable every call is a no-op, so the daemon calls it unconditionally.
:class:`WatchdogPolicy` is pure: told the time and the captured-frame counter, it decides whether to send
``WATCHDOG=1``. A daemon whose capture has stalled stops pinging and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` -> the address for ``sendto``; None when unset or not a Unix socket address."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages; a no-op when the service was not started by systemd with ``Type=notify``."""

    def __init__(self, socket_address: str | None) -> None:
        """``socket_address`` is the raw ``$NOTIFY_SOCKET`` value (``/path`` or ``@abstract``), or None."""
        self._address = notify_address(socket_address) if socket_address else None
        if socket_address and self._address is None:
            log.warning("NOTIFY_SOCKET %r is not a Unix socket address; systemd notifications disabled",
                        socket_address)
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True when sent (False when disabled or it failed)."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd going away must not take the service with it; the watchdog notices a silent service anyway.
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        # A newline would start a new field.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time during start-up or shutdown (``EXTEND_TIMEOUT_USEC``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1e6)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``); None when the watchdog is off for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


class WatchdogPolicy:
    """Decides when to send ``WATCHDOG=1``: every ``interval_s``, but only while capture makes progress.

    While a capture is expected (a visit is running), the captured-frame counter must have changed within the
    last ``interval_s``; otherwise the pings stop and systemd restarts the service after ``WatchdogSec``.
    Between visits nothing is captured, and a ping only proves the event loop still runs.
    Call :meth:`observe` often (at least every ``interval_s / 2``); it tells whether to ping now.
    """

    def __init__(self, interval_s: float, now: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._last_ping: float | None = None
        self._last_frames: int | None = None
        self._last_progress = now
        self._was_expecting = False

    def observe(self, now: float, frames: int, *, expect_frames: bool) -> bool:
        """``frames``: captured-frame counter (any change counts as progress, so a new visit's reset does too)."""
        if frames != self._last_frames or (expect_frames and not self._was_expecting):
            # A capture that has just begun gets a full interval to deliver its first frames.
            self._last_progress = now
        self._last_frames = frames
        self._was_expecting = expect_frames
        if self._last_ping is not None and now - self._last_ping < self.interval_s:
            return False
        if expect_frames and now - self._last_progress > self.interval_s:
            return False
        self._last_ping = now
        return True

    def stalled_for(self, now: float) -> float:
        """Seconds since the frame counter last changed (for status text and logs)."""
        return now - self._last_progress
