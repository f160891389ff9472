"""Drop a freshly installed environment's files from the page cache (issue 11, the daemon's RSS).

pip writes each file of a wheel in large writes, and Linux keeps what was written as large page-cache folios (1 MB
on the benchmark machine's ext4). A process that maps such a file maps the whole folio at its first touch, so a
daemon started right after an install measured ~6 MB more resident than the same daemon once the files had been
read back from disk (numpy's ``_multiarray_umath`` 6.0 instead of 2.9 MB, OpenBLAS 3.7 instead of 1.5, libgfortran
1.4 instead of 0: benchmarks/NOTES.md, "RSS, 2026-11-28"). After a reboot a device is in the second state anyway;
the installers (``tests/setup.sh``, ``systemd/install.sh``) call this once after pip, so the first start is too.

Nothing is lost: everything is written back first (``sync``), and ``POSIX_FADV_DONTNEED`` drops only clean pages
no process has mapped; what is read again comes back at the kernel's usual granularity. Run it as
``python -m agent.page_cache DIR ...``; it reports what it dropped and what it could not open, and never fails an
install for a file it could not open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dropped:
    """What :func:`drop_cached` did."""

    files: int = 0
    """Regular files advised."""
    bytes: int = 0
    """Their total size in bytes (what may have left the cache, not what was cached)."""
    skipped: list[str] = field(default_factory=list)
    """``path: reason`` for each file that could not be opened or advised."""


def regular_files(top: Path) -> Iterator[Path]:
    """Every regular file below ``top`` (symbolic links are not followed: their targets are elsewhere)."""
    for root, _dirs, names in os.walk(top):
        for name in names:
            path = Path(root, name)
            if not path.is_symlink() and path.is_file():
                yield path


def drop_cached(tops: Iterable[Path]) -> Dropped:
    """``sync``, then ask the kernel to drop the cached pages of every regular file below ``tops``."""
    os.sync()  # DONTNEED drops clean pages only: pip's fresh writes must be on disk first
    done = Dropped()
    for top in tops:
        for path in regular_files(top):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    done.bytes += os.fstat(fd).st_size
                finally:
                    os.close(fd)
            except OSError as exc:
                done.skipped.append(f"{path}: {exc.strerror or exc}")
                continue
            done.files += 1
    return done


def main(argv: list[str]) -> int:
    if not argv or any(arg.startswith("-") for arg in argv):
        print("usage: python -m agent.page_cache DIR ...\n" + (__doc__ or "").split("\n\n")[0], file=sys.stderr)
        return 2
    tops = [Path(arg) for arg in argv]
    missing = [str(top) for top in tops if not top.is_dir()]
    if missing:
        print(f"page cache: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    done = drop_cached(tops)
    print(f"page cache: dropped the cached pages of {done.files} files ({done.bytes / 1e6:.0f} MB) under "
          f"{', '.join(map(str, tops))}")  # fmt: skip
    for line in done.skipped[:5]:
        print(f"page cache: skipped {line}", file=sys.stderr)
    if len(done.skipped) > 5:
        print(f"page cache: skipped {len(done.skipped) - 5} more files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
