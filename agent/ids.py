"""The shapes of ids the agent accepts from people and reads back from its own files (pure).

Appointment ids are opaque MediSync ids; they end up in URL paths and queue files, so only a strict alphabet is
accepted and a value made of dots only (``..``) is refused. Queue item ids are ours: 32 lowercase hex digits,
which is also the item's file name (the name is authoritative; an id inside the file is never used as a path).
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_APPOINTMENT_ID = 128
"""Longest appointment id accepted, in characters."""
_APPOINTMENT_ID = re.compile(r"[A-Za-z0-9._:-]+")
_ITEM_ID = re.compile(r"[0-9a-f]{32}")


def appointment_id_problem(value: str) -> str | None:
    """Why ``value`` (already stripped) cannot be an appointment id, or None if it can."""
    if not value:
        return "an appointment id is needed"
    if len(value) > MAX_APPOINTMENT_ID:
        return f"appointment id longer than {MAX_APPOINTMENT_ID} characters"
    if not _APPOINTMENT_ID.fullmatch(value) or not value.strip("."):
        return "appointment id may only contain letters, digits and . _ : - (and not only dots)"
    return None


def checked_appointment_id(value: str, error: Callable[[str], Exception]) -> str:
    """``value`` stripped; raises ``error(problem)`` (a one-line reason) when it cannot be an appointment id."""
    value = value.strip()
    problem = appointment_id_problem(value)
    if problem is not None:
        raise error(problem)
    return value


def is_item_id(value: str) -> bool:
    return _ITEM_ID.fullmatch(value) is not None
