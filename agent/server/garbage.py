"""Garbage answers for the ``garble_next`` knob: what a broken proxy, a crashed backend or a sloppy server sends.

Each replaces an answer the endpoint already produced (its work is done: a stored upload stays stored), so a client
must find out from the server, not from the answer, what happened.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from agent.server.knobs import RestFault

HTML_PAGE = ("<!DOCTYPE html><html><head><title>Error</title></head>"
             "<body><h1>Something went wrong</h1><p>Please try again later.</p></body></html>")  # fmt: skip


def wrong_types(value: Any) -> Any:
    """``value`` with every leaf of another JSON type (objects stay objects; ``success`` stays as it was)."""
    if isinstance(value, dict):
        return {k: v if k == "success" else wrong_types(v) for k, v in value.items()}
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return {"count": len(value)}
    return []


OTHER_APPOINTMENT_ID = "0123456789abcdef01234567"


def other_appointment(value: Any) -> Any:
    """``value`` with every ``appointment_id`` naming another appointment."""
    if isinstance(value, dict):
        return {k: OTHER_APPOINTMENT_ID if k == "appointment_id" else other_appointment(v) for k, v in value.items()}
    if isinstance(value, list):
        return [other_appointment(v) for v in value]
    return value


def _json_of(response: web.StreamResponse) -> Any:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return {"success": True}  # a file download: nothing to twist, garble a small envelope instead
    try:
        return json.loads(body)
    except ValueError:
        return {"success": True}


async def garble(fault: RestFault, response: web.StreamResponse) -> web.StreamResponse:
    """The garbage of ``fault.kind`` in place of ``response``."""
    kind = fault.kind
    if kind == "stall":
        await asyncio.sleep(fault.delay_s)
        return response
    if kind == "not_json":
        return web.Response(text="OK", content_type="text/plain")
    if kind == "array":
        return web.json_response([1, 2, 3])
    if kind == "wrong_types":
        return web.json_response(wrong_types(_json_of(response)), status=response.status)
    if kind == "other_appointment":
        return web.json_response(other_appointment(_json_of(response)), status=response.status)
    if kind == "empty":
        return web.Response(body=b"", content_type="application/json")
    if kind == "html":
        return web.Response(text=HTML_PAGE, content_type="text/html")
    if kind == "server_error":
        return web.Response(status=fault.status or 502, text=HTML_PAGE, content_type="text/html")
    if kind == "bad_encoding":
        return web.Response(body=b"this is not gzip", content_type="application/json",
                            headers={"Content-Encoding": "gzip"})  # fmt: skip
    raise ValueError(f"not a garbage kind: {kind}")
