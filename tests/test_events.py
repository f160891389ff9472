"""The device state derived from the daemon's facts (agent.events): the table, the tracker, the event line."""

from __future__ import annotations

import json

import pytest

from agent.control import DaemonStatus
from agent.daemon_state import DaemonState, VisitSlot
from agent.event_hub import facts_of
from agent.events import Facts, StateTracker, derive_state, encode_event, parse_event, utc_stamp

REC = Facts(daemon_state="recording", connection="streaming", session_id="s-1")


@pytest.mark.parametrize(
    ("facts", "state", "reason"),
    [
        (Facts(), "idle", ""),
        (Facts(daemon_state="starting"), "idle", ""),
        (REC, "recording", ""),
        (Facts(daemon_state="recording", connection="-"), "recording", ""),  # stream disabled
        (Facts(daemon_state="recording", connection="connecting"), "recording", ""),  # the first dial
        (Facts(daemon_state="recording", connection="connecting", reconnects=1), "offline",
         "speech stream disconnected"),
        (Facts(daemon_state="recording", connection="backoff"), "offline", "speech stream disconnected"),
        (Facts(daemon_state="recording", connection="forbidden"), "offline", "speech stream disconnected"),
        (Facts(daemon_state="recording", connection="backoff", paused=True), "paused", "privacy pause"),
        (Facts(daemon_state="paused", connection="streaming"), "paused", "privacy pause"),
        (Facts(daemon_state="paused", archive_writable=False), "error", "archive not writable"),
        (Facts(daemon_state="recording", paused=True, device_lost=True), "error", "microphone lost"),
        (Facts(daemon_state="recording", archive_writable=False), "error", "archive not writable"),
        (Facts(archive_writable=False), "idle", ""),  # the last visit's archive problem is history
        (Facts(worker_problem="restarting (boom)"), "error", "background worker restarting"),
        (Facts(visit_failed=True), "error", "last visit failed"),
        (Facts(daemon_state="stopping"), "uploading", "visit ending, upload being queued"),
        (Facts(upload_queue=2), "uploading", "2 visit(s) to upload"),
        (Facts(upload_queue=2, uploads_unreachable=True), "offline", "MediSync unreachable, uploads waiting"),
        (Facts(uploads_unreachable=True), "idle", ""),
        (Facts(daemon_state="recording", connection="streaming", upload_queue=3), "recording", ""),
    ],
)
def test_derive_state(facts: Facts, state: str, reason: str) -> None:
    assert derive_state(facts) == (state, reason)


def test_tracker_emits_once_per_change_with_warnings_sorted() -> None:
    clock = iter([1_800_000_000.0 + i for i in range(10)])
    tracker = StateTracker(lambda: next(clock))
    first = tracker.observe(Facts())
    assert first is not None and (first.seq, first.state, first.warnings) == (1, "idle", [])
    assert tracker.observe(Facts()) is None
    rec = tracker.observe(REC)
    assert rec is not None and (rec.seq, rec.state, rec.session_id) == (2, "recording", "s-1")
    assert tracker.observe(REC) is None
    warned = tracker.observe(Facts(daemon_state="recording", session_id="s-1",
                                   warnings=frozenset({"mic_silent", "mic_clipping"})))  # fmt: skip
    assert warned is not None and warned.state == "recording" and warned.warnings == ["mic_clipping", "mic_silent"]
    cleared = tracker.observe(REC)
    assert cleared is not None and cleared.warnings == [] and cleared.seq == 4
    idle = tracker.observe(Facts(session_id="stale"))
    assert idle is not None and idle.session_id == ""  # a session id only while a visit runs
    assert tracker.current is idle


def test_event_line_is_one_json_object_with_ids_only() -> None:
    tracker = StateTracker(lambda: 1_795_000_000.25)
    event = tracker.observe(REC)
    assert event is not None
    line = encode_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert set(data) == {"seq", "time", "state", "reason", "warnings", "session_id"}
    assert data["time"] == "2026-11-18T11:06:40.250Z" == utc_stamp(1_795_000_000.25)
    assert parse_event(line) == event


def test_facts_of_status_keeps_appointment_out() -> None:
    status = DaemonStatus(state="recording", connection="backoff", reconnects=2, device_state="open",
                          appointment_id="appt-123", session_id="sess-9", upload_queue=1,
                          upload_worker="restarting (OSError)")  # fmt: skip
    facts = facts_of(status, visit_failed=False, uploads_unreachable=False)
    assert facts.worker_problem == "restarting (OSError)" and facts.session_id == "sess-9"
    assert "appt-123" not in repr(facts)
    assert not facts_of(DaemonStatus(upload_worker="starting"), visit_failed=False,
                        uploads_unreachable=False).worker_problem  # fmt: skip


def test_facts_of_status_names_microphone_problems_as_warnings_and_counts_a_due_upload() -> None:
    status = DaemonStatus(mic_problems=["silent", "no_data"])
    facts = facts_of(status, visit_failed=False, uploads_unreachable=True, upload_due=True)
    assert facts.warnings == {"mic_silent", "mic_no_data"}
    assert derive_state(facts) == ("offline", "MediSync unreachable, uploads waiting")  # the count lags; due counts


def test_visit_slot_tells_every_move() -> None:
    moves: list[str] = []
    slot = VisitSlot(on_change=lambda: moves.append(slot.state.value))
    slot.move(DaemonState.STARTING)
    slot.move(DaemonState.RECORDING)
    slot.end()
    slot.end()  # already idle: no move, no call
    assert moves == ["starting", "recording", "idle"]
