"""Pure interpretation of MediSync HTTP responses: status and envelope to typed errors, JSON to models.

No I/O here: the client hands in status, headers and body bytes, and gets back decoded data or an exception from
:mod:`agent.errors`. ``endpoint`` is a short label such as ``"POST recordings/add"``; it never contains query
strings (a patient search term is patient data) or tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from agent.backoff import parse_retry_after
from agent.errors import (
    AlreadyExistsError,
    ApiError,
    AuthError,
    EnvelopeError,
    NotFoundError,
    RateLimitError,
    ResponseError,
    ServerError,
    SubscriptionError,
    UploadTooLargeError,
)

T = TypeVar("T")

SERVER_TEXT_LIMIT = 200
"""Longest server error text (characters) carried into an exception message."""

_ALREADY_EXISTS = re.compile(r"already\s+exist", re.IGNORECASE)
_json_decoder = msgspec.json.Decoder()


def server_text(text: object) -> str:
    """Server-provided error text made safe for one log line: single-spaced, printable, bounded."""
    cleaned = " ".join(str(text).split())
    cleaned = "".join(ch for ch in cleaned if ch.isprintable())
    if len(cleaned) > SERVER_TEXT_LIMIT:
        cleaned = cleaned[: SERVER_TEXT_LIMIT - 3] + "..."
    return cleaned


def rate_limited(endpoint: str, headers: Mapping[str, str], detail: str, now: float) -> RateLimitError:
    """A 429 answer, with the server's ``Retry-After`` read by the agent's one rule (:mod:`agent.backoff`)."""
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    wait = f", retry after {retry_after:g} s" if retry_after is not None else ""
    return RateLimitError(f"{endpoint}: rate limited (HTTP 429{wait}){detail}", retry_after=retry_after)


def envelope_error_text(body: bytes) -> str | None:
    """The ``error`` text of a ``{"success": false, "error": ...}`` body, if the body is one."""
    try:
        doc = _json_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return server_text(doc["error"])
    return None


def error_for_status(
    status: int, headers: Mapping[str, str], body: bytes, *, endpoint: str, now: float
) -> ApiError | None:
    """The exception a non-2xx response stands for; None for 2xx."""
    if 200 <= status < 300:
        return None
    text = envelope_error_text(body)
    detail = f": {text}" if text else ""
    if status == 401:
        return AuthError(f"{endpoint}: not authorised (HTTP 401){detail}", status=status)
    if status == 403:
        return SubscriptionError(f"{endpoint}: forbidden, subscription required (HTTP 403){detail}", status=status)
    if status == 404:
        return NotFoundError(f"{endpoint}: not found (HTTP 404){detail}", status=status)
    if status == 409 or (text is not None and _ALREADY_EXISTS.search(text)):
        return AlreadyExistsError(f"{endpoint}: already exists (HTTP {status}){detail}", status=status)
    if status == 413:
        return UploadTooLargeError(f"{endpoint}: upload too large (HTTP 413){detail}", status=status)
    if status == 429:
        return rate_limited(endpoint, headers, detail, now)
    if status >= 500:
        return ServerError(f"{endpoint}: server error (HTTP {status}){detail}", status=status)
    if text is not None:
        return EnvelopeError(f"{endpoint}: refused (HTTP {status}): {text}", status=status)
    return ApiError(f"{endpoint}: unexpected HTTP status {status}", status=status)


Document = dict[str, Any] | list[Any]
"""A decoded 2xx body: a JSON object (its ``success`` flag checked) or, for list endpoints, a bare JSON array."""

ENVELOPE_FIELDS = frozenset({"success", "error", "message"})
"""Top-level keys of MediSync's envelope: they say nothing about whether the top level is the answer's object."""


def _not_json(body: bytes) -> str:
    """What a person should hear about a 2xx body that is not JSON (never the body itself: it may echo data)."""
    stripped = body.strip()
    if not stripped:
        return "response is empty, not JSON"
    if stripped[:1] == b"<":
        return "response is an HTML page, not JSON"
    return "response is not valid JSON"


def decode_answer(body: bytes, *, endpoint: str, status: int | None = None) -> Document:
    """The JSON of a 2xx response: an object after checking its ``success`` flag, or an array as it is."""
    try:
        doc = _json_decoder.decode(body)
    except msgspec.DecodeError:
        raise ResponseError(f"{endpoint}: {_not_json(body)}", status=status) from None
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise ResponseError(f"{endpoint}: response is not a JSON object", status=status)
    success = doc.get("success", True)
    if success is False:
        text = server_text(doc.get("error", "no error text"))
        if _ALREADY_EXISTS.search(text):
            raise AlreadyExistsError(f"{endpoint}: already exists: {text}", status=status)
        raise EnvelopeError(f"{endpoint}: refused: {text}", status=status)
    if success is not True:
        raise ResponseError(f"{endpoint}: response has no boolean 'success'", status=status)
    return doc


def decode_document(body: bytes, *, endpoint: str, status: int | None = None) -> dict[str, Any]:
    """The JSON object of a 2xx response after checking its ``success`` flag."""
    doc = decode_answer(body, endpoint=endpoint, status=status)
    if not isinstance(doc, dict):
        raise ResponseError(f"{endpoint}: response is not a JSON object", status=status)
    return doc


def _field_names(into: Any) -> frozenset[str] | None:
    """Wire names of a Struct's fields; None for list targets."""
    if isinstance(into, type) and issubclass(into, msgspec.Struct):
        return frozenset(f.encode_name for f in msgspec.structs.fields(into)) - ENVELOPE_FIELDS
    return None


def _candidates(doc: Document, keys: tuple[str, ...], names: frozenset[str] | None) -> list[Any]:
    """Where the answer may sit, most specific first: ``data.<key>``, ``data``, ``<key>``, the top level.

    MediSync's reference puts every answer under ``data``, its quickstart under a named key (``appointment``,
    ``transcription``) or at the top level (login); servers written from either document differ. For a Struct
    only dicts holding at least one of its fields count (an all-optional model such as the subscription would
    otherwise "match" any envelope and hide a wrong answer); for a list only arrays (a bare array body too).
    """
    if isinstance(doc, list):
        return [doc] if names is None else []
    found: list[Any] = []
    data = doc.get("data")
    if isinstance(data, dict):
        found += [data.get(key) for key in keys]
    found += [data, *(doc.get(key) for key in keys), doc]
    if names is None:
        return [c for c in found if isinstance(c, list)]
    return [c for c in found if isinstance(c, dict) and names & c.keys()]


def unwrap(doc: Document, into: type[T], *, keys: tuple[str, ...] = (), endpoint: str, what: str) -> T:
    """The answer's object as ``into``, wherever a reasonable reading of MediSync's documents puts it.

    Tries ``data.<key>``, ``data``, ``<key>`` and the top level in that order (see :func:`_candidates`); the first
    that converts wins. None converting is a :class:`ResponseError` naming the first mismatch (a path, never a
    value: values may be patient data).
    """
    first: msgspec.ValidationError | None = None
    for candidate in _candidates(doc, keys, _field_names(into)):
        try:
            return msgspec.convert(candidate, into)
        except msgspec.ValidationError as exc:
            first = first or exc
    if first is None:
        places = ", ".join(["'data'", *(f"'{k}'" for k in keys), "the top level"])
        raise ResponseError(f"{endpoint}: response has no {what} (looked under {places})")
    raise ResponseError(f"{endpoint}: {what} not as documented ({first})")


def convert(value: Any, into: type[T], *, endpoint: str, what: str) -> T:
    """``value`` as ``into``; a shape that does not match becomes :class:`ResponseError`."""
    if value is None:
        raise ResponseError(f"{endpoint}: response has no {what}")
    try:
        return msgspec.convert(value, into)
    except msgspec.ValidationError as exc:
        # msgspec names the offending path (e.g. "$.data[0]._id"), never a value.
        raise ResponseError(f"{endpoint}: {what} not as documented ({exc})") from None
