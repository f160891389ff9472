"""Metrics over the real HTTP endpoint: values from the snapshot, our own registry, only allow-listed labels."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.errors import ConfigError
from agent.metrics import ALLOWED_LABELS, AgentStats, Metrics, MetricsServer, disk_free, serve_metrics


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    server = serve_metrics(metrics, "127.0.0.1:0")
    yield metrics, server
    server.close()


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    return {s.name: (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples}


LABEL_ALLOW_LIST = frozenset({"version"})
"""Label names a scrape may show: none can carry an appointment, patient or user identifier."""

STATS = AgentStats(
    frames_captured=150_000,
    frames_dropped=12,
    vad_speech_ratio=0.42,
    ring_fill_seconds=3.5,
    reconnects=2,
    ack_lag_seconds=0.25,
    bytes_sent=4_800_000,
    stream_connected=True,
    visit_active=True,
    upload_queue_length=3,
    uploads_completed=7,
    upload_failures=4,
)


def test_scrape_reports_the_snapshot(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.update(STATS)
    got = samples(scrape(server))
    expected = {
        "medisync_agent_frames_captured_total": 150_000,
        "medisync_agent_frames_dropped_total": 12,
        "medisync_agent_vad_speech_ratio": 0.42,
        "medisync_agent_ring_fill_seconds": 3.5,
        "medisync_agent_reconnects_total": 2,
        "medisync_agent_ack_lag_seconds": 0.25,
        "medisync_agent_bytes_sent_total": 4_800_000,
        "medisync_agent_stream_connected": 1,
        "medisync_agent_visit_active": 1,
        "medisync_agent_upload_queue_length": 3,
        "medisync_agent_uploads_completed_total": 7,
        "medisync_agent_upload_failures_total": 4,
    }
    for name, value in expected.items():
        assert got[name] == ({}, value), name
    assert got["medisync_agent_info"] == ({"version": __version__}, 1.0)
    metrics.update(AgentStats(frames_captured=150_050, visit_active=False))
    again = samples(scrape(server))
    assert again["medisync_agent_frames_captured_total"][1] == 150_050
    assert again["medisync_agent_visit_active"][1] == 0


def test_only_allow_listed_labels_and_only_our_metrics(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.update(STATS)
    text = scrape(server)
    families = list(text_string_to_metric_families(text))
    assert families, text
    for family in families:
        assert family.name.startswith("medisync_agent_"), family.name  # nothing from the global registry
        for sample in family.samples:
            assert set(sample.labels) <= LABEL_ALLOW_LIST, sample
    assert LABEL_ALLOW_LIST >= ALLOWED_LABELS  # widening the module's list needs a privacy review of this test
    # Identifier-looking words never appear anywhere in the exposition.
    for word in ("appointment", "patient", "user", "uid", "email"):
        assert word not in text.lower()


def test_render_matches_the_endpoint(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.update(STATS)
    assert metrics.render() == scrape(server)


def test_listens_only_where_told(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    assert server.host == "127.0.0.1"


def test_bad_or_busy_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected host:port"):
        serve_metrics(Metrics(), "localhost")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}: cannot listen"):
            serve_metrics(Metrics(), f"127.0.0.1:{port}")


def test_snapshot_fields_are_numbers_and_all_exposed_nothing_else() -> None:
    """No field can carry an identifier (no strings), and the exposition is exactly the snapshot's fields plus
    the version info and the start time: a field added later is exposed and checked by the label test above."""
    import typing

    hints = typing.get_type_hints(AgentStats)
    assert hints and all(hints[name] in (int, float, bool) for name in AgentStats.__struct_fields__), hints
    text = Metrics(started=1_764_000_000.0).render()
    families = {family.name for family in text_string_to_metric_families(text)}
    fields = {"medisync_agent_" + name for name in AgentStats.__struct_fields__}
    assert families == fields | {"medisync_agent_info", "medisync_agent_start_time_seconds"}
    for word in ("appointment", "patient", "user", "uid", "email", "name"):
        assert not any(word in name for name in AgentStats.__struct_fields__), word
    assert samples(text)["medisync_agent_start_time_seconds"] == ({}, 1_764_000_000.0)


def test_disk_free_is_what_statvfs_gives_for_the_archive_or_the_folder_it_will_be_made_in(tmp_path: Path) -> None:
    import os

    st = os.statvfs(tmp_path)
    free, ratio = disk_free(tmp_path)
    assert free % st.f_frsize == 0 and 0.0 < ratio <= 1.0
    # The file system's free space moves with other writers: compare with a second look either side.
    after = os.statvfs(tmp_path)
    low, high = sorted((st.f_bavail * st.f_frsize, after.f_bavail * after.f_frsize))
    assert low - 64 * 2**20 <= free <= high + 64 * 2**20
    assert abs(ratio - st.f_bavail / st.f_blocks) < 0.01
    not_yet = tmp_path / "archive" / "not" / "made"
    assert abs(disk_free(not_yet)[0] - free) <= 64 * 2**20
    assert not (tmp_path / "archive").exists()  # looking never makes the folder
