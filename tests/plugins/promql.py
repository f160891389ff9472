"""What the fleet monitoring files (systemd/monitoring/) may name: the metric names a scrape of the agent really
shows, the labels Prometheus adds, and a small PromQL reader that lists an expression's metric and label names.

    agent_metric_names()            sample names of a rendered :class:`agent.metrics.Metrics` (``*_total`` included)
    names_and_labels(expr)          (metric names, label names) a PromQL expression uses
    promtool()                      the promtool path; fails as root (tests/setup.sh installs it), skips otherwise
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import ALLOWED_LABELS, Metrics

MONITORING = Path(__file__).resolve().parents[2] / "systemd" / "monitoring"
RULES = MONITORING / "medisync-agent.rules.yml"
RULE_TESTS = MONITORING / "medisync-agent.rules.test.yml"
DASHBOARD = MONITORING / "medisync-agent.dashboard.json"

PROMETHEUS_METRICS = frozenset({"up"})
"""Series Prometheus itself makes for every scrape target."""
TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds when it scrapes: a device's address and the scrape job, never a visit's or a person's."""
PERMITTED_LABELS = TARGET_LABELS | ALLOWED_LABELS

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                       "offset", "bool", "inf", "nan"})


def agent_metric_names() -> frozenset[str]:
    text = Metrics().render()
    return frozenset(s.name for family in text_string_to_metric_families(text) for s in family.samples)


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """Metric names (identifiers not called as functions, not keywords) and label names (matchers, grouping)."""
    text = _STRING.sub("", expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(block))
    text = _MATCHERS.sub(" ", text)
    for group in _GROUPING.findall(text):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    text = _RANGE.sub(" ", _GROUPING.sub(" ", text))
    names = {m.group(1) for m in _IDENTIFIER.finditer(text) if not m.group(2) and m.group(1) not in _KEYWORDS}
    return names, labels


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() == 0:
        pytest.fail("promtool is missing: tests/setup.sh installs it (Debian package prometheus)")
    pytest.skip("promtool is missing (as root: apt-get install --no-install-recommends prometheus)")
