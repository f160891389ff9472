"""The visit summary is the telemetry snapshot (issue 11): what ``run``/``demo`` print at the end of a visit, what
``status`` and the metrics exposition show, and what the run-path benchmark records are one copy of each count.

A real visit (:class:`agent.visit.Visit`, the dialogue WAV paced by a sped-up clock) against the local server
through a real TCP proxy that cuts the speech socket once mid-visit, so reconnects, resends and acknowledgements
are not zero. The printed summary is parsed back and compared with the daemon's projections of the same snapshot
(:meth:`Telemetry.status`, :meth:`Telemetry.agent_stats` rendered by prometheus_client) and with what the visit's
parts report after the end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent import SAMPLE_RATE
from agent.account import token_provider
from agent.api.medisync import MediSyncClient
from agent.api.secret import Credentials, Secret
from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadQueue
from agent.audio.sources import FileSource
from agent.daemon_state import DaemonState
from agent.draining import EndedTotals
from agent.figures import VisitSummary
from agent.metrics import AgentStats, Metrics
from agent.stream.client import State
from agent.telemetry import Telemetry, visit_figures
from agent.terminal import format_summary
from agent.visit import Visit
from tests.plugins.archive import DIALOGUE
from tests.plugins.keys import TEST_KEYS
from tests.plugins.proxy import TcpProxy
from tests.plugins.server import RunningServer
from tests.plugins.visit import proxied_file_visit, sped_up_clock, wait_for

ROW = re.compile(r"^  (\S.*?)\s{2,}(\S.*)$")


def printed_rows(text: str) -> dict[str, str]:
    """The summary as a person reads it (the same parsing tests/test_demo.py applies to the demo's output)."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := ROW.match(line))}


def exposition(stats: AgentStats) -> dict[str, float]:
    """The metrics as a scrape returns them, parsed with prometheus_client's own parser."""
    metrics = Metrics()
    metrics.update(stats)
    return {s.name: s.value for family in text_string_to_metric_families(metrics.render()) for s in family.samples}


def test_printed_summary_status_and_metrics_of_a_cut_visit_are_one_snapshot(
    medisync_server: RunningServer, tcp_proxy: Callable[[str, int], TcpProxy], tmp_path: Path
) -> None:
    settings, proxy = proxied_file_visit(medisync_server, tcp_proxy, tmp_path)
    appointment = medisync_server.create_appointment()

    async def main() -> tuple[Visit, VisitSummary]:
        client = MediSyncClient(settings.api, Credentials(medisync_server.email, Secret(medisync_server.password)))
        async with client:
            await client.login()
            clock, sleep = sped_up_clock(8.0)
            visit = Visit(settings, appointment_id=appointment, token=token_provider(client),
                          source=FileSource(str(DIALOGUE), pace="realtime", clock=clock, sleep=sleep),
                          queue=UploadQueue(settings.upload, keys=TEST_KEYS))  # fmt: skip
            running = asyncio.create_task(visit.run())
            await wait_for(lambda: visit.stream is not None and visit.stream.stats.acked_messages > 5, "acks")
            await asyncio.to_thread(proxy.cut)
            return visit, await running

    visit, summary = asyncio.run(main())
    figures = summary.figures
    stream = figures.stream
    assert stream is not None and summary.stream_confirmed and stream.state == State.DONE.value
    assert stream.reconnects >= 1 and stream.acked_messages == stream.sent_messages > 5 and stream.bytes_sent > 0

    # Nothing is counted after the summary was taken: the daemon's telemetry of this visit reads the same values.
    assert visit_figures(visit) == figures
    # The recorder's own record agrees with the figures (the archive's timeline, the gaps it filled with silence).
    assert (figures.samples, figures.lost_samples) == (summary.record.samples, summary.record.lost_samples)

    telemetry = Telemetry(state=DaemonState.STOPPING, visit=figures)  # what `visit stop` answers with
    status = telemetry.status()
    scraped = exposition(telemetry.agent_stats())
    rows = printed_rows(format_summary(summary, ItemState.PENDING))

    assert rows["seconds captured"] == f"{status.visit_seconds:.1f}" == f"{summary.record.seconds:.1f}"
    assert int(rows["samples lost by the source (silence)"]) == round(status.gap_seconds * SAMPLE_RATE)
    assert rows["seconds gated (speech passed)"] == f"{figures.gated_samples / SAMPLE_RATE:.1f}"
    assert status.vad_share == figures.gated_samples / figures.samples
    assert scraped["medisync_agent_vad_speech_ratio"] == status.vad_share
    assert rows["live stream"] == f"{status.stream_mode}, {status.connection}" == "resume, done"
    assert rows["messages sent / acknowledged"] == f"{stream.sent_messages} / {stream.acked_messages}"
    assert rows["messages resent after reconnects"] == str(stream.resent_messages)
    assert rows["gap announced (samples)"] == str(stream.gap_samples) == "0"
    assert int(rows["reconnects"]) == status.reconnects == scraped["medisync_agent_reconnects_total"] >= 1
    assert scraped["medisync_agent_bytes_sent_total"] == stream.bytes_sent
    assert scraped["medisync_agent_archive_samples_lost_total"] == figures.archive.missing_samples == 0

    # Once the visit is over the daemon's counters hold it as an ended visit: the same totals again.
    ended = EndedTotals()
    ended.add_stream(visit)
    ended.add_archive(visit)
    after = exposition(Telemetry(ended=ended).agent_stats())
    assert after["medisync_agent_reconnects_total"] == scraped["medisync_agent_reconnects_total"]
    assert after["medisync_agent_bytes_sent_total"] == scraped["medisync_agent_bytes_sent_total"]
