"""The Grafana dashboard (systemd/monitoring/medisync-agent.dashboard.json) and the alert rules name only metrics a
scrape of the agent really shows (read from agent/metrics.py by rendering it, not from a list kept here), use no
label that could identify a visit, a patient or a user, and every dashboard query is valid PromQL (promtool)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.promql import (
    DASHBOARD,
    PERMITTED_LABELS,
    PROMETHEUS_METRICS,
    RULES,
    agent_metric_names,
    names_and_labels,
    promtool,
)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def panel_queries() -> list[str]:
    return [node["expr"] for node in walk(dashboard()["panels"]) if "expr" in node]


def variable_queries() -> list[str]:
    """The PromQL inside the dashboard's ``label_values(QUERY, LABEL)`` variables."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner, label = variable["query"]["query"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            assert label.strip() in PERMITTED_LABELS
            found.append(inner)
    return found


def rule_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def check(expr: str, known: frozenset[str]) -> set[str]:
    names, labels = names_and_labels(expr)
    assert names, expr
    assert labels <= PERMITTED_LABELS, (expr, labels - PERMITTED_LABELS)
    unknown = names - known - PROMETHEUS_METRICS
    assert not unknown, (expr, unknown)
    return names


def test_the_reader_finds_names_and_labels() -> None:
    names, labels = names_and_labels(
        'sum by (job) (increase(medisync_agent_upload_failures_total{instance=~"a|b"}[1h] offset 5m)) > 0.5 '
        'and on(instance, job) max_over_time(medisync_agent_info[1d]) or vector(0) unless up{job="x"} == bool 1e9')
    assert names == {"medisync_agent_upload_failures_total", "medisync_agent_info", "up"}
    assert labels == {"job", "instance"}
    assert names_and_labels('medisync_agent_visit_active{patient_id="x"}')[1] == {"patient_id"}


def test_the_check_refuses_unknown_metrics_and_identifier_labels() -> None:
    known = agent_metric_names()
    with pytest.raises(AssertionError):
        check("medisync_agent_visits_per_patient", known)
    with pytest.raises(AssertionError):
        check('medisync_agent_visit_active{appointment="42"}', known)
    with pytest.raises(AssertionError):
        check("sum by (user) (medisync_agent_visit_active)", known)


def test_known_names_come_from_the_metrics_module() -> None:
    known = agent_metric_names()
    assert "medisync_agent_upload_failures_total" in known and "medisync_agent_visit_active" in known
    assert all(name.startswith("medisync_agent_") for name in known)


def test_dashboard_queries_name_only_agent_metrics_and_no_identifiers() -> None:
    known = agent_metric_names()
    queries = panel_queries() + variable_queries()
    assert len(queries) > 20
    used = set().union(*(check(expr, known) for expr in queries))
    # Every metric an alert watches has a panel.
    watched = set().union(*(check(expr, known) for expr in rule_queries()))
    assert watched <= used, watched - used


def test_rules_name_only_agent_metrics_and_no_identifiers() -> None:
    known = agent_metric_names()
    for expr in rule_queries():
        check(expr, known)


def test_dashboard_shape() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["instance"]["includeAll"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = {panel["title"] for panel in board["panels"]}
    for wanted in ("Visit active / paused", "Stream connected", "Microphone problems", "Microphone level",
                   "Send ring fill and acknowledgement lag", "Upload queue", "Uploads completed and failed per hour",
                   "Disk free for recordings (share)", "Restarts per hour"):
        assert wanted in titles
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's $instance sits inside a string, so it parses)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(panel_queries())]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
