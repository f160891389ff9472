"""The fleet alert rules (systemd/monitoring/medisync-agent.rules.yml) pass ``promtool check rules`` and their unit
tests pass ``promtool test rules``: every alert fires on a recorded series of its condition and none fires on a
healthy fleet. Breaking a rule (a threshold, a ``for:``, a condition, a label) makes the unit tests fail."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.promql import RULE_TESTS, RULES, promtool

SEVERITIES = {"critical", "warning", "info"}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=300)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    done = run("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_fires_in_a_test_and_stays_quiet_on_the_healthy_fleet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    names = {rule["alert"] for rule in alerts()}
    fired = {check["alertname"] for test in tests for check in test["alert_rule_test"] if check.get("exp_alerts")}
    assert fired == names
    healthy = tests[0]["alert_rule_test"]  # the first test is the healthy fleet
    assert all(not check.get("exp_alerts") for check in healthy)
    assert {check["alertname"] for check in healthy} == names
    assert len({check["eval_time"] for check in healthy}) >= 10  # over the day, not at one moment


def test_every_alert_says_how_bad_what_and_what_to_do_without_identifiers() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["labels"]["component"], rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        for text in rule["annotations"].values():
            # Templates may name the device and the value, nothing else a series could carry.
            for field in re.findall(r"\$labels\.(\w+)", text):
                assert field in {"instance", "job"}, (rule["alert"], field)
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]  # says what to check, not just what


BROKEN = {
    "threshold": ("medisync_agent_archive_disk_free_ratio < 0.10", "medisync_agent_archive_disk_free_ratio < 0.05"),
    "for duration": ("medisync_agent_stream_connected == 0 and medisync_agent_visit_active == 1\n        for: 5m",
                     "medisync_agent_stream_connected == 0 and medisync_agent_visit_active == 1\n        for: 10m"),
    "paused visit not excluded": ("medisync_agent_mic_no_data == 1\n          and medisync_agent_visit_active == 1 "
                                  "and medisync_agent_visit_paused == 0",
                                  "medisync_agent_mic_no_data == 1\n          and medisync_agent_visit_active == 1"),
    "visit condition lost": ("expr: medisync_agent_mic_no_data == 1 and medisync_agent_visit_active == 0",
                             "expr: medisync_agent_mic_no_data == 1"),
    "other jobs' targets": ("up == 0 and on(instance, job) max_over_time(medisync_agent_info[1d])", "up == 0"),
    "restart count": ("changes(medisync_agent_start_time_seconds[1h]) >= 2",
                      "changes(medisync_agent_start_time_seconds[1h]) >= 3"),
    "severity": ("for: 1m\n        labels: {severity: critical, component: disk}",
                 "for: 1m\n        labels: {severity: warning, component: disk}"),
    "summary": ("Visit audio on {{ $labels.instance }} cannot be saved", "Visit audio cannot be saved"),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_a_broken_rule_fails_the_unit_tests(broken: str, tmp_path: Path) -> None:
    old, new = BROKEN[broken]
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert run("check", "rules", tmp_path / RULES.name).returncode == 0  # still a valid rule: only the tests see it
    done = run("test", "rules", tmp_path / RULE_TESTS.name)
    assert done.returncode != 0, done.stdout
    assert "FAILED" in done.stdout + done.stderr
