"""Shared test set-up: every module in tests/plugins/ is loaded as a pytest plugin (fixtures by area)."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

# Plugins import each other (e.g. the visit helpers use the server fixtures): rewrite asserts in all of them.
pytest.register_assert_rewrite("tests.plugins")

pytest_plugins = [
    f"tests.plugins.{m.name}"
    for m in pkgutil.iter_modules([str(Path(__file__).parent / "plugins")])
    if not m.name.startswith("_")
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist every microphone test runs on one worker, one after another.

    They share one PulseAudio server whose default source each test points at its own null sink's monitor;
    run side by side they would capture each other's audio.
    """
    for item in items:
        if item.get_closest_marker("pulse") is not None:
            item.add_marker(pytest.mark.xdist_group("pulse"))
