"""Disk full mid-visit is not the end of the visit: ``run`` and the daemon as real processes, the archive on a
small tmpfs in a private mount namespace (``unshare -m``, root), the local MediSync server on loopback.

What is checked is content: the samples the server stored from the live stream against the voice gate's output of
the same audio (0 lost, 0 duplicated), the archive read back with the stdlib ``wave`` module against the
pipeline's output at the same timeline indices, the upload byte for byte against the archive; and what a person
sees: the WARNING lines, the summary row naming the missing stretch, ``status``, the metrics, the exit code 73.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.audio.pipeline import AudioPipeline
from agent.audio.sources import FileSource
from agent.audio.vad import SegmentFrame
from agent.audit import audit_stream
from agent.control import GetStatus, StartVisit, StopVisit
from agent.settings import AgentSettings
from tests.plugins.archive import DIALOGUE, REPO, soxi_samples
from tests.plugins.daemon import SYNTH_MIC, DaemonProcess, short_tmp_dir, write_config
from tests.plugins.keys import uploaded_bytes
from tests.plugins.server import RunningServer
from tests.plugins.visit import AgentHome, poll, stored_recording, wav_samples

pytestmark = pytest.mark.slow

VISIT_S = 20.0
SMALL_TMPFS_KIB = 100
"""Room for the visit journal's page and a sealed archive of one chunk (65552 bytes and its header), not two."""
MISSING_ROW = re.compile(r"^\s+MISSING from the recording\s+(\d+\.\d\d)-(\d+\.\d\d) s \(disk full\), (.*)$", re.M)


def visit_source(path: Path, seconds: float) -> Path:
    """The dialogue's first ``seconds`` with a faint noise floor (about -44 dBFS), so that no stretch of it is
    digital silence: a sample out of place in the archive cannot pass for the silence of a missing stretch."""
    with wave.open(str(DIALOGUE), "rb") as src:
        params, frames = src.getparams(), src.readframes(round(seconds * src.getframerate()))
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    pcm += np.random.default_rng(9).integers(-200, 201, size=len(pcm))
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
    return path


def pipeline_output(wav: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The visit's whole timeline (16 kHz s16le) and what the voice gate passes, computed here, fast."""
    settings = AgentSettings()
    frames: list[bytes] = []
    gated: list[tuple[int, bytes]] = []
    with FileSource(str(wav), pace="fast") as source:
        for out in AudioPipeline(source.sample_rate, settings.audio, settings.vad).run(source):
            frames.extend(f.pcm for f in out.frames)
            gated.extend((e.frame.start, e.frame.pcm) for e in out.events if isinstance(e, SegmentFrame))
    return b"".join(frames), gated


class DiskFullRun:
    """``medisync-agent run`` in a private mount namespace whose archive folder sits on a small tmpfs; the tmpfs
    may hold a filler file. :meth:`signal` does ``on_signal``: ``free`` removes the filler; ``retry`` runs
    ``uploads retry --now`` beside the recording visit (in the namespace; :attr:`retry_rc`, :attr:`retry_out`);
    ``crash`` kills ``run`` with SIGKILL (a power cut, as far as this process is concerned), then runs
    ``uploads retry --now``. The tmpfs content is copied to ``kept`` at the end."""

    def __init__(self, tmp_path: Path, server: RunningServer, *, tmpfs_kib: int, filler_kib: int = 0,
                 on_signal: str = "free") -> None:  # fmt: skip
        self.disk, self.kept, self.fifo = tmp_path / "disk", tmp_path / "kept", tmp_path / "free-space"
        for folder in (self.disk, self.kept):
            folder.mkdir()
        os.mkfifo(self.fifo)
        self.home = AgentHome(tmp_path / "agent", api_url=server.api_url, speech_url=server.speech_url,
                              email=server.email, password=server.password,
                              settings={"archive": {"directory": str(self.disk / "archive")}})  # fmt: skip
        self.appointment = server.create_appointment()
        self.source = visit_source(tmp_path / "visit.wav", VISIT_S)
        run = shlex.join(self.home.argv("run", "--appointment", self.appointment, "--source", f"file:{self.source}",
                                        "--pace", "realtime"))  # fmt: skip
        filler = f"head -c {filler_kib * 1024} /dev/zero > {self.disk}/filler && " if filler_kib else ""
        retry = shlex.join(self.home.argv("uploads", "retry", "--now"))
        self.retry_rc, self.retry_out = tmp_path / "retry.rc", tmp_path / "retry.out"
        body = {
            "free": f"( cat {self.fifo} > /dev/null; rm -f {self.disk}/filler ) & {run}",
            "retry": f"( cat {self.fifo} > /dev/null; {retry} > {self.retry_out} 2>&1; echo $? > {self.retry_rc} ) & "
                     f"{run}",
            "crash": f"{run} & pid=$!; cat {self.fifo} > /dev/null; kill -9 $pid; wait $pid; {retry}",
        }[on_signal]  # fmt: skip
        script = (
            f"mount -t tmpfs -o size={tmpfs_kib}k tmpfs {self.disk} && mkdir {self.disk}/archive && {filler}"
            f"{{ {body}; rc=$?; cp -a {self.disk}/archive/. {self.kept}/; exit $rc; }}"
        )
        self.log_out, self.log_err = tmp_path / "run.out", tmp_path / "run.err"
        with self.log_out.open("wb") as out, self.log_err.open("wb") as err:
            self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], cwd=REPO, stdout=out, stderr=err,
                                         env=self.home.env())  # fmt: skip

    def held_item_while_recording(self) -> dict[str, object]:
        """The queue item of the saved part, seen while ``run`` is still recording."""
        poll(lambda: any(i.get("held") for i in self.home.items()) or self.proc.poll() is not None,
             "the saved part to be queued")  # fmt: skip
        assert self.proc.poll() is None, "the visit ended before its saved part was queued:\n" + self.stderr()
        [item] = self.home.items()
        return item

    def signal(self) -> None:
        """Remove the filler, or crash ``run`` (a no-op when nobody waits for it any more)."""
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading the fifo any more
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))

    def wait(self) -> int:
        try:
            return self.proc.wait(180)
        finally:
            self.signal()

    def stderr(self) -> str:
        return self.log_err.read_text()

    def archive(self, *, journal: bool = False) -> Path:
        """The visit's WAV; no .partial left, and no journal unless the visit was cut short."""
        [wav] = sorted(self.kept.glob("visit-*.wav"))
        left = sorted(p.name for p in self.kept.iterdir())
        assert left == sorted([wav.name] + ([wav.stem + ".visit.json"] if journal else []))
        return wav


@pytest.fixture
def disk_full_run(tmp_path: Path, medisync_server: RunningServer) -> Iterator[Callable[..., DiskFullRun]]:
    runs: list[DiskFullRun] = []

    def start(**kw: int) -> DiskFullRun:
        runs.append(DiskFullRun(tmp_path, medisync_server, **kw))
        return runs[-1]

    yield start
    for run in runs:
        run.signal()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(30)


def archive_warnings(stderr: str) -> list[str]:
    """The archive's WARNING lines: one when writing stops, one when it resumes."""
    return [line for line in stderr.splitlines() if " WARNING agent.archive.resilient: " in line]


def only_session(server: RunningServer) -> str:
    [session_id] = list(server.server.session_stats)
    return session_id


def assert_stream_held_everything(server: RunningServer, gated: list[tuple[int, bytes]]) -> None:
    stored = server.session_audio(only_session(server))
    audit = audit_stream(gated, stored.runs)
    assert audit.exact and audit.expected_samples > 2 * 16000, audit  # 0 lost, 0 duplicated, 0 changed
    assert stored.closed_last_seq is not None and stored.gaps == []  # `end` sent and `closed` received


def test_disk_full_mid_visit_streams_to_the_end_queues_the_saved_part_at_once_and_exits_73(
    disk_full_run: Callable[..., DiskFullRun], medisync_server: RunningServer
) -> None:
    # The journal's page, then the sealed header and one 64 KiB chunk: 2.05 s of audio.
    run = disk_full_run(tmpfs_kib=SMALL_TMPFS_KIB, on_signal="retry")
    timeline, gated = pipeline_output(run.source)

    held = run.held_item_while_recording()
    assert (held["held"], held["state"], held["appointment_id"]) == (True, "pending", run.appointment)
    # An upload pass while the visit records (as the daemon's runner or an operator might start one) leaves the
    # held item alone: nothing is uploaded from a file that is still being written.
    run.signal()
    poll(lambda: run.retry_rc.exists() and run.retry_rc.read_text().strip() != "", "uploads retry to finish")
    assert run.proc.poll() is None, "the visit ended before the upload pass was tried"
    assert run.retry_rc.read_text().strip() == "75", run.retry_out.read_text()
    assert "0 uploaded" in run.retry_out.read_text() and "1 still waiting" in run.retry_out.read_text()
    assert [i["held"] for i in run.home.items()] == [True]
    assert medisync_server.server.store.recording(run.appointment) is None

    assert run.wait() == 73, run.stderr()
    err = run.stderr()
    assert "Traceback" not in err
    wav = run.archive()
    saved = wav_samples(wav)
    assert 1.5 * 32000 < len(saved) < 2.1 * 32000 and saved == timeline[: len(saved)]  # the part that fit
    assert soxi_samples(wav) == len(saved) // 2  # sox agrees
    stop_s = len(saved) / 32000
    [warning] = archive_warnings(err)
    assert warning.endswith(
        f"WARNING agent.archive.resilient: archive {wav.name} stopped at {stop_s:.2f} s of the visit (disk full): "
        f"the {stop_s:.2f} s written are kept; capture and the live stream go on, writing is tried again every 1 s"
    )
    assert MISSING_ROW.findall(err) == [(f"{stop_s:.2f}", f"{len(timeline) / 32000:.2f}", "not in the recording")]
    assert re.search(r"stream confirmed by server\s+yes", err)
    assert re.search(r"upload\s+uploaded and confirmed", err)
    assert_stream_held_everything(medisync_server, gated)
    assert stored_recording(medisync_server, run.appointment) == uploaded_bytes(wav)
    [item] = run.home.items()
    assert (item["held"], item["state"], item["size"]) == (False, "done", len(uploaded_bytes(wav)))


def test_space_returning_mid_visit_resumes_the_archive_on_the_visit_timeline(
    disk_full_run: Callable[..., DiskFullRun], medisync_server: RunningServer
) -> None:
    run = disk_full_run(tmpfs_kib=1024, filler_kib=1024 - SMALL_TMPFS_KIB)  # 2.05 s (a sealed chunk) fit, then full
    timeline, gated = pipeline_output(run.source)

    run.held_item_while_recording()
    run.signal()

    assert run.wait() == 73, run.stderr()
    err = run.stderr()
    wav = run.archive()
    archive = np.frombuffer(wav_samples(wav), dtype="<i2")
    expected = np.frombuffer(timeline, dtype="<i2")
    assert len(archive) == len(expected) == soxi_samples(wav)  # archive index = visit timeline, to the end
    [(shown_start, shown_end, where)] = MISSING_ROW.findall(err)
    assert where == "silence in the recording"
    # Every sample is the pipeline's at its timeline index, or silence; outside the stretch shown to the person
    # (to the 10 ms it prints) all of them are the pipeline's, inside it all are silence.
    start, end, tol = round(float(shown_start) * 16000), round(float(shown_end) * 16000), 160
    assert 1.5 * 16000 < start < end < len(archive) - 4 * 16000  # resumed about a second after space returned
    assert np.all((archive == expected) | (archive == 0))
    assert np.array_equal(archive[: start - tol], expected[: start - tol])
    assert np.array_equal(archive[end + tol :], expected[end + tol :])
    assert not archive[start + tol : end - tol].any() and expected[start + tol : end - tol].any()
    warnings = archive_warnings(err)
    assert len(warnings) == 2
    assert f"stopped at {shown_start} s of the visit (disk full)" in warnings[0]
    assert f"resumed at {shown_end} s of the visit" in warnings[1]
    assert_stream_held_everything(medisync_server, gated)
    assert stored_recording(medisync_server, run.appointment) == uploaded_bytes(wav)


def test_saved_part_queued_mid_visit_is_uploaded_after_a_crash(
    disk_full_run: Callable[..., DiskFullRun], medisync_server: RunningServer
) -> None:
    run = disk_full_run(tmpfs_kib=SMALL_TMPFS_KIB, on_signal="crash")
    timeline, _ = pipeline_output(run.source)
    run.held_item_while_recording()
    run.signal()  # kill -9 while recording, the item still held; then `uploads retry --now`

    assert run.wait() == 0, run.stderr()
    # `uploads retry` first recovers what earlier runs left: the journal of the killed visit names the held item's
    # recording, which is repaired (no recorder holds it any more) and released; the journal is then settled.
    wav = run.archive(journal=False)
    saved = wav_samples(wav)
    assert 1.5 * 32000 < len(saved) < 2.1 * 32000 and saved == timeline[: len(saved)]
    assert stored_recording(medisync_server, run.appointment) == uploaded_bytes(wav)
    [item] = run.home.items()
    assert (item["held"], item["state"], item["size"]) == (False, "done", len(uploaded_bytes(wav)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def daemon_on_full_disk(medisync_server: RunningServer) -> Iterator[tuple[DaemonProcess, str]]:
    """The daemon (synthetic microphone) with its recordings folder on a small tmpfs (one sealed chunk), metrics on."""
    work = short_tmp_dir()
    port = free_port()
    config = work / "agent.toml"
    write_config(config, medisync_server, work, SYNTH_MIC, f'metrics_address = "127.0.0.1:{port}"')
    recordings = work / "recordings"
    recordings.mkdir()
    daemon_cmd = shlex.join([sys.executable, "-m", "agent", "daemon", "--config", str(config)])
    env = {**os.environ, "MEDISYNC_PASSWORD": medisync_server.password}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    mount = f"mount -t tmpfs -o size={SMALL_TMPFS_KIB}k tmpfs {recordings}"
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", f"{mount} && exec {daemon_cmd}"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO)  # fmt: skip
    daemon = DaemonProcess(proc, work / "run" / "control.sock", recordings, work / "uploads", config)
    daemon.start_pump()
    yield daemon, f"http://127.0.0.1:{port}/metrics"
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    subprocess.run(["rm", "-rf", str(work)], check=False)


def metric(url: str, name: str) -> float:
    found = re.search(rf"^medisync_agent_{name} (\S+)$", httpx.get(url, timeout=10).text, re.M)
    assert found, name
    return float(found.group(1))


def test_daemon_reports_the_stopped_archive_in_status_and_metrics_and_keeps_recording(
    daemon_on_full_disk: tuple[DaemonProcess, str], medisync_server: RunningServer
) -> None:
    daemon, url = daemon_on_full_disk
    daemon.wait_ready()
    appointment = medisync_server.create_appointment()
    assert metric(url, "archive_writable") == 1.0
    assert daemon.ask(StartVisit(appointment_id=appointment)).ok

    def status() -> object:
        found = daemon.ask(GetStatus()).status
        assert found is not None
        return found

    poll(lambda: not status().archive_writable, "the archive to stop", 60)  # type: ignore[attr-defined]
    poll(lambda: status().archive_missing_s > 1.0, "a second of the visit missing", 60)  # type: ignore[attr-defined]
    shown = subprocess.run([sys.executable, "-m", "agent", "status", "--socket", str(daemon.control)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    row = re.search(r"^archive:\s+NOT WRITING \(disk full\): (\d+\.\d) s of the visit missing so far; capture and "
                    r"stream go on, the saved part is queued$", shown.stdout, re.M)  # fmt: skip
    assert shown.returncode == 0 and row, shown.stdout
    poll(lambda: metric(url, "archive_writable") == 0.0, "archive_writable 0")
    lost = metric(url, "archive_samples_lost_total")
    assert lost >= 16000
    poll(lambda: metric(url, "archive_samples_lost_total") > lost, "the lost-sample counter to grow")
    assert any(json.loads(p.read_text()).get("held") for p in daemon.queue_dir.glob("*.json"))  # queued at once
    recording = status().visit_seconds  # type: ignore[attr-defined]
    poll(lambda: status().visit_seconds > recording + 1.0, "capture to go on")  # type: ignore[attr-defined]

    stopped = daemon.ask(StopVisit())
    assert stopped.ok, stopped.error
    assert re.search(r"missing from the recording: \d+\.\d\d-\d+\.\d\d s \(disk full\), not in the recording",
                     stopped.message), stopped.message  # fmt: skip
    poll(lambda: medisync_server.server.store.recording(appointment) is not None, "the saved part's upload", 60)
    saved = stored_recording(medisync_server, appointment)
    assert 1.5 * 32000 < len(saved) - 44 < 2.1 * 32000  # the part that fit on the tmpfs
    poll(lambda: metric(url, "archive_writable") == 1.0, "archive_writable back to 1 after the visit")
    assert metric(url, "archive_samples_lost_total") >= lost
    log = daemon.joined_log()
    assert sum("archive visit-" in line and " stopped at " in line for line in log.splitlines()) == 1
    assert appointment not in log
    assert daemon.terminate()[0] == 0
