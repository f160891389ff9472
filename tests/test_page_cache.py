"""``python -m agent.page_cache``: an installed environment's files leave the page cache (issue 11, daemon RSS).

Residency is read with ``mincore`` on a private mapping of the file (it reports the page cache without touching a
page), before and after, on a file written the way pip writes: in 1 MB writes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.page_cache import drop_cached

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


def filesystem_of(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it in /proc/self/mountinfo)."""
    best, kind = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, fstype = fields[4], fields[fields.index("-") + 1]
        if str(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (``mincore``; faults nothing in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        view = (ctypes.c_char * size).from_buffer(mapped)
        try:
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vector)
        finally:
            del view
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vector)


IN_MEMORY = ("tmpfs", "ramfs")
"""File systems whose pages are the files' only copy: nothing there can leave the page cache."""


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    # /tmp is a tmpfs on many machines (Debian 13's default): then the files go beside the checkout's own .venv,
    # which is on disk like the environments the installers drop (and ignored by git)
    if filesystem_of(tmp_path) not in IN_MEMORY:
        yield from _installed_in(tmp_path)
        return
    beside = ROOT / ".venv"
    if not beside.is_dir() or filesystem_of(beside) in IN_MEMORY:
        pytest.skip("neither the temporary folder nor the checkout's .venv is on a disk (both tmpfs)")
    with tempfile.TemporaryDirectory(dir=beside, prefix="test-page-cache-") as folder:
        yield from _installed_in(Path(folder))


def _installed_in(folder: Path) -> Iterator[Path]:
    venv = folder / "venv"
    (venv / "lib").mkdir(parents=True)
    with (venv / "lib" / "library.so").open("wb") as f:
        for i in range(4):
            f.write(bytes([i + 1]) * MB)  # pip's way: large writes
    (venv / "lib" / "link.so").symlink_to(venv / "lib" / "library.so")
    os.mkfifo(venv / "lib" / "fifo")  # opening it for reading would wait for a writer: must be passed over
    yield venv


def test_the_files_pages_leave_the_page_cache(installed: Path) -> None:
    library = installed / "lib" / "library.so"
    assert resident_pages(library) == 4 * MB // mmap.PAGESIZE  # just written: all cached
    done = drop_cached([installed])
    assert (done.files, done.bytes, done.skipped) == (1, 4 * MB, [])  # the link and the FIFO are not files to drop
    assert resident_pages(library) == 0
    assert library.read_bytes() == b"".join(bytes([i + 1]) * MB for i in range(4))  # nothing lost


def test_the_command_reports_what_it_dropped(installed: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.page_cache", str(installed)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"page cache: dropped the cached pages of 1 files (4 MB) under {installed}\n"
    assert resident_pages(installed / "lib" / "library.so") == 0


@pytest.mark.parametrize(("argv", "message"), [
    ([], "usage: python -m agent.page_cache DIR ..."),
    (["--all"], "usage: python -m agent.page_cache DIR ..."),
    (["/nonexistent/venv"], "page cache: not a folder: /nonexistent/venv"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_a_message(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.page_cache", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(message)
    assert proc.stdout == ""
