"""Pure parts of the local server: tokens, the durable session log, span detection, MediSearch request rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.server import tokens
from agent.server.knobs import Knobs
from agent.server.medisearch import SearchInvalid, event_stream, parse_request
from agent.server.speech_log import FrameVerdict, SessionLog, judge_seq, read_session_audio
from agent.server.transcriber import ChunkRejected, SpanDetector, decode_chunk


def loud(samples: int) -> bytes:
    return (np.sin(np.arange(samples) * 0.2) * 5000).astype("<i2").tobytes()


def test_tokens_verify_expire_and_reject_tampering() -> None:
    secret = tokens.new_secret()
    token = tokens.issue(secret, "user_1", now=1000.0, ttl_s=60)
    assert tokens.verify(secret, token, now=1059.0).uid == "user_1"
    with pytest.raises(tokens.TokenInvalid, match="expired"):
        tokens.verify(secret, token, now=1060.0)
    with pytest.raises(tokens.TokenInvalid, match="expired"):
        tokens.verify(secret, token, now=1001.0, not_before=1000.5)
    header, payload, signature = token.split(".")
    with pytest.raises(tokens.TokenInvalid, match="signature"):
        tokens.verify(secret, f"{header}.{payload}x.{signature}", now=1001.0)
    with pytest.raises(tokens.TokenInvalid):
        tokens.verify(tokens.new_secret(), token, now=1001.0)
    with pytest.raises(tokens.TokenInvalid) as raised:
        tokens.verify(secret, "garbage", now=1001.0)
    assert token not in str(raised.value)


def test_seq_verdicts() -> None:
    assert [judge_seq(s, 5) for s in (4, 5, 6)] == [FrameVerdict.DUPLICATE, FrameVerdict.STORE, FrameVerdict.FUTURE]


def test_session_log_reopens_at_next_seq_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    log = SessionLog(path, fsync=False)
    log.append_frame(0, 0, loud(160))
    log.append_frame(1, 160, loud(160))
    log.append_gap(320, 640, "device_lost")
    log.close()
    with open(path, "ab") as torn:  # kill -9 in the middle of writing frame 2: never acknowledged
        torn.write(b"F" + bytes(10))
    reopened = SessionLog(path, fsync=False)
    assert (reopened.next_seq, reopened.end_sample) == (2, 320)
    reopened.append_frame(2, 640, loud(160))
    reopened.close()
    audio = read_session_audio(path)
    assert [(start, len(pcm)) for start, pcm in audio.runs] == [(0, 640), (640, 320)]
    assert audio.frames_stored == 3 and [g.reason for g in audio.gaps] == ["device_lost"]
    with pytest.raises(ValueError):
        SessionLog(path, fsync=False).append_frame(5, 2000, b"")


def test_span_detector_splits_at_timeline_jumps_and_pauses() -> None:
    detector = SpanDetector()
    spans = detector.feed(0, loud(8000) + bytes(16000) + loud(3200))  # pause of 0.5 s closes the first span
    spans += detector.feed(100_000, loud(1600))  # a jump closes the open one
    spans += detector.flush()
    assert [(s.start, s.end) for s in spans] == [(0, 8000), (16000, 19200), (100_000, 101_600)]
    assert SpanDetector().feed(0, bytes(32000)) == []


def test_decode_chunk_accepts_pcm_and_rejects_odd_or_wrong_rate() -> None:
    assert decode_chunk(b"\x01\x00\x02\x00") == b"\x01\x00\x02\x00"
    with pytest.raises(ChunkRejected):
        decode_chunk(b"\x01\x00\x02")
    with pytest.raises(ChunkRejected):
        decode_chunk(b"\x01\x00", sample_rate=48000)


def test_medisearch_request_rules() -> None:
    for body in ({"conversation": [], "id": "x"}, {"conversation": ["q", "a"], "id": "x"},
                 {"conversation": ["q"]}, {"conversation": ["q"], "id": "x", "settings": {"model_type": "huge"}},
                 {"conversation": ["q"], "id": "x", "settings": {"filters": {"sources": ["tv"]}}}):
        with pytest.raises(SearchInvalid):
            parse_request(body)
    request = parse_request({"conversation": ["diabetes?"], "id": "x", "settings": {"followup_count": 40}})
    assert request.followup_count == 6
    long = parse_request({"conversation": ["diabetes " * 3000], "id": "x"})
    assert event_stream(long) == [{"event": "error", "id": "x", "data": "error_out_of_tokens"}]


def test_knobs_are_one_shot_and_counted() -> None:
    knobs = Knobs()
    knobs.fail_next("/api/login", 2, status=503)
    assert [bool(knobs.take_rest_fault("/api/login")) for _ in range(3)] == [True, True, False]
    knobs.refuse_handshake(429, retry_after=1.5, count=1)
    assert knobs.take_refusal() is not None and knobs.take_refusal() is None
    knobs.drop_after(4, connections=1)
    assert (knobs.take_drop(), knobs.take_drop()) == (4, None)
    with pytest.raises(ValueError):
        knobs.fail_search("error_unknown")
