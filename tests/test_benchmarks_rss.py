"""benchmarks.rss groups /proc/PID/smaps by mapping: a fixed smaps text, then this very process."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.rss import ANON, CLEAN_FILE, breakdown, parse_smaps, summary

SMAPS = """\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
Private_Dirty:       100 kB
7f00a0000000-7f00a0100000 r-xp 00000000 08:01 123   /usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_a52.so
Size:               1024 kB
Rss:                 300 kB
Shared_Clean:         50 kB
Private_Clean:       250 kB
7f00a0100000-7f00a0101000 rw-p 00100000 08:01 123   /usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_a52.so
Size:                  4 kB
Rss:                   4 kB
Private_Dirty:         4 kB
7f00b0000000-7f00b0400000 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                2048 kB
Private_Dirty:      2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
VmFlags: rd wr mr mw me gd ac
"""


def test_smaps_text_is_grouped_by_library_and_anonymous_mappings() -> None:
    groups = parse_smaps(SMAPS)
    assert groups == {"[heap]": 100, "libasound_module_pcm_a52.so": 304, ANON: 2048, "[stack]": 12,
                      CLEAN_FILE: 300}  # fmt: skip
    line = summary(groups)
    assert line.startswith("Rss 2.4 MB = anonymous 2.1 + file-backed 0.3 (of it 0.3 clean file pages); largest: ")
    assert "[anon] 2.0" in line


def test_this_process_adds_up_to_its_vmrss() -> None:
    groups = breakdown(os.getpid())
    assert "libc.so.6" in groups or any(name.startswith("libc") for name in groups)
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    vmrss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    total = sum(v for k, v in groups.items() if k != CLEAN_FILE)
    assert abs(total - vmrss) < 0.1 * vmrss  # the two reads are moments apart; the process allocates in between
