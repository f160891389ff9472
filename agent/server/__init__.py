"""The local MediSync-compatible server used by the demo, tests and benchmarks.

Endpoints (``base`` = ``http://host:port``):

- REST under ``base/api`` (:mod:`agent.server.rest`): ``POST login``; ``GET settings/subscription?uid=``;
  ``POST patients/add?uid=``, ``GET patients/search?uid=&query=``, ``PUT patients/{id}?uid=``;
  ``POST appointments/add?uid=``, ``GET appointments/doctors?uid=``, ``GET appointments/get/{id}``;
  ``POST recordings/add/{appointment_id}?uid=`` (multipart ``audio``), ``GET recordings/get/{appointment_id}``,
  ``DELETE recordings/{appointment_id}``; ``GET transcriptions/{appointment_id}``,
  ``POST transcriptions/add/{appointment_id}?uid=``; ``POST notes/add/{appointment_id}``,
  ``GET notes/{appointment_id}``, ``POST notes/diagnosis/{appointment_id}``.
- Speech socket ``ws://host:port/ws/transcribe`` (:mod:`agent.server.speech`): basic mode, and resume mode when
  the client offers ``medisync.resume.v1`` (speech-protocol.md). Words come from the offline recogniser of the
  ``[server]`` extra (:mod:`agent.server.recognizer`), run in a worker thread (:mod:`agent.server.transcription`);
  without it, time spans (``ServerSettings.transcriber``).
- MediSearch SSE ``POST base/sse/medichat`` (:mod:`agent.server.medisearch`).
- With ``test_hooks``: admin endpoints under ``base/_test`` (:mod:`agent.server.admin`).

State lives in SQLite plus files under ``data_dir``, so a restarted server knows users, appointments, recordings and
speech sessions. Start it in-process with :class:`MediSyncServer` (``await server.start()`` in your loop) or
:class:`ServerThread` (own loop in a background thread), or as a process with ``medisync-agent serve``.
Test knobs: ``server.knobs`` (:class:`agent.server.knobs.Knobs`); inspection: ``server.session_audio(id)``,
``server.basic_chunk_counts()``, ``server.basic_transcriptions()``.
"""

from agent.server.app import MediSyncServer, ServerSettings, ServerThread, ServerUrls

__all__ = ["MediSyncServer", "ServerSettings", "ServerThread", "ServerUrls"]
