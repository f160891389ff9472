"""The daemon's glibc malloc bounds (issue 11, RSS): every bound is asked for, a refusal is logged, no mallopt is no
change. The RSS they save is measured in benchmarks/ (``python -m benchmarks.rss --visit 20 10``), not here."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.malloc_bounds import ARENA_MAX, M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, bound_malloc


class FakeMallopt:
    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param == self.refuse else 1


def test_every_bound_is_asked_for() -> None:
    mallopt = FakeMallopt()
    assert bound_malloc(mallopt) is True
    assert dict(mallopt.calls) == {M_ARENA_MAX: ARENA_MAX, M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024}


def test_a_refused_bound_is_logged_and_the_others_still_asked(caplog: pytest.LogCaptureFixture) -> None:
    mallopt = FakeMallopt(refuse=M_ARENA_MAX)
    with caplog.at_level(logging.WARNING, logger="agent.malloc_bounds"):
        assert bound_malloc(mallopt) is False
    assert len(mallopt.calls) == 3
    assert [r.getMessage() for r in caplog.records] == [f"malloc bounds: the C library refused mallopt parameters "
                                                         f"[{M_ARENA_MAX}]"]  # fmt: skip


def test_this_c_library_takes_them() -> None:
    """glibc (the device's and this machine's) takes every bound; a fresh interpreter, as the daemon calls it."""
    code = "from agent.malloc_bounds import bound_malloc; print(bound_malloc())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr


def test_the_daemon_command_sets_them_before_the_daemon_starts(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:  # fmt: skip
    from agent.cli import build_parser
    from agent.commands import daemon as command

    order: list[str] = []

    class NotStarted:
        """Stands in for the daemon: only the order of the two calls is checked here."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            order.append("daemon")

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(command, "bound_malloc", lambda: order.append("bounds") is None)
    monkeypatch.setattr(command, "Daemon", NotStarted)
    config = tmp_path / "agent.toml"
    config.write_text(f'[archive]\ndirectory = "{tmp_path / "recordings"}"\n')
    args = build_parser(("daemon",)).parse_args(["daemon", "--config", str(config)])
    assert args.func(args) == 0
    assert order == ["bounds", "daemon"]


def test_give_back_returns_free_pages_from_inside_the_heap() -> None:
    """Freed blocks below a live one stay in the heap (the trim threshold only trims its top); malloc_trim(0) gives
    their pages back. A fresh interpreter with the daemon's bounds; RssAnon from /proc before and after."""
    code = ("import ctypes, re\nfrom agent.malloc_bounds import bound_malloc, give_back\nbound_malloc()\n"
            "def anon():\n    return int(re.search(r'RssAnon:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
            "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n"
            "libc.malloc.argtypes = (ctypes.c_size_t,)\n"
            "libc.free.argtypes = (ctypes.c_void_p,)\n"
            "blocks = [libc.malloc(4000) for _ in range(8000)]\n"
            "for b in blocks: ctypes.memset(b, 1, 4000)\n"
            "keep = libc.malloc(4000)  # a live block at the top: the heap cannot shrink from its end\n"
            "for b in blocks: libc.free(b)\n"
            "before = anon(); given = give_back(); print(given, before - anon())\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    given, freed_kib = proc.stdout.split()
    assert given == "True", proc.stderr
    assert int(freed_kib) > 20_000, f"only {freed_kib} KiB given back of ~31 MiB freed"


def test_the_daemon_gives_memory_back_after_a_pass_that_uploaded(tmp_path: Path) -> None:
    from agent.archive.upload_queue import UploadQueue
    from agent.archive.upload_runner import DrainReport
    from agent.daemon_uploads import Uploads
    from agent.settings import UploadSettings

    trims: list[int] = []
    queue = UploadQueue(UploadSettings(queue_dir=str(tmp_path / "q")))
    uploads = Uploads(queue, tmp_path, trim=lambda: trims.append(1))
    uploads._count_report(DrainReport())  # an empty pass: nothing was freed worth a trim
    uploads._count_report(DrainReport(failed=["a"], stopped_early=True))
    assert trims == []
    uploads._count_report(DrainReport(uploaded=["b"]))
    assert trims == [1]
