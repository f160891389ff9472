"""Prometheus metrics: the daemon hands a :class:`AgentStats` snapshot to :meth:`Metrics.update`; a scrape reads it.

The registry is our own (not prometheus_client's global one), so nothing else leaks into the exposition.
No metric carries a label that could identify an appointment, a patient or a user: the only label is the
agent's version (see :data:`ALLOWED_LABELS`). Counters in the snapshot are totals since the daemon started.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from agent import __version__
from agent.config_rules import split_host_port
from agent.errors import ConfigError

if TYPE_CHECKING:  # prometheus_client is imported when metrics are enabled: a daemon without them saves its memory
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import Metric

PREFIX = "medisync_agent_"
ALLOWED_LABELS = frozenset({"version"})
"""Every label name a metric may carry. Identifiers of visits, patients or users never become labels."""


class AgentStats(msgspec.Struct, frozen=True, kw_only=True):
    """One snapshot of the daemon's figures. Counters (``*_total`` below) never decrease while the daemon runs."""

    frames_captured: int = 0
    """Frames captured since start (counter)."""
    frames_dropped: int = 0
    """Frames lost before the DSP (hand-off overflow or device gaps) since start (counter)."""
    vad_speech_ratio: float = 0.0
    """Share of the current (or last) visit's frames the VAD passed, 0 to 1."""
    ring_fill_seconds: float = 0.0
    """Seconds of audio waiting in the send ring, unacknowledged."""
    reconnects: int = 0
    """Speech socket reconnects since start (counter)."""
    ack_lag_seconds: float = 0.0
    """Seconds between the newest audio sent and the newest audio acknowledged."""
    bytes_sent: int = 0
    """Audio payload bytes sent on the speech socket since start (counter)."""
    stream_connected: bool = False
    """Whether the speech socket is connected now."""
    visit_active: bool = False
    """Whether a visit is being recorded now."""
    upload_queue_length: int = 0
    """Visits waiting in the upload queue."""
    uploads_completed: int = 0
    """Visits whose upload was confirmed since start (counter)."""
    upload_failures: int = 0
    """Failed upload attempts since start (counter)."""
    archive_writable: bool = True
    """False while the current visit's archive cannot be written (disk full, I/O error)."""
    archive_samples_lost: int = 0
    """Visit samples (16 kHz) missing from the archives since start, e.g. while the disk was full (counter)."""
    upload_worker_up: bool = True
    """Whether the background upload worker runs now (0 while it waits to be restarted after dying)."""
    worker_restarts: int = 0
    """Restarts of background tasks that died, since start (counter)."""
    uploads_unassigned: int = 0
    """Recordings no visit journal or queue item accounts for (they need ``uploads assign``)."""
    uploads_quarantined: int = 0
    """Unreadable files set aside in the quarantine folders."""
    visit_paused: bool = False
    """Whether the current visit is paused for privacy now (nothing is captured into it)."""
    paused_seconds: float = 0.0
    """Seconds visits spent paused since start (counter)."""
    visits_declined: int = 0
    """Visits not recorded because consent was declined, since start (counter)."""
    mic_silent: bool = False
    """Whether the microphone delivers digital silence or a level too low for speech now."""
    mic_clipping: bool = False
    """Whether the microphone's signal is clipping now."""
    mic_no_data: bool = False
    """Whether the audio device has delivered nothing for longer than the detector allows."""
    mic_no_speech: bool = False
    """Whether a visit has had sound but no speech for longer than the detector allows."""
    mic_level_dbfs: float = -120.0
    """The microphone's recent RMS level in dBFS (-120 for digital silence or no data)."""
    archive_disk_free_bytes: int = 0
    """Bytes free for the agent on the archive's file system (0 when unknown)."""
    archive_disk_free_ratio: float = 1.0
    """Share of the archive's file system free for the agent, 0 to 1."""


_COUNTERS = {
    "frames_captured": "Audio frames captured.",
    "frames_dropped": "Audio frames lost before processing.",
    "reconnects": "Speech socket reconnects.",
    "bytes_sent": "Audio bytes sent on the speech socket.",
    "uploads_completed": "Visit uploads confirmed by the server.",
    "upload_failures": "Failed visit upload attempts.",
    "archive_samples_lost": "Visit samples (16 kHz) missing from the archive (disk full, I/O error).",
    "worker_restarts": "Restarts of background tasks (upload worker, tick, queue count) that died.",
    "paused_seconds": "Seconds visits spent paused for privacy.",
    "visits_declined": "Visits not recorded because consent was declined.",
}
_GAUGES = {
    "vad_speech_ratio": "Share of the visit's frames passed by the voice activity detector (0 to 1).",
    "ring_fill_seconds": "Seconds of audio in the send ring awaiting acknowledgement.",
    "ack_lag_seconds": "Seconds between the newest audio sent and the newest acknowledged.",
    "stream_connected": "1 while the speech socket is connected.",
    "visit_active": "1 while a visit is being recorded.",
    "upload_queue_length": "Visits waiting to be uploaded.",
    "archive_writable": "0 while the visit's archive cannot be written (disk full, I/O error); 1 otherwise.",
    "upload_worker_up": "1 while the background upload worker runs, 0 while it waits to be restarted.",
    "uploads_unassigned": "Recordings without a visit record, waiting for uploads assign.",
    "uploads_quarantined": "Unreadable files set aside in the quarantine folders.",
    "visit_paused": "1 while the current visit is paused for privacy.",
    "mic_silent": "1 while the microphone delivers digital silence or a level too low for speech.",
    "mic_clipping": "1 while the microphone's signal clips.",
    "mic_no_data": "1 while the audio device delivers nothing.",
    "mic_no_speech": "1 while a visit has sound but no speech for too long.",
    "mic_level_dbfs": "Recent microphone RMS level in dBFS (-120 for silence or no data).",
    "archive_disk_free_bytes": "Bytes free for the agent on the archive's file system (0 when unknown).",
    "archive_disk_free_ratio": "Share of the archive's file system free for the agent (0 to 1).",
}


class _SnapshotCollector:  # a prometheus_client Collector (a protocol: collect() is all it needs)
    def __init__(self, version: str, started: float) -> None:
        self.version = version
        self.started = started
        self.stats = AgentStats()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats  # one reference read: a concurrent update() never mixes two snapshots
        info = GaugeMetricFamily(PREFIX + "info", "Agent version.", labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info
        yield GaugeMetricFamily(PREFIX + "start_time_seconds", "Unix time the agent's daemon started (a change is a "
                                "restart).", value=self.started)
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, doc, value=float(getattr(stats, name)))
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=float(getattr(stats, name)))


class Metrics:
    """The agent's metrics registry. Thread-safe: update from the event loop, scrape from the HTTP thread."""

    def __init__(self, version: str = __version__, started: float | None = None) -> None:
        """``started``: Unix time the daemon started (now when not given)."""
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=True)
        self._collector = _SnapshotCollector(version, time.time() if started is None else started)
        self.registry.register(self._collector)

    def update(self, stats: AgentStats) -> None:
        self._collector.stats = stats

    @property
    def stats(self) -> AgentStats:
        return self._collector.stats

    def render(self) -> str:
        """The exposition text a scrape would return."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def disk_free(directory: Path) -> tuple[int, float]:
    """Bytes, and share of the file system, free for an unprivileged writer (``f_bavail``) where ``directory`` is
    (or, while it does not exist yet, where it will be made)."""
    path = directory.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    return free, st.f_bavail / st.f_blocks if st.f_blocks else 1.0


class MetricsServer:
    """The HTTP endpoint serving ``/metrics`` in a background thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(metrics: Metrics, address: str) -> MetricsServer:
    """Listen on ``host:port`` (``DaemonSettings.metrics_address``; port 0 picks a free one, for tests)."""
    parsed = split_host_port(address, allow_any_port=True)
    if parsed is None:
        raise ConfigError(f"daemon.metrics_address {address!r}: expected host:port, e.g. 127.0.0.1:9510")
    host, port = parsed
    from prometheus_client import start_wsgi_server

    try:
        server, thread = start_wsgi_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"daemon.metrics_address {address}: cannot listen: {exc.strerror or exc}") from None
    return MetricsServer(server, thread)
