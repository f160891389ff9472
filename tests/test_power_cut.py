"""Power cut simulation with the real CLI and real ``kill -9``, then what a person sees and does.

A visit (``medisync-agent run``, paced in real time) is killed with SIGKILL; then its journal is deleted, emptied,
torn or made deeply nested, as a power cut (or worse) leaves it. A queued visit's item is torn, deeply nested, or
given a ``../`` id. Each time ``uploads list`` (exit 0) shows the recording under NEEDS AN APPOINTMENT with the
command ``medisync-agent uploads assign FILE APPOINTMENT`` and the damaged file under QUARANTINED; the command (exit
0) queues it and ``uploads retry`` (exit 0) uploads it to the local server over loopback, byte-identical, every
sample the visit's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE, soxi_samples
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, poll, recording_files, stored_recording, wav_samples
from tests.test_run_crash import kill_9

pytestmark = pytest.mark.slow
ONE_SECOND = 44 + 16000 * 2
DEEP = b'{"appointment_id": "x", "z": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


def tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


JOURNAL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "torn": tear,
    "deeply nested": lambda p: p.write_bytes(DEEP),
}


def agent_home(root: Path, server: RunningServer) -> AgentHome:
    return AgentHome(root, api_url=server.api_url, speech_url=server.speech_url, email=server.email,
                     password=server.password)  # fmt: skip


def assign_and_upload(home: AgentHome, server: RunningServer, wav: Path, appointment: str) -> None:
    assigned = home.run("uploads", "assign", str(wav), appointment)
    assert assigned.returncode == 0, assigned.stderr
    assert f"queued {wav.name} as item" in assigned.stdout
    retried = home.run("uploads", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 uploaded" in retried.stdout
    assert stored_recording(server, appointment) == uploaded_bytes(wav)
    [item] = home.items()
    assert (item["state"], item["appointment_id"]) == ("done", appointment)


def test_kill_9_then_journal_lost_or_damaged_audio_listed_assigned_uploaded(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    homes = {case: agent_home(tmp_path / case.replace(" ", "-"), medisync_server) for case in JOURNAL_DAMAGE}
    appointments = {case: medisync_server.create_appointment() for case in JOURNAL_DAMAGE}
    procs = {case: home.popen("run", "--appointment", appointments[case], "--source", f"file:{DIALOGUE}", "--pace",
                              "realtime", log=home.root / "run.log") for case, home in homes.items()}  # fmt: skip
    try:
        for case, home in homes.items():
            poll(lambda h=home, c=case: any(p.stat().st_size > ONE_SECOND for p in h.partials())  # type: ignore[misc]
                 or procs[c].poll() is not None, f"a second of the {case} visit on disk")  # fmt: skip
            kill_9(procs[case])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for case, home in homes.items():
        [partial] = home.partials()
        on_disk = (partial.stat().st_size - 44) // 2
        [journal] = home.journals()
        JOURNAL_DAMAGE[case](journal)

        listed = home.run("uploads", "list")

        assert listed.returncode == 0, listed.stderr
        wav = home.archive / partial.name.removesuffix(".partial")
        assert home.partials() == [] and home.journals() == [] and home.items() == []
        assert "NEEDS AN APPOINTMENT" in listed.stdout, listed.stdout
        assert f"medisync-agent uploads assign {wav} APPOINTMENT" in listed.stdout
        if case != "deleted":
            assert "QUARANTINED" in listed.stdout and f"{journal.name}  unreadable visit journal" in listed.stdout
            assert (home.archive / "quarantine" / journal.name).exists()
        samples = wav_samples(wav)
        assert soxi_samples(wav) == len(samples) // 2
        assert len(samples) // 2 >= on_disk - 16000  # at most the last unsynced second before the kill
        assert samples == dialogue_pcm[: len(samples)]  # every sample kept is the visit's own, at its index

        assign_and_upload(home, medisync_server, wav, appointments[case])
        again = home.run("uploads", "list")
        assert "NEEDS AN APPOINTMENT" not in again.stdout
    assert len(recording_files(medisync_server)) == len(JOURNAL_DAMAGE)


def escape_the_folder(path: Path) -> None:
    item = json.loads(path.read_text())
    item["item_id"] = "../../../escaped"
    path.write_text(json.dumps(item))


ITEM_DAMAGE: dict[str, Callable[[Path], None]] = {
    "torn": tear,
    "deeply nested": lambda p: p.write_bytes(DEEP),
    "../ in its id": escape_the_folder,
}


def test_queued_visit_with_damaged_item_is_quarantined_listed_and_uploaded(
    medisync_server: RunningServer, tmp_path: Path
) -> None:
    homes = {case: agent_home(tmp_path / str(n), medisync_server) for n, case in enumerate(ITEM_DAMAGE)}
    appointments = {case: medisync_server.create_appointment() for case in ITEM_DAMAGE}
    medisync_server.knobs.fail_next("/api/recordings/add", 1000, status=500)  # the visits can only be queued
    for case, home in homes.items():
        done = home.run("run", "--appointment", appointments[case], "--source", f"file:{DIALOGUE}", "--pace", "fast",
                        "--duration", "2")  # fmt: skip
        assert done.returncode == 75, done.stderr
    medisync_server.knobs.reset()

    for case, home in homes.items():
        [item_file] = home.queue_dir.glob("*.json")
        [wav] = home.wavs()
        ITEM_DAMAGE[case](item_file)

        listed = home.run("uploads", "list")

        assert listed.returncode == 0, listed.stderr
        if case == "../ in its id":  # the file name is the id: the item stays usable and nothing escapes
            assert "NEEDS AN APPOINTMENT" not in listed.stdout and "QUARANTINED" not in listed.stdout
            assert f"{item_file.stem[:8]}  pending" in listed.stdout
            retried = home.run("uploads", "retry", "--now")
            assert retried.returncode == 0 and "1 uploaded" in retried.stdout, retried.stdout + retried.stderr
            assert stored_recording(medisync_server, appointments[case]) == uploaded_bytes(wav)
            assert not list(tmp_path.rglob("escaped*"))
            continue
        assert f"{item_file.name}  unreadable queue item" in listed.stdout, listed.stdout
        assert (home.queue_dir / "quarantine" / item_file.name).exists()
        assert f"medisync-agent uploads assign {wav} APPOINTMENT" in listed.stdout
        assign_and_upload(home, medisync_server, wav, appointments[case])
