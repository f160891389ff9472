"""Issue 13: the visit audit trail after 20 ``kill -9`` of real ``medisync-agent run`` processes at random points.

Each visit gets its own appointment. After every kill the trail must read (a line torn by the kill is skipped and
counted, never fatal), and each visit's events must be a prefix of the full sequence, in order: what happened
before the kill is there, nothing after it. Cross-checked with the disk: a visit whose recording exists (journal or
queue item) has its ``consent`` and ``started`` lines (written, fsynced, before anything is on disk). A visit
killed while recording is queued by the next start (``archived`` with reason ``recovered``); a final ``uploads
retry --now`` delivers the rest, and every delivered recording has its ``upload_confirmed`` line (reason ``late``
when the kill fell between the item marked done and its line: the next start writes it). A kill between queuing a
finished visit's recording and its ``stopped``/``archived`` lines: the next start writes ``archived`` (reason
``late``), so the trail still says the recording was kept.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from agent.audit_log import read_events
from tests.plugins.archive import DIALOGUE
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome

FULL = ["consent", "started", "stopped", "archived", "upload_confirmed"]
"""A visit's events in order (no pause and no lost audio in these runs; gap lines would sit before ``stopped``).
A visit killed while recording has ``consent``, ``started``, then (recovered by the next start, or by the final
``uploads retry``) ``archived`` with reason ``recovered`` and ``upload_confirmed``."""


def appointments_on_disk(home: AgentHome) -> set[str]:
    """Appointments with a recording on disk: a visit journal while recording, a queue item once queued."""
    found = {item["appointment_id"] for item in home.items()}
    for journal in home.journals():
        try:
            found.add(json.loads(journal.read_text())["appointment_id"])
        except ValueError:  # torn by the kill (written atomically, so not expected)
            continue
    return found


@pytest.mark.slow
def test_audit_trail_survives_twenty_kill_9_visits(medisync_server: RunningServer, tmp_path: Path) -> None:
    home = AgentHome(tmp_path / "agent", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                     email=medisync_server.email, password=medisync_server.password)  # fmt: skip
    rng = random.Random(13)
    audit_dir = home.root / "audit"
    appointments: list[str] = []
    kills = 0
    while kills < 20:
        assert len(appointments) < 60, "the processes keep finishing before the kill"
        appointment = medisync_server.create_appointment()
        appointments.append(appointment)
        duration = rng.uniform(0.5, 3.0)  # real time: the visit ends by itself, then stream end and upload
        proc = home.popen("run", "--appointment", appointment, "--source", f"file:{DIALOGUE}", "--duration",
                          f"{duration:.2f}", log=tmp_path / f"run-{len(appointments)}.log")  # fmt: skip
        time.sleep(rng.uniform(0.5, duration + 1.2))  # the random kill point
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(60)
        found = read_events(audit_dir)  # never raises on a torn line
        assert found.unreadable <= kills
    # One visit more, not killed: under load every random kill point can fall before a visit's end (seen in a
    # fresh-clone CI run), and the full trail must still be shown once; the kills above test the prefixes.
    appointments.append(last := medisync_server.create_appointment())
    finished = home.run("run", "--appointment", last, "--source", f"file:{DIALOGUE}", "--duration", "1.0")
    assert finished.returncode == 0, finished.stderr
    retry = home.run("uploads", "retry", "--now")  # recovers the last killed visit too, and uploads everything
    assert retry.returncode == 0, retry.stderr
    found = read_events(audit_dir)
    on_disk = appointments_on_disk(home)
    done = {i["appointment_id"] for i in home.items() if i["state"] == "done"}
    print(f"audit after {kills} kills in {len(appointments)} runs: {len(found.events)} events, "
          f"{found.unreadable} torn line(s)")
    reached, recovered = [], 0
    for appointment in appointments:
        visit_ids = {e.visit for e in found.events if e.appointment == appointment and e.visit}
        assert len(visit_ids) <= 1
        visit_names = [e.event for e in found.events if e.visit in visit_ids] if visit_ids else []
        upload = [(e.event, e.reason) for e in found.events if not e.visit and e.appointment == appointment]
        if {("archived", "recovered"), ("archived", "late")} & set(upload):
            # killed while recording (queued by a later start), or after queuing it but before its end lines (the
            # later start writes 'archived' with reason 'late')
            recovered += 1
            assert visit_names == ["consent", "started"], f"{appointment}: {visit_names}"
            assert [n for n, _ in upload] == ["archived", "upload_confirmed"][: len(upload)]
        else:
            sequence = visit_names + [n for n, _ in upload]
            assert sequence == FULL[: len(sequence)], f"{appointment}: {sequence}"
        if appointment in on_disk:
            assert visit_names[:2] == ["consent", "started"], f"{appointment} was recording without its audit lines"
        if appointment in done:  # delivered: the trail says so (a kill between 'done' and its line: a later start)
            assert {("upload_confirmed", ""), ("upload_confirmed", "late")} & set(upload), f"{appointment}: {upload}"
        reached.append(len(visit_names) + len(upload))
    print(f"events per visit: {reached}; {recovered} killed visits recovered and uploaded by a later start")
    assert recovered > 0 and reached[-1] == len(FULL)
    # A visit killed before its first sample left nothing to recover (the next start removes its empty file): its
    # trail ends at "started". Every recording that exists is delivered, and its trail says so.
    assert {i["appointment_id"] for i in home.items()} == done
    listing = home.run("audit")
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == len(found.events)
