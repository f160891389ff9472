"""The benchmark harness must not rot: a tiny run of every scenario produces a report and plots with numbers.

No timing asserts: only that each scenario ran end to end (agents confirmed by the server) and reported figures.
Writes to a temporary folder, never to benchmarks/RESULTS.md. Needs PulseAudio (the live scenario) like the
microphone tests; ffmpeg is optional (its floor figure is then reported as skipped).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main as bench_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.pulse
def test_quick_harness_writes_report_and_plots(tmp_path: Path, pulse_server: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert bench_main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "RESULTS.md").read_text()
    print(report)  # shown by pytest when an assertion below fails
    for name in ("throughput", "live", "replay", "memory", "fleet", "startup"):
        assert f"## {name}:" in report
        assert f"== {name}:" in printed
    assert "WARNING" not in report, "a benchmark visit was not confirmed by the server"
    assert "nproc" in report and "CPU model" in report and "python -m benchmarks" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "|---" not in line]
    values = [row.split("|")[2].strip().split()[0] for row in rows if row.count("|") >= 5]
    numbers = [float(v) for v in values if re.fullmatch(r"-?\d+(\.\d+)?", v)]
    assert len(numbers) >= 25 and all(math.isfinite(x) for x in numbers)
    assert re.search(r"capture-to-wire p95 \| \d", report)
    assert re.search(r"real-time factor to last ack \| \d", report)
    assert re.search(r"`status`, daemon running \(its answer\), user\+sys \| \d", report)
    assert re.search(r"daemon RSS idle, microphone open .* \| \d", report)
    if shutil.which("ffmpeg"):
        assert re.search(r"agent/ffmpeg CPU ratio, efficient \(same window\) \| \d", report)
    for png in ("latency.png", "cpu_per_audio_hour.png", "replay_catch_up.png", "memory.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        assert f"![{png}]({png})" in report


def test_help_documents_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    assert "--quick" in out and "--only" in out and "RESULTS.md" in out
