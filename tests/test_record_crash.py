"""Crash safety of the plaintext writer (``record --plaintext``): ``kill -9`` the real process at random moments,
then repair. (Sealed archives: tests/test_sealed_kill.py.)

Ten processes record the bundled dialogue in real time (in parallel, to keep the suite short), each into its
own folder, and each is killed
with SIGKILL 0.5-3 s after it started writing. Half the ``.partial`` files are repaired by ``medisync-agent
repair``, the other half by the repair a new ``record`` does at start. Every result must be a WAV that ``wave``
and ``soxi`` accept, hold every whole sample that was on disk, at least everything the process had reported as
archived (its last progress line, at most 1 s of audio before the kill), and be sample-for-sample the start of
what the same pipeline produces in-process.
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
from typing import IO

import pytest

from tests.plugins.archive import DIALOGUE, REPO, agent_command, run_agent, soxi_samples, wav_pcm

KILLS = 10
SEED = int(os.environ.get("MEDISYNC_KILL_SEED", "20261121"))
PROGRESS = re.compile(r"INFO agent\.recorder: archived (\d+) samples$")
STARTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO agent\.recorder: recording ")


@dataclass
class Victim:
    out: Path
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    kill_at: float | None = None
    killed_wall: float = 0.0
    size_at_kill: int = 0

    @property
    def partial(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    def started_writing(self) -> bool:
        return self.partial.exists() and self.partial.stat().st_size > 44

    def last_reported(self) -> int:
        found = [int(m.group(1)) for line in self.log_path.read_text().splitlines() if (m := PROGRESS.search(line))]
        return found[-1] if found else 0

    def estimated_produced(self) -> int:
        """Samples a real-time source had delivered by the kill, from the start log line's wall clock (ms)."""
        for line in self.log_path.read_text().splitlines():
            if m := STARTED.match(line):
                started = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return round((self.killed_wall - started) * 16000)
        return 0


def start_victim(out: Path) -> Victim:
    log_path = out.with_name(out.stem + ".log")
    log = log_path.open("wb")
    argv = agent_command("-v", "record", "--source", f"file:{DIALOGUE}", "--pace", "realtime", "--plaintext",
                         "--out", str(out))  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    return Victim(out, proc, log, log_path)


def kill_all_at_random_moments(victims: list[Victim], rng: random.Random) -> None:
    deadline = time.monotonic() + 90
    pending = list(victims)
    while pending:
        now = time.monotonic()
        assert now < deadline, "timed out waiting for the recorders to start"
        for v in list(pending):
            assert v.proc.poll() is None, f"record exited early ({v.proc.returncode}): {v.log_path.read_text()}"
            if v.kill_at is None:
                if v.started_writing():
                    v.kill_at = now + rng.uniform(0.5, 3.0)  # the fault injection
            elif now >= v.kill_at:
                v.proc.send_signal(signal.SIGKILL)
                v.killed_wall = time.time()
                v.proc.wait(timeout=30)
                v.log.close()
                v.size_at_kill = v.partial.stat().st_size
                pending.remove(v)
        time.sleep(0.002)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_repair(tmp_path: Path, dialogue_pcm: bytes) -> None:
    rng = random.Random(SEED)
    # One folder per victim: a victim starting late would otherwise (rightly) repair a sibling killed earlier.
    folders = [tmp_path / f"{'cmd' if i % 2 else 'start'}{i}" for i in range(KILLS)]
    for folder in folders:
        folder.mkdir()
    victims = [start_victim(folder / "visit.wav") for folder in folders]
    try:
        kill_all_at_random_moments(victims, rng)
    finally:
        for v in victims:
            if v.proc.poll() is None:
                v.proc.kill()
                v.proc.wait()
    for v in victims:
        assert v.proc.returncode == -signal.SIGKILL
        assert v.partial.exists() and not v.out.exists()
    by_command = [v for v in victims if v.out.parent.name.startswith("cmd")]
    on_start = [v for v in victims if v not in by_command]

    repaired = run_agent("repair", *(str(v.partial) for v in by_command))
    assert repaired.returncode == 0, repaired.stderr
    restarts = {
        v.out: subprocess.Popen(
            agent_command(
                "record",
                "--source",
                f"file:{DIALOGUE}",
                "--pace",
                "fast",
                "--duration",
                "0.1",
                "--plaintext",
                "--out",
                str(v.out.with_name("next.wav")),
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in on_start
    }
    restarted = {out: proc.communicate(timeout=60) for out, proc in restarts.items()}
    assert all(proc.returncode == 0 for proc in restarts.values()), restarted

    losses = []
    for v in victims:
        pcm = wav_pcm(v.out)
        samples = len(pcm) // 2
        assert not v.partial.exists()
        assert soxi_samples(v.out) == samples
        assert samples == (v.size_at_kill - 44) // 2, "repair dropped samples that were on disk"
        assert samples >= v.last_reported(), "repair lost audio the process had reported as archived"
        assert pcm == dialogue_pcm[: len(pcm)], f"{v.out.name}: repaired audio differs from the pipeline's"
        summary = f"{v.out} ({samples / 16000:.2f} s)"
        if v in by_command:
            assert f"repaired {summary}" in repaired.stdout.splitlines()
        else:
            assert restarted[v.out][0].splitlines()[0] == f"repaired interrupted recording {summary}"
        losses.append((v.estimated_produced() - samples) / 16000)
    print(f"kill -9: {KILLS} kills, estimated loss per kill (s): {', '.join(f'{x:.3f}' for x in losses)}")
