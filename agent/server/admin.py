"""HTTP test hooks under ``/_test`` (only with ``--test-hooks``): knobs, users, token expiry, inspection.

- ``POST /_test/knobs``            body: a knob spec, see :meth:`agent.server.knobs.Knobs.apply`
- ``POST /_test/users``            ``{"email", "password", "subscription": true}`` -> ``{"uid"}``
- ``POST /_test/subscription``     ``{"email", "active"}``
- ``POST /_test/expire-tokens``    every token issued so far becomes invalid
- ``GET  /_test/sessions/{id}``    resume session: ``runs`` [{start, samples, sha256, pcm_b64?}], ``gaps``, counters
                                   (``?pcm=1`` includes the PCM base64-encoded)
- ``GET  /_test/basic``            ``chunk_counts`` {sha256: n} and ``transcriptions``
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.server.app import json_error
from agent.server.limits import JSON_BODY_LIMIT, decode_json, read_body

if TYPE_CHECKING:
    from agent.server.app import MediSyncServer


def add_admin_routes(app: web.Application, server: MediSyncServer) -> None:
    async def body_of(request: web.Request) -> Any:
        return decode_json(await read_body(request, JSON_BODY_LIMIT, server.settings.body_timeout_s))

    async def knobs(request: web.Request) -> web.Response:
        try:
            server.knobs.apply(await body_of(request))
        except (ValueError, KeyError, TypeError) as exc:
            raise json_error(400, f"bad knob spec: {exc}") from exc
        return web.json_response({"success": True})

    async def users(request: web.Request) -> web.Response:
        body = await body_of(request)
        user = server.add_user(body["email"], body["password"], bool(body.get("subscription", True)))
        return web.json_response({"success": True, "uid": user.uid})

    async def subscription(request: web.Request) -> web.Response:
        body = await body_of(request)
        server.set_subscription(body["email"], bool(body["active"]))
        return web.json_response({"success": True})

    async def expire(request: web.Request) -> web.Response:
        server.expire_tokens()
        return web.json_response({"success": True})

    async def session(request: web.Request) -> web.Response:
        try:
            audio = server.session_audio(request.match_info["session_id"])
        except KeyError as exc:
            raise json_error(404, "no such speech session") from exc
        with_pcm = request.query.get("pcm") == "1"
        runs = [{"start": start, "samples": len(pcm) // 2, "sha256": hashlib.sha256(pcm).hexdigest(),
                 **({"pcm_b64": base64.b64encode(pcm).decode()} if with_pcm else {})} for start, pcm in audio.runs]
        return web.json_response({
            "success": True, "runs": runs, "gaps": [g.__dict__ for g in audio.gaps],
            "frames_stored": audio.frames_stored, "next_seq": audio.next_seq,
            "frames_received": audio.frames_received, "duplicates_ignored": audio.duplicates_ignored,
            "closed_last_seq": audio.closed_last_seq,
            "transcriptions": server.sent_transcriptions.get(request.match_info["session_id"], []),
        })

    async def basic(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "chunk_counts": server.basic_chunk_counts(),
                                  "transcriptions": server.basic_transcriptions()})

    app.router.add_post("/_test/knobs", knobs)
    app.router.add_post("/_test/users", users)
    app.router.add_post("/_test/subscription", subscription)
    app.router.add_post("/_test/expire-tokens", expire)
    app.router.add_get("/_test/sessions/{session_id}", session)
    app.router.add_get("/_test/basic", basic)
