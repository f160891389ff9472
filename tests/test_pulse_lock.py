"""The microphone tests' per-server lock (tests/plugins/pulse.py) in a runtime folder that does not exist yet."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.plugins.pulse import server_lock_path


def test_the_lock_works_without_the_runtime_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "xdg-never-made"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    path = server_lock_path()
    with open(path, "a"):  # what the fixture does before the server is started
        pass
    assert Path(path).parent == folder
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
