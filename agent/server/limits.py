"""What the local server accepts from a client: login attempts, request bodies, JSON. Nothing here trusts the peer.

- :class:`LoginLimiter` (pure, clock passed in): after too many failed logins for one account, or from one client
  address, within a sliding window, further attempts are answered 429 with ``Retry-After`` (the password is not
  even checked, so a guess in that time tells nothing).
- :func:`read_body`: a request body up to its endpoint's limit (413 beyond it, from ``Content-Length`` before
  reading when given), each read bounded by an idle timeout (408 and the connection closed for a body that stops
  arriving).
- :func:`decode_json`: 400 for a body that is not UTF-8 JSON or is nested deeper than :data:`MAX_JSON_DEPTH`
  (never a RecursionError, never a 500).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from typing import Any

from aiohttp import web

from agent.server.app import json_error

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a JSON body (MediSync's bodies nest 2 or 3 levels)."""
JSON_BODY_LIMIT = 64 * 1024
"""Largest JSON body of most endpoints, in bytes."""
BODY_LIMITS = {"/api/login": 4 * 1024, "/api/transcriptions/add": 1024 * 1024, "/api/notes/add": 1024 * 1024}
"""Per endpoint (path prefix) limits in bytes, where they differ from :data:`JSON_BODY_LIMIT`."""
MAX_TRACKED_KEYS = 10_000
"""Accounts and addresses remembered by the login limiter before expired entries are swept."""


def body_limit(path: str) -> int:
    for prefix, limit in BODY_LIMITS.items():
        if path == prefix or path.startswith(prefix + "/"):
            return limit
    return JSON_BODY_LIMIT


class LoginLimiter:
    """Sliding-window count of failed logins per account and per client address."""

    def __init__(self, *, per_account: int, per_address: int, window_s: float) -> None:
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, account: str, address: str, now: float) -> float | None:
        """Seconds until a login for ``account`` from ``address`` may be tried again; None if it may now."""
        waits = []
        for key, limit in ((("account", account.strip().lower()), self.per_account),
                           (("address", address), self.per_address)):  # fmt: skip
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[len(times) - limit] + self.window_s - now)
        return max(waits) if waits else None

    def failed(self, account: str, address: str, now: float) -> None:
        if len(self._failures) > MAX_TRACKED_KEYS:
            self._failures = {k: t for k, t in self._failures.items() if self._recent(k, now)}
        for key in (("account", account.strip().lower()), ("address", address)):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times

    def succeeded(self, account: str) -> None:
        """A right password clears that account's failures (not the address's: it may be guessing many)."""
        self._failures.pop(("account", account.strip().lower()), None)


def too_many_logins(wait_s: float) -> web.HTTPException:
    seconds = max(1, math.ceil(wait_s))
    return json_error(429, f"Too many failed logins; try again in {seconds} s", {"Retry-After": str(seconds)})


def _closing(exc: web.HTTPException) -> web.HTTPException:
    exc.force_close()  # the rest of the body is not read: the connection cannot carry another request
    return exc


async def read_body(request: web.Request, limit: int, idle_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes; 413 beyond, 408 when no byte arrives for ``idle_s`` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise _closing(json_error(413, f"Request body too large (max {limit} bytes)"))
    body = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await request.content.readany()
        except TimeoutError:
            raise _closing(json_error(408, f"Request body stalled (nothing for {idle_s:g} s)")) from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise _closing(json_error(413, f"Request body too large (max {limit} bytes)"))


def _nesting_ok(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def decode_json(body: bytes) -> Any:
    """Decoded JSON; 400 (one line) for anything that is not UTF-8 JSON nested at most :data:`MAX_JSON_DEPTH`."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise json_error(400, "Request body must be JSON") from exc
    except RecursionError:
        raise json_error(400, f"Request body nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    if not _nesting_ok(value, MAX_JSON_DEPTH):
        raise json_error(400, f"Request body nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return value
