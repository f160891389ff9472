"""kill -9 of 20 real ``run`` processes recording sealed visits, at random moments; then ``uploads retry``.

Each visit records the bundled dialogue in real time (five at a time, each in its own agent folder, against one
local server) and is killed with SIGKILL 2.5-9 s after its archive appeared. ``uploads retry --now`` then recovers
it (the journal names the appointment; repair keeps every whole chunk and seals the last one as final) and
uploads it. For every visit:

* the repaired archive is sealed, and its audio is exactly the start of the pipeline's output (same samples, same
  timeline indices);
* at most one unsealed chunk was lost: the archive holds at least the audio the process had reported as archived
  (its last "archived N samples" line) less 64 KiB (2.048 s), and the loss against the audio the real-time source
  had delivered by the kill (wall clock) is printed (the figure in the report);
* it was uploaded exactly once and the server holds the repaired plaintext, byte for byte.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.archive import DIALOGUE, REPO
from tests.plugins.keys import is_sealed_file, uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, recording_files, stored_recording, wav_samples

pytestmark = pytest.mark.slow

VISITS = 20
AT_ONCE = 5
SEED = int(os.environ.get("MEDISYNC_KILL_SEED", "20261126"))
CHUNK_SAMPLES = 65536 // 2
PROGRESS = re.compile(r"INFO agent\.recorder: archived (\d+) samples$")
STARTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO agent\.recorder: recording ")


@dataclass
class Visit:
    home: AgentHome
    appointment: str
    log: Path
    proc: object = None
    kill_at: float | None = None
    killed_wall: float = 0.0

    def last_reported(self) -> int:
        found = [int(m.group(1)) for line in self.log.read_text().splitlines() if (m := PROGRESS.search(line))]
        return found[-1] if found else 0

    def delivered_by_kill(self) -> int:
        """Samples the real-time source had delivered when it was killed (start log line to the kill, wall clock)."""
        for line in self.log.read_text().splitlines():
            if m := STARTED.match(line):
                started = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return round((self.killed_wall - started) * 16000)
        return 0


def start(visit: Visit) -> None:
    argv = visit.home.argv("run", "--appointment", visit.appointment, "--source", f"file:{DIALOGUE}", "--pace",
                           "realtime", "--no-stream")  # fmt: skip
    argv.insert(3, "-v")  # python -m agent -v run ...: the recorder's progress lines
    with visit.log.open("wb") as out:
        visit.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=visit.home.env())


def kill_at_random_moments(batch: list[Visit], rng: random.Random) -> None:
    deadline = time.monotonic() + 120
    pending = list(batch)
    while pending:
        now = time.monotonic()
        assert now < deadline, "timed out waiting for the visits to start"
        for v in list(pending):
            proc = v.proc
            assert proc.poll() is None, f"run exited early: {v.log.read_text()}"  # type: ignore[attr-defined]
            if v.kill_at is None:
                if v.home.partials():
                    v.kill_at = now + rng.uniform(2.5, 9.0)  # the fault injection
            elif now >= v.kill_at:
                os.kill(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                v.killed_wall = time.time()
                assert proc.wait(30) == -signal.SIGKILL  # type: ignore[attr-defined]
                pending.remove(v)
        time.sleep(0.005)


def test_kill_9_twenty_sealed_visits_then_repair_and_upload_once(
    medisync_server: RunningServer, tmp_path: Path, dialogue_pcm: bytes
) -> None:
    rng = random.Random(SEED)
    visits = [
        Visit(AgentHome(tmp_path / f"agent{i}", api_url=medisync_server.api_url, speech_url=medisync_server.speech_url,
                        email=medisync_server.email, password=medisync_server.password),
              medisync_server.create_appointment(), tmp_path / f"run{i}.log")
        for i in range(VISITS)
    ]  # fmt: skip
    for first in range(0, VISITS, AT_ONCE):
        batch = visits[first : first + AT_ONCE]
        for v in batch:
            start(v)
        try:
            kill_at_random_moments(batch, rng)
        finally:
            for v in batch:
                if v.proc.poll() is None:  # type: ignore[attr-defined]
                    v.proc.kill()  # type: ignore[attr-defined]
                    v.proc.wait()  # type: ignore[attr-defined]

    losses, lags = [], []
    for v in visits:
        [partial] = v.home.partials()
        assert is_sealed_file(partial) and v.home.journals() != [] and v.home.items() == []
        retried = v.home.run("uploads", "retry", "--now")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert "queued an interrupted earlier visit" in retried.stderr
        assert v.home.partials() == [] and v.home.journals() == []
        [wav] = v.home.wavs()
        assert is_sealed_file(wav)
        pcm = wav_samples(wav)  # decrypted by Debian's age
        samples = len(pcm) // 2
        assert pcm == dialogue_pcm[: len(pcm)], f"{wav.name}: repaired audio differs from the pipeline's"
        assert samples >= v.last_reported() - CHUNK_SAMPLES, "lost more than the unsealed chunk"
        assert (samples + 22) % CHUNK_SAMPLES == 0  # whole chunks (the first holds the 44-byte header)
        assert stored_recording(medisync_server, v.appointment) == uploaded_bytes(wav)
        [item] = v.home.items()
        assert item["state"] == "done"
        losses.append((v.delivered_by_kill() - samples) / 16000)
        lags.append((v.last_reported() - samples) / 16000)
    assert len(recording_files(medisync_server)) == VISITS  # each uploaded exactly once
    print(f"kill -9 of {VISITS} sealed visits: loss against the source's delivery by the kill (s): "
          f"{', '.join(f'{x:.3f}' for x in losses)}; max {max(losses):.3f}; against the last progress line: "
          f"max {max(lags):.3f}")  # fmt: skip
