"""The visit's archive writer on a real full disk: it stops instead of raising, and resumes with the timeline kept.

The disk is a small tmpfs in a private mount namespace (``unshare -m``, root), filled by a filler file. A script
drives :class:`~agent.archive.resilient.ResilientArchiveWriter` (plaintext) or its sealed variant
(:class:`~agent.archive.sealed_writer.ResilientSealedWriter`) there with known audio and a fake clock, removes the
filler when told, and copies the archive out; the test reads it back with the stdlib ``wave`` module (a sealed one
decrypted by Debian's ``age`` first).

Sealed files grow in 64 KiB chunks (65552 bytes sealed): its tmpfs leaves room for one chunk, so writing stops
when the second is sealed (about 4.1 s in) and the archive keeps the one chunk on disk (2.05 s); the missing
stretch starts there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.plugins.archive import REPO, soxi_samples, wav_pcm
from tests.plugins.keys import TEST_RECIPIENT_FILE, is_sealed_file

SCRIPT = r"""
import json, logging, os, sys
from pathlib import Path

import numpy as np

from agent.archive import resilient
from agent.archive.age import Recipient
from agent.archive.resilient import ResilientArchiveWriter
from agent.archive.sealed_writer import ResilientSealedWriter
from agent.audio.types import Frame
from agent.settings import ArchiveSettings

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
folder, filler, free_after_s, total_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
recipient = Recipient.parse(Path(sys.argv[5]).read_text()) if len(sys.argv) > 5 else None
probes = []
real_fstatvfs = os.fstatvfs
now = [0.0]

def counting_fstatvfs(fd):
    probes.append(now[0])
    return real_fstatvfs(fd)

resilient.os.fstatvfs = counting_fstatvfs  # counts the attempts to write again (the writer's only statvfs)
pattern = np.random.default_rng(7).integers(-20000, 20000, size=int(16000 * total_s), dtype=np.int16)
if recipient is None:
    writer = ResilientArchiveWriter.create(folder / "visit.wav", ArchiveSettings(), clock=lambda: now[0])
else:
    writer = ResilientSealedWriter.create(folder / "visit.wav", ArchiveSettings(), clock=lambda: now[0],
                                          recipient=recipient)
stopped_at = freed_at = None
frame = 320
for start in range(0, len(pattern) - frame + 1, frame):
    writer.write_frames([Frame(start, pattern[start:start + frame].tobytes())])
    now[0] += 0.02
    if stopped_at is None and not writer.writable:
        stopped_at = now[0]
    if stopped_at is not None and freed_at is None and now[0] >= stopped_at + free_after_s:
        filler.unlink()
        freed_at = now[0]
writer.finish()
json.dump({"stopped_at": stopped_at, "freed_at": freed_at, "probes": probes, "position": writer.position,
           "archived": writer.archived_samples, "health": [writer.health.writable, writer.health.missing_samples],
           "missing": [[m.start, m.end, m.reason, m.filled] for m in writer.missing]}, sys.stdout)
"""


SEALED_FILLER = 924 * 1024
"""Leaves 100 KiB: the sealed header and one 65552-byte chunk fit, a second chunk does not."""
STOPS_AT_S = {False: (1.5, 2.1), True: (2.0, 2.1)}
"""Where the archive stops (seconds of the visit): plaintext after about 1.9 s; sealed at its one chunk on disk
(2.05 s: the second chunk, due at 4.1 s, could not be written and is dropped)."""


def run_on_full_tmpfs(tmp_path: Path, *, free_after_s: float, total_s: float = 8.0,
                      sealed: bool = False) -> tuple[dict, str, Path]:  # type: ignore[type-arg]  # fmt: skip
    """Run SCRIPT with the archive on a 1 MiB tmpfs holding a 960 KiB filler (room for about 1.9 s of audio)."""
    small, kept = tmp_path / "small", tmp_path / "kept"
    small.mkdir()
    kept.mkdir()
    (tmp_path / "writer.py").write_text(SCRIPT)
    shell = (
        f"mount -t tmpfs -o size=1024k tmpfs {small} && "
        f"head -c {SEALED_FILLER if sealed else 983040} /dev/zero > {small}/filler && "
        f"{{ {sys.executable} {tmp_path}/writer.py {small} {small}/filler {free_after_s} {total_s} "
        f"{TEST_RECIPIENT_FILE if sealed else ''}; rc=$?; "
        f"cp -a {small}/. {kept}/; exit $rc; }}"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", shell], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr, kept / "visit.wav"


def expected_pattern(total_s: float) -> np.ndarray:
    return np.random.default_rng(7).integers(-20000, 20000, size=int(16000 * total_s), dtype=np.int16)


@pytest.mark.parametrize("sealed", [False, True], ids=["plaintext", "sealed"])
def test_writing_stops_when_the_disk_is_full_and_resumes_with_silence_when_space_returns(tmp_path: Path,
                                                                                         sealed: bool) -> None:
    result, log, wav = run_on_full_tmpfs(tmp_path, free_after_s=2.5, sealed=sealed)
    assert is_sealed_file(wav) == sealed
    [(start, end, reason, filled)] = result["missing"]
    assert (reason, filled) == ("disk full", True)
    # Stopped where the tmpfs was full, resumed at the first probe after the filler went.
    low, high = STOPS_AT_S[sealed]
    assert low * 16000 < start < high * 16000
    freed_sample = round(result["freed_at"] / 0.02) * 320
    assert freed_sample <= end <= freed_sample + 16000 + 320
    # The archive, read back independently: every sample at its timeline index; the stretch is silence.
    pcm = np.frombuffer(wav_pcm(wav), dtype="<i2")
    pattern = expected_pattern(8.0)
    assert len(pcm) == result["position"] == result["archived"] == len(pattern) == soxi_samples(wav)
    assert np.array_equal(pcm[:start], pattern[:start])
    assert not pcm[start:end].any()
    assert np.array_equal(pcm[end:], pattern[end:])
    assert result["health"] == [True, end - start]
    # Tried again once per second of outage (the clock), never per frame, from when writing failed (for a sealed
    # archive that is when its next chunk was due, up to 2 s after the end of what it keeps).
    outage_s = end / 16000 - result["stopped_at"]
    assert outage_s - 1 <= len(result["probes"]) <= outage_s + 1
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(result["probes"], result["probes"][1:], strict=False))
    # One line when writing stopped, one when it resumed.
    warnings = [line for line in log.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        f"WARNING archive visit.wav stopped at {start / 16000:.2f} s of the visit (disk full): the "
        f"{start / 16000:.2f} s written are kept; capture and the live stream go on, writing is tried again every 1 s",
        f"WARNING archive visit.wav resumed at {end / 16000:.2f} s of the visit: {(end - start) / 16000:.2f} s "
        f"({start / 16000:.2f}-{end / 16000:.2f} s) are missing, silence in the archive keeps the visit's timeline",
    ]


@pytest.mark.parametrize("sealed", [False, True], ids=["plaintext", "sealed"])
def test_writing_never_resumes_without_space_and_the_saved_part_is_a_valid_wav(tmp_path: Path, sealed: bool) -> None:
    total_s = 12.0 if sealed else 8.0  # sealed writing stops later (4.1 s): as many seconds of trying
    result, log, wav = run_on_full_tmpfs(tmp_path, free_after_s=1e9, sealed=sealed, total_s=total_s)
    assert is_sealed_file(wav) == sealed
    [(start, end, reason, filled)] = result["missing"]
    assert (reason, filled) == ("disk full", False)
    assert end == result["position"] == int(total_s * 16000) // 320 * 320  # the open stretch ends with the visit
    pcm = np.frombuffer(wav_pcm(wav), dtype="<i2")
    assert len(pcm) == start == result["archived"] == soxi_samples(wav)
    assert np.array_equal(pcm, expected_pattern(total_s)[:start])
    assert result["health"] == [True, end - start]
    assert sum(line.startswith("WARNING") for line in log.splitlines()) == 1
    assert len(result["probes"]) >= 5  # it kept trying, about once a second
