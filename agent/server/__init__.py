"""The local MediSync-compatible server used by the demo, tests and benchmarks.

REST at ``/api/...`` (:mod:`agent.server.rest`), the speech socket ``/ws/transcribe`` in both modes of
speech-protocol.md (:mod:`agent.server.speech`), a MediSearch SSE endpoint ``POST /sse/medichat``
(:mod:`agent.server.medisearch`) and, with ``test_hooks``, admin endpoints under ``/_test`` (:mod:`agent.server.admin`).
State lives in SQLite plus files under ``data_dir``, so a restarted server knows users, appointments, recordings and
speech sessions. Start it in-process with :class:`MediSyncServer` / :class:`ServerThread`, or as a process with
``medisync-agent serve``.
"""

from agent.server.app import MediSyncServer, ServerSettings, ServerThread, ServerUrls

__all__ = ["MediSyncServer", "ServerSettings", "ServerThread", "ServerUrls"]
