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
    ok = await stream.finish(final_sample,    # send the rest + ``end``; wait for ``closed`` as long as the
                             progress=cb)     # unconfirmed backlog needs (end_timeout_s + pending reconnect
                                              # delay + backlog / replay_speed, extended by progress, at most
                                              # drain_max_s); cb(seconds still unconfirmed) every few seconds;
                                              # True if the server confirmed the whole visit; stops the stream
    stream.give_up()                          # ANY thread: stop finish() waiting (a second Ctrl-C)
    await stream.close()                      # stop at once (shutdown), no ``end``
    stream.stats                              # StreamStats snapshot: state, mode, connections, reconnects,
                                              # sent/resent/acked messages, chunk counters, dropped_samples,
                                              # gap_samples, gaps, held_samples, protocol_errors,
                                              # ignored_messages, last_error, end_reasons, retry_delays

A server's claims are checked: a ``ready``/``ack``/``closed`` beyond what was written is a protocol error (one
WARNING, reconnect with backoff, nothing freed); ``retry_after`` is clamped to [0, 300] s and is a floor under the
jittered backoff; unusable server messages are ignored with one WARNING per connection (see ``connection``).

Pass SegmentEnd events promptly: in basic mode a chunk (one utterance) is sent when its segment ends. States:
``connecting``, ``streaming``, ``backoff`` (transient, retried for ever), ``forbidden`` (403: dialling stopped,
capture and archive go on), ``failed`` (non-retryable server error), ``done`` (server confirmed the visit).

After the speech host was unreachable, the supervisor probes it (a TCP connect every ``link_probe_s``) and dials
as soon as it answers instead of sleeping out the rest of the backoff.

Layout: ``session`` (the protocol as a pure state machine: every rule of the contract, both modes), ``actions``
and ``stats`` (its values), ``wire`` (messages, pure), ``ring`` (resume-mode send ring, pure), ``basic``
(basic-mode chunks, pure), ``policy`` (reconnect decisions, pacing, ack watchdog, pure; the delays are
:mod:`agent.backoff`'s), ``link`` (the WebSocket protocol over the transport), ``readhold`` (acks read in the
sender's wake-ups), ``connection`` (dial and pump one WebSocket connection), ``client`` (SpeechStream and the
supervisor).
"""

from agent.stream.client import SpeechStream, State, StreamStats, TokenProvider, TranscriptCallback
from agent.stream.wire import TranscriptEvent

__all__ = ["SpeechStream", "State", "StreamStats", "TokenProvider", "TranscriptCallback", "TranscriptEvent"]
