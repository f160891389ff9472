"""The agent's one backoff and one Retry-After rule (speech stream, uploads, supervised tasks). Pure.

- :func:`ceiling`: the exponential bound ``min(cap_s, first_s * 2**attempt)`` (attempt 0 is the first retry).
- :func:`full_jitter`: a delay drawn uniformly from ``[0, ceiling)`` ("full jitter"): many devices that lost the
  same server do not come back in step.
- :func:`retry_after_s`: a server's wait (the ``Retry-After`` header's seconds or the speech protocol's
  ``error.retry_after``) as seconds clamped to ``[0, MAX_RETRY_AFTER_S]``; None when absent or not a number.
- :func:`parse_retry_after`: the ``Retry-After`` header, delta-seconds or an HTTP date (GMT), by the same rule.
- :func:`delay_after`: the wait before the next try: the jittered backoff with the server's wait as a floor under
  it. A server's wait never replaces the backoff: a ``Retry-After: 0`` from a server that keeps refusing must not
  turn retries into a tight loop, and a huge one must not park the agent for days.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable

MAX_RETRY_AFTER_S = 300.0
"""Longest server-requested wait honoured, in seconds (a larger value is taken as this)."""
_MAX_EXPONENT = 62
"""Doublings beyond this cannot matter (any cap is reached) and would overflow the float power."""


def ceiling(attempt: int, first_s: float, cap_s: float) -> float:
    """Seconds: the bound of the ``attempt``-th retry (0-based), ``first_s`` doubling per attempt, at most ``cap_s``."""
    return min(cap_s, first_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))


def full_jitter(attempt: int, first_s: float, cap_s: float, rand: Callable[[], float]) -> float:
    """Seconds drawn from ``[0, ceiling(attempt))``; ``rand()`` returns a float in [0, 1) (``random.random``)."""
    return rand() * ceiling(attempt, first_s, cap_s)


def retry_after_s(value: float | int | str | None) -> float | None:
    """Seconds a server asked to wait, clamped to ``[0, MAX_RETRY_AFTER_S]``; None when absent or not a number.

    Accepts a number or a numeric string (``"7"``, ``"1e999"``); NaN is not a number of seconds (None), an
    infinite or huge wait is taken as ``MAX_RETRY_AFTER_S``, a negative one as 0.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def parse_retry_after(header: str | None, now_wall: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), clamped by :func:`retry_after_s`.

    ``now_wall`` is the current Unix time (injected so the date form is testable). None when the header is absent
    or unreadable, including a date without its zone (HTTP dates are GMT; a guess could be hours off).
    """
    if header is None or not header.strip():
        return None
    seconds = retry_after_s(header.strip())
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return retry_after_s(when.timestamp() - now_wall)


def delay_after(attempt: int, first_s: float, cap_s: float, rand: Callable[[], float],
                retry_after: float | None = None) -> float:  # fmt: skip
    """Seconds to wait before the next try: :func:`full_jitter`, never less than the server's clamped wait."""
    return max(full_jitter(attempt, first_s, cap_s, rand), retry_after_s(retry_after) or 0.0)
