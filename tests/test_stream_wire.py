"""Wire messages: encode/decode, binary header, tolerant decoding, transcript parsing."""

from __future__ import annotations

import json

import pytest

from agent.errors import ProtocolError
from agent.stream import wire


def test_client_messages_are_tagged_json() -> None:
    start = json.loads(wire.encode(wire.Start(session_id="s1", appointment_id="42")))
    assert start == {
        "type": "start", "session_id": "s1", "appointment_id": "42",
        "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
    }  # fmt: skip
    assert json.loads(wire.encode(wire.Gap(start=10, end=20))) == {
        "type": "gap",
        "start": 10,
        "end": 20,
        "reason": "ring_overflow",
    }
    assert json.loads(wire.encode(wire.End(last_seq=7, final_sample=999))) == {
        "type": "end",
        "last_seq": 7,
        "final_sample": 999,
    }


def test_binary_header_is_two_u64_little_endian() -> None:
    data = wire.encode_audio(0x0102, 2**40 + 3, b"\x01\x00\x02\x00")
    assert data[:16] == (0x0102).to_bytes(8, "little") + (2**40 + 3).to_bytes(8, "little")
    assert wire.decode_audio(data) == (0x0102, 2**40 + 3, b"\x01\x00\x02\x00")


@pytest.mark.parametrize("size", [3, 32002])
def test_binary_payload_must_be_even_and_at_most_one_second(size: int) -> None:
    with pytest.raises(ValueError):
        wire.encode_audio(0, 0, b"\0" * size)


def test_decode_known_types_ignoring_unknown_fields() -> None:
    assert wire.decode('{"type":"ready","session_id":"s","next_seq":5,"extra":[1]}') == wire.Ready(
        session_id="s", next_seq=5
    )
    assert wire.decode(b'{"type":"ack","seq":9}') == wire.Ack(seq=9)
    assert wire.decode('{"type":"session_init","session_id":"u"}') == wire.SessionInit(session_id="u")
    assert wire.decode('{"type":"closed","last_seq":3}') == wire.Closed(last_seq=3)
    err = wire.decode('{"type":"error","code":"busy","message":"m","retryable":true,"retry_after":2.5}')
    assert err == wire.Error(code="busy", message="m", retryable=True, retry_after=2.5)
    assert isinstance(wire.decode('{"type":"warning","message":"slow"}'), wire.ServerWarning)


def test_unknown_type_is_not_fatal() -> None:
    assert wire.decode('{"type":"party","x":1}') == wire.Unknown("party")


@pytest.mark.parametrize("text", ["[1,2]", "not json", '{"no_type":1}', '{"type":"ack","seq":"x"}'])
def test_garbage_raises_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError):
        wire.decode(text)


def test_transcription_text_format_is_parsed() -> None:
    msg = wire.decode('{"type":"transcription","text":"[SPEAKER_1 | 1.250 --> 3.450]: hello there","timestamp":1.0}')
    assert isinstance(msg, wire.Transcription)
    event = wire.parse_transcription(msg)
    assert (event.speaker, event.start, event.end, event.words, event.final) == (
        "SPEAKER_1",
        1.25,
        3.45,
        "hello there",
        True,
    )


def test_transcription_separate_fields_win_and_offset_applies() -> None:
    msg = wire.Transcription(text="plain words", speaker="SPEAKER_0", start_time=0.5, end_time=1.0, final=False)
    event = wire.parse_transcription(msg, offset_s=10.0, chunk=3)
    assert (event.speaker, event.start, event.end, event.words, event.final, event.chunk) == (
        "SPEAKER_0",
        10.5,
        11.0,
        "plain words",
        False,
        3,
    )


def test_transcription_without_bracket_keeps_text() -> None:
    event = wire.parse_transcription(wire.Transcription(text="  just words "))
    assert (event.words, event.speaker, event.start) == ("just words", None, None)


def test_deep_nesting_is_refused_before_parsing() -> None:
    deep = '{"type":"transcription","text":"a","x":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ProtocolError, match="nested deeper"):
        wire.decode(deep)
    brackets_in_text = '{"type":"transcription","text":"' + '[{\\"' * 5000 + '"}'
    assert isinstance(wire.decode(brackets_in_text), wire.Transcription)  # brackets inside strings do not count
    nested = b'{"a":[[{"b":"\\\\]"}]]}'  # depth 4; the escaped backslash does not hide the closing quote
    assert not wire.nesting_exceeds(nested, 4) and wire.nesting_exceeds(nested, 3)


def test_oversized_text_is_refused_before_parsing() -> None:
    big = '{"type":"transcription","text":"' + "x" * wire.MAX_TEXT_BYTES + '"}'
    with pytest.raises(ProtocolError, match="bytes"):
        wire.decode(big)


@pytest.mark.parametrize(("raw", "seconds"), [("-5", 0.0), ("1e999", 300.0), ('"7"', 7.0), ('"NaN"', None),
                                             ('"soon"', None), ("[1]", None), ("null", None), ("2.5", 2.5)])
def test_error_retry_after_is_read_leniently_and_clamped(raw: str, seconds: float | None) -> None:
    msg = wire.decode('{"type":"error","code":"busy","retryable":true,"retry_after":' + raw + "}")
    assert isinstance(msg, wire.Error) and msg.retryable and msg.retry_after == seconds
