"""Live streaming of a visit to MediSync's speech socket (shared/speech-protocol.md): send ring, replay policy,
wire messages, socket client and reconnect supervisor.

Public API (everything else is internal)::

    from agent.stream import SpeechStream, State, StreamStats, TranscriptEvent

    stream = SpeechStream(
        settings.stream,                      # agent.settings.StreamSettings
        speech_url=settings.api.speech_url,   # e.g. "wss://speech.medisync.me" ("/ws/transcribe" is appended)
        appointment_id=appointment_id,
        token=token_provider,                 # async (force_login: bool) -> str; force_login=True after a 401
        on_transcript=callback,               # (TranscriptEvent) -> None, called on the event loop; optional
        session_id=None,                      # the visit's resume key; default: a new UUID (stream.session_id)
    )
    await stream.start()                      # on the event loop; dials in the background, for ever
    stream.feed(events)                       # ANY thread, never blocks: agent.audio.vad gate events
                                              # (SegmentStart / SegmentFrame / SegmentEnd) or bare Frames
                                              # (resume mode only); batch them, a few calls per second
    ok = await stream.finish(final_sample)    # send the rest + ``end``, wait <= end_timeout_s for ``closed``;
                                              # True if the server confirmed the whole visit; stops the stream
    await stream.close()                      # stop at once (shutdown), no ``end``
    stream.stats                              # StreamStats snapshot: state, mode, connections, reconnects,
                                              # sent/resent/acked messages, chunk counters, dropped_samples,
                                              # gap_samples, gaps, last_error, end_reasons, retry_delays

Pass SegmentEnd events promptly: in basic mode a chunk (one utterance) is sent when its segment ends. States:
``connecting``, ``streaming``, ``backoff`` (transient, retried for ever), ``forbidden`` (403: dialling stopped,
capture and archive go on), ``failed`` (non-retryable server error), ``done`` (server confirmed the visit).

Layout: ``wire`` (messages, pure), ``ring`` (resume-mode send ring, pure), ``basic`` (basic-mode chunks, pure),
``policy`` (backoff, pacing, ack watchdog, pure), ``connection`` (one WebSocket connection), ``client``
(SpeechStream and the supervisor).
"""

from agent.stream.client import SpeechStream, State, StreamStats, TokenProvider, TranscriptCallback
from agent.stream.wire import TranscriptEvent

__all__ = ["SpeechStream", "State", "StreamStats", "TokenProvider", "TranscriptCallback", "TranscriptEvent"]
