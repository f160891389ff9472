"""The control protocol (pure) and the device-watch policies (pure): parsing, validation, formatting, backoff."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.control import (
    MAX_LINE_BYTES,
    DaemonStatus,
    GetStatus,
    ProtocolViolation,
    Response,
    StartVisit,
    StopVisit,
    encode_request,
    encode_response,
    failure,
    format_status,
    ok,
    parse_request,
    parse_response,  # fmt: skip
)
from agent.device_watch import ReopenPolicy, block_power, level_dbfs, missed_samples


@pytest.mark.parametrize("request_", [StartVisit(appointment_id="apt_123"), StopVisit(), GetStatus()])
def test_requests_round_trip(request_: StartVisit | StopVisit | GetStatus) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line) == request_


def test_wire_form_is_documented_json() -> None:
    assert encode_request(StartVisit(appointment_id="a1")) == b'{"cmd":"visit_start","appointment_id":"a1"}\n'
    assert parse_request(b'{"cmd": "status"}\r\n') == GetStatus()
    assert parse_request(b'  {"cmd":"visit_start","appointment_id":"  a1 "}') == StartVisit(appointment_id="a1")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "empty request"),
        (b"   \n", "empty request"),
        (b"start visit\n", "bad request: not a JSON object"),
        (b'{"cmd":"reboot"}', "bad request"),
        (b'{"cmd":"visit_start"}', "bad request"),
        (b'{"cmd":"visit_stop","force":true}', "bad request"),
        (b'{"cmd":"visit_start","appointment_id":5}', "bad request"),
        (b'{"cmd":"visit_start","appointment_id":""}', "an appointment id is needed"),
        (b'{"cmd":"visit_start","appointment_id":"../etc/passwd"}', "appointment id may only contain"),
        (b'{"cmd":"visit_start","appointment_id":"a b"}', "appointment id may only contain"),
        (b'{"cmd":"visit_start","appointment_id":"' + b"a" * 129 + b'"}', "appointment id longer than 128"),
        (b'{"cmd":"status","pad":"' + b"x" * MAX_LINE_BYTES + b'"}', "request longer than"),
        (b'{"cmd":"visit_start","appointment_id":"\xff\xfe"}', "bad request: not UTF-8 text"),
        (b'{"cmd":"\xc3\x28"}', "bad request: not UTF-8 text"),
        (b"\x00\x01\x02\xfe\xff", "bad request: not a JSON object"),
    ],
)
def test_bad_requests_get_one_line_reasons(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        parse_request(line)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_responses_round_trip_and_errors_are_one_line() -> None:
    status = DaemonStatus(state="recording", device="mic 'USB' 48000 Hz x1", device_state="open",
                          input_level_dbfs=-31.5, vad_share=0.25, connection="streaming", stream_mode="resume",
                          ring_fill_s=1.5, reconnects=2, upload_queue=3, visit_seconds=12.0,
                          appointment_id="a1")  # fmt: skip
    assert parse_response(encode_response(ok(status, "recording"))) == Response(ok=True, status=status,
                                                                                  message="recording")  # fmt: skip
    bad = failure("first line\nsecond line")
    assert bad.error == "first line second line"
    assert parse_response(encode_response(bad)) == bad
    with pytest.raises(ProtocolViolation):
        parse_response(b"HTTP/1.1 400 Bad Request\r\n")


def test_status_text_names_every_figure() -> None:
    status = DaemonStatus(state="recording", device="mic 'USB' 48000 Hz x1", device_state="lost",
                          input_level_dbfs=None, vad_share=0.25, connection="backoff", stream_mode="resume",
                          ring_fill_s=1.5, reconnects=2, upload_queue=3, visit_seconds=12.0, gap_seconds=2.0,
                          appointment_id="a1", pending_reload=True)  # fmt: skip
    text = format_status(status)
    for expected in ("state:", "recording (configuration reload waits", "visit:", "12.0 s recorded",
                     "2.0 s lost to device gaps", "(lost)", "input level:  -", "voice share:  25%",
                     "backoff (resume mode)", "ring fill:    1.5 s", "reconnects:   2", "3 visit(s) waiting"):
        assert expected in text, expected
    idle = format_status(DaemonStatus(input_level_dbfs=-20.04))
    assert "visit:" not in idle and "-20.0 dBFS" in idle


def test_reopen_backoff_doubles_to_the_cap_and_resets() -> None:
    policy = ReopenPolicy(cap_s=3.0)
    assert [policy.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    policy.reset()
    assert policy.next_delay() == 0.5


def test_missed_samples_is_the_wall_clock_hole_and_ignores_jitter() -> None:
    assert missed_samples(None, 10.0, 48000) == 0
    assert missed_samples(10.0, 10.01, 48000) == 0
    assert missed_samples(10.0, 12.5, 48000) == 120000
    assert missed_samples(10.0, 9.9, 48000) == 0


def test_level_of_full_scale_and_silence() -> None:
    square = np.ones((480, 1), dtype=np.float32)
    assert level_dbfs(block_power(square)) == 0.0
    tone = (0.1 * np.sin(np.arange(4800) * 2 * np.pi / 48)).astype(np.float32)
    level = level_dbfs(block_power(tone))
    assert level is not None and math.isclose(level, -23.01, abs_tol=0.05)
    assert level_dbfs(block_power(np.zeros(10, dtype=np.float32))) is None


def test_deeply_nested_request_or_answer_is_a_protocol_violation_not_a_recursion_error() -> None:
    deep = b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b', "cmd": "status"}'
    assert len(deep) < MAX_LINE_BYTES
    with pytest.raises(ProtocolViolation, match="nested too deeply"):
        parse_request(deep)
    with pytest.raises(ProtocolViolation, match="nested too deeply"):
        parse_response(deep)


def test_pause_resume_and_consent_on_the_wire() -> None:
    from agent.control import PauseVisit, ResumeVisit

    assert parse_request(b'{"cmd":"visit_pause"}') == PauseVisit()
    assert parse_request(b'{"cmd":"visit_resume"}') == ResumeVisit()
    assert parse_request(b'{"cmd":"visit_start","appointment_id":"a1","consent":" Given"}') == StartVisit(
        appointment_id="a1", consent="given")
    with pytest.raises(ProtocolViolation, match=r"^unknown consent 'maybe': use given, declined or not-asked$"):
        parse_request(b'{"cmd":"visit_start","appointment_id":"a1","consent":"maybe"}')
