"""The agent keeps numpy's BLAS on one thread (agent/__init__.py): OpenBLAS's extra threads busy-wait after each
matrix product and burned a second core on the fast file path (benchmarks/NOTES.md, throughput).

Each check runs in a fresh interpreter with ``OPENBLAS_NUM_THREADS`` unset and counts the process's threads in
/proc after the resampler's matrix products (RationalFir at 22.05 kHz).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, os, sys
if sys.argv[1] == "agent-first":
    import agent  # what every agent command does first (the console script imports agent.cli)
import numpy as np
from agent.audio.decimate import RationalFir
fir = RationalFir(22050)
out = [fir.process(np.ones(22050, dtype=np.float32)) for _ in range(3)]
print(json.dumps({"threads": len(os.listdir("/proc/self/task")), "env": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "samples": sum(len(o) for o in out)}))
"""


def probe(order: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", PROBE, order], capture_output=True, text=True, cwd=ROOT,
                          env={**clean, **env}, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
def test_the_agent_runs_numpy_on_one_thread() -> None:
    result = probe("agent-first")
    assert result == {"threads": 1, "env": "1", "samples": 3 * 16000}


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc/self/task").is_dir(),
                    reason="OpenBLAS starts extra threads only with 2 or more cores")  # fmt: skip
def test_without_the_agent_numpy_starts_a_thread_per_core() -> None:
    # The control: what the check above would see if agent/__init__.py did not set the variable.
    assert probe("numpy-first")["threads"] > 1


def test_a_value_from_the_environment_wins() -> None:
    assert probe("agent-first", OPENBLAS_NUM_THREADS="2")["env"] == "2"
