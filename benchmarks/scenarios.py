"""The scenarios of issue 6 and issue 11's startup (benchmarks/startup.py). Each takes a :class:`Sizes` and a
scratch folder and returns a ScenarioResult.

Every agent runs as its own process (:mod:`benchmarks.agent_proc`) against the local server running as another
process with ``--no-fsync``; CPU figures are the kernel's per-process accounting.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import daemon_bench
from benchmarks.analysis import ack_lags, catch_up, sample_latencies
from benchmarks.env import DIALOGUE, OutageProxy, agent_config, proc_cpu_s, server_process, spawn_agent, virtual_mic
from benchmarks.results import ScenarioResult, percentiles
from benchmarks.startup import startup

UNPACED = 1e6
"""``replay_speed`` that makes the pacer irrelevant."""
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "low-latency": {"audio": {"capture_block_ms": 40}, "stream": {"message_ms": 40}},
    "efficient": {"audio": {"capture_block_ms": 120}, "stream": {"message_ms": 120}},
}
"""Live profiles: AudioSettings and StreamSettings overrides. Low-latency: 40 ms blocks and messages (p95
capture-to-wire ~42 ms against the 60 ms target, half the wake-ups of 20 ms blocks: ``benchmarks/NOTES.md``).
Efficient: 120 ms, the agent's defaults (p95 ~120 ms against 150; 100 ms cost ~25 % more CPU in the daemon)."""
COMPARISON_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "low-latency-20": {"audio": {"capture_block_ms": 20}, "stream": {"message_ms": 20}},
    "low-latency-50": {"audio": {"capture_block_ms": 50, "frame_ms": 10}, "stream": {"message_ms": 50}},
    "efficient-100": {"audio": {"capture_block_ms": 100}, "stream": {"message_ms": 100}},
    "efficient-140": {"audio": {"capture_block_ms": 140}, "stream": {"message_ms": 140}},
}
"""Profiles the ad-hoc tools (``daemon_ab``, ``latency_stages``) also know: the low-latency profile before issue 11;
50 ms blocks (the daemon's paced blocking read, ``agent/audio/mic_paced.py``) with 10 ms frames that divide them;
the efficient profile before 2026-11-27 (100 ms) and a longer one (140 ms) for the block-length trade-off."""
HOUR = 3600.0


@dataclass(frozen=True)
class Sizes:
    repeats: int = 3
    throughput_audio_s: float = 600.0
    live_s: float = 100.0
    live_repeats: int = 2
    warmup_s: float = 10.0
    outage_s: float = 60.0
    after_outage_s: float = 30.0
    memory_audio_s: float = 3900.0
    fleet_agents: int = 50
    fleet_s: float = 60.0
    startup_runs: int = 10
    idle_settle_s: float = 10.0
    daemon_visit_s: float = 60.0
    daemon_idle_s: float = 40.0


FULL = Sizes()
QUICK = Sizes(repeats=1, throughput_audio_s=48.0, live_s=8.0, live_repeats=1, warmup_s=2.0, outage_s=3.0,
              after_outage_s=5.0, memory_audio_s=100.0, fleet_agents=3, fleet_s=4.0, startup_runs=3,
              idle_settle_s=1.0, daemon_visit_s=4.0, daemon_idle_s=2.0)  # fmt: skip


def looped_dialogue(cache: Path, seconds: float) -> Path:
    """The bundled dialogue repeated to at least ``seconds`` (made once with sox, kept in ``cache``)."""
    repeats = max(1, int(np.ceil(seconds / 48.18)))
    path = cache / f"dialogue-x{repeats}.wav"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.wav")
        subprocess.run(["sox", str(DIALOGUE), str(tmp), "repeat", str(repeats - 1)], check=True)
        tmp.rename(path)
    return path


def per_hour(cpu_s: float, audio_s: float) -> float:
    return cpu_s / audio_s * HOUR if audio_s else float("nan")


# --- 1 throughput ---------------------------------------------------------------------------------------------------


def throughput(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    res = ScenarioResult("throughput", "whole pipeline as fast as possible (file source, DSP, VAD, archive, socket, "
                         "acks)", "python -m benchmarks --only throughput", repeats=sizes.repeats)  # fmt: skip
    wav = looped_dialogue(cache, sizes.throughput_audio_s)
    configs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "unpaced (replay_speed=1e6)": ({"replay_speed": UNPACED}, {}),
        "unpaced, plaintext archive (archive.encrypt=false)": ({"replay_speed": UNPACED}, {"encrypt": False}),
        "default pacing (replay_speed=4)": ({}, {}),
    }
    agent_cpu: dict[bool, list[float]] = {}
    upload_cpu: dict[bool, list[float]] = {}
    with server_process(work / "server") as srv:
        for n, (label, (stream, archive)) in enumerate(configs.items()):
            # The default-paced run streams at the pacer's speed: the short dialogue is enough to show it.
            source = wav if stream else DIALOGUE
            rtf, cpu, srv_cpu, audio_rtf, read_cpu = [], [], [], [], []
            for i in range(sizes.repeats if stream else 1):
                cfg = agent_config(srv, work / f"tp-{n}-{i}", f"file:{source}", pace="fast", stream=stream,
                                   archive=archive)  # fmt: skip
                s0 = srv.cpu_s()
                agent = spawn_agent(cfg, work / f"tp-{n}-{i}")
                r = agent.result(timeout=900)
                srv_cpu.append(per_hour(srv.cpu_s() - s0, r["audio_s"]))
                rtf.append(r["audio_s"] / r["wall_s"])
                audio_rtf.append(r["audio_s"] / r["audio_done_s"])
                cpu.append(per_hour(r["cpu_s"], r["audio_s"]))
                read_cpu.append(per_hour(r["upload_read_cpu_s"], r["audio_s"]))
                _check(res, r)
            target = ">= 500" if stream and not archive else ""
            res.add(f"{label}: real-time factor to last ack", rtf, "x", target)
            res.add(f"{label}: real-time factor, audio path only", audio_rtf, "x")
            res.add(f"{label}: agent CPU per audio-hour", cpu, "CPU-s")
            res.add(f"{label}: server CPU per audio-hour", srv_cpu, "CPU-s")
            res.add(f"{label}: reading the upload per audio-hour", read_cpu, "CPU-s")
            if stream:
                agent_cpu[not archive], upload_cpu[not archive] = cpu, read_cpu
    visit_cost = float(np.median(agent_cpu[True]) - np.median(agent_cpu[False]))
    upload_cost = float(np.median(upload_cpu[True]) - np.median(upload_cpu[False]))
    res.add("encryption cost, visit + upload read (sealed - plaintext medians)", [visit_cost + upload_cost], "CPU-s",
            "<= 2")  # fmt: skip
    isolated, aead = sealing_cost(sizes.throughput_audio_s, work / "seal")
    res.add("encryption cost, isolated (seal, read back, decrypt for upload)", isolated, "CPU-s", "<= 2")
    res.add("ChaCha20-Poly1305 alone (seal once, open twice)", aead, "CPU-s", "<= 2")
    res.notes.append(f"source: the bundled dialogue looped to {sizes.throughput_audio_s:.0f} s (22.05 kHz mono), "
                     "paced 'fast' (default block length when fast: 1 s)")  # fmt: skip
    res.notes.append("encryption cost: the sealed archive (age: ChaCha20-Poly1305 in 64 KiB chunks) costs sealing "
                     "while recording, reading the file back at the visit's end for the upload digest, and decrypting "
                     "while uploading; the plaintext archive hashes the file when it is queued. 'isolated' runs just "
                     "the archive writers and readers in the harness over the same amount of audio (less noisy than "
                     "the difference of two whole-agent runs)")  # fmt: skip
    return res


def sealing_cost(audio_s: float, work: Path) -> tuple[list[float], list[float]]:
    """CPU-s per audio-hour that sealing adds: sealed writer + read-back + decrypting read, minus the plaintext
    writer + hashing the file (20 ms frames as the recorder writes them, in this process); and the AEAD alone over
    the same bytes in 64 KiB chunks (sealed once, opened twice), which is what the cipher costs. The first can be
    below zero: the sealed writer makes one write per 64 KiB where the plaintext writer makes one per frame."""
    from agent.archive.age import CHUNK, Identity, new_file
    from agent.archive.sealed import plain_digest
    from agent.archive.sealed_writer import SealedArchiveWriter
    from agent.archive.storage import sha256_file
    from agent.archive.wav import WavArchiveWriter
    from agent.audio.types import Frame
    from agent.settings import ArchiveSettings

    work.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate()
    pcm = np.random.default_rng(3).integers(-3000, 3000, size=round(audio_s * 16000), dtype="<i2").tobytes()
    costs = []
    for attempt in range(3):
        spent = {}
        for sealed in (True, False):
            t0 = time.process_time()
            path = work / f"{attempt}-{sealed}.wav"
            writer = (SealedArchiveWriter.create(path, ArchiveSettings(), recipient=identity.recipient) if sealed
                      else WavArchiveWriter.create(path, ArchiveSettings()))  # fmt: skip
            for start in range(0, len(pcm), 640):
                writer.write_frame(Frame(start // 2, pcm[start : start + 640], 0.0))
            writer.finish()
            if sealed:
                plain_digest(path, identity)  # what the upload reads (decrypt + hash); the digest came with finish
            else:
                sha256_file(path)  # enqueue hashes a plaintext file (the upload then just reads it)
            spent[sealed] = time.process_time() - t0
            path.unlink()
        costs.append(per_hour(spent[True] - spent[False], audio_s))
    aead = []
    for _ in range(3):
        _, payload = new_file(identity.recipient)
        t0 = time.process_time()
        sealed = [payload.seal(i, pcm[o : o + CHUNK], last=False) for i, o in enumerate(range(0, len(pcm), CHUNK))]
        for _ in range(2):
            for i, chunk in enumerate(sealed):
                payload.open(i, chunk, last=False)
        aead.append(per_hour(time.process_time() - t0, audio_s))
    return costs, aead


def _check(res: ScenarioResult, r: dict[str, Any]) -> None:
    """Read from the visit summary's figures (agent.figures: what `status` and the metrics show of a visit)."""
    if not r["confirmed"]:
        res.notes.append("WARNING: a visit was not confirmed by the server")
    if r["lost_samples"] or r["gap_samples"]:
        res.notes.append(f"a visit lost {r['lost_samples']} samples at the source (silence in its recording) and "
                         f"announced {r['gap_samples']} samples as a gap on its stream")  # fmt: skip


# --- 2 live + 6 floor -------------------------------------------------------------------------------------------------


def live(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    res = ScenarioResult("live", "PulseAudio virtual mic in real time: each profile with the ffmpeg floor capturing "
                         "the same mic at the same time", "python -m benchmarks --only live",
                         repeats=sizes.live_repeats)  # fmt: skip
    have_ffmpeg = shutil.which("ffmpeg") is not None
    keys = ("cpu", "visit", "p99all", "p50", "p95", "p99", "wake", "ffmpeg")
    per: dict[str, dict[str, list[float]]] = {p: {k: [] for k in keys} for p in PROFILES}
    latencies: dict[str, list[float]] = {p: [] for p in PROFILES}
    with server_process(work / "server") as srv, virtual_mic(48000, 1) as mic:
        mic.feed_loop(looped_dialogue(cache, 600))
        for rep in range(sizes.live_repeats):
            for name, profile in PROFILES.items():
                cfg = agent_config(srv, work / f"live-{name}-{rep}", "mic:pulse", duration_s=sizes.live_s,
                                   trace=True, **profile)  # fmt: skip
                agent = spawn_agent(cfg, work / f"live-{name}-{rep}", env=mic.env)
                ff = _start_ffmpeg(mic.monitor) if have_ffmpeg else None
                agent.wait_started()
                pids = {"agent": agent.proc.pid} | ({"ffmpeg": ff.pid} if ff else {})
                steady = _steady_window(sizes, [agent.started_at], pids)
                r = agent.result(timeout=sizes.live_s + 120)
                d = per[name]
                if ff is not None:
                    d["ffmpeg"].append(steady["ffmpeg"])
                    ff.terminate()
                    ff.wait()
                _check(res, r)
                connected = min((t for t, _ in r["readies"]), default=r["t0"]) + 1.0
                lat = sample_latencies(r, since=connected) * 1000
                p50, p95, p99 = percentiles(lat)
                d["p99all"].append(percentiles(sample_latencies(r) * 1000)[2])
                d["visit"].append(per_hour(r["cpu_s"], r["audio_s"]))
                d["cpu"].append(steady["agent"])
                d["p50"].append(p50)
                d["p95"].append(p95)
                d["p99"].append(p99)
                d["wake"].append(r["voluntary_switches"] / r["wall_s"])
                latencies[name].extend(round(x, 1) for x in lat[:: max(1, len(lat) // 3000)].tolist())
    targets = {"low-latency": ("<= 60", "<= 60"), "efficient": ("<= 30", "<= 150")}
    for name, d in per.items():
        cpu_target, p95_target = targets[name]
        res.add(f"{name}: agent process CPU per audio-hour, steady state", d["cpu"], "CPU-s", cpu_target)
        res.add(f"{name}: agent process CPU per audio-hour, whole visit incl. connect/end", d["visit"], "CPU-s")
        res.add(f"{name}: capture-to-wire p50", d["p50"], "ms")
        res.add(f"{name}: capture-to-wire p95", d["p95"], "ms", p95_target)
        res.add(f"{name}: capture-to-wire p99", d["p99"], "ms")
        res.add(f"{name}: capture-to-wire p99 incl. audio waiting for the first connection", d["p99all"], "ms")
        res.add(f"{name}: voluntary context switches per second", d["wake"], "1/s")
    if have_ffmpeg:
        ffmpeg_cpu = [v for d in per.values() for v in d["ffmpeg"]]
        res.add("floor: ffmpeg (pulse -> 16 kHz mono s16) CPU per audio-hour", ffmpeg_cpu, "CPU-s")
        for name, d in per.items():
            ratios = [a / f for a, f in zip(d["cpu"], d["ffmpeg"], strict=True) if f > 0]
            res.add(f"agent/ffmpeg CPU ratio, {name} (same window)", ratios, "", "< 2" if name == "efficient" else "")
    else:
        ffmpeg_cpu = []
        res.notes.append("ffmpeg not installed: floor (scenario 6) skipped")
    res.notes.append("latency percentiles leave out audio captured before 1 s after the first `ready` (it waited for "
                     "the connection); the last row includes it")
    res.notes.append("profiles: " + "; ".join(f"{n}: {s}" for n, s in PROFILES.items()) + "; the agent and ffmpeg "
                     "capture the same null-sink monitor at 48 kHz mono at the same time; profiles run one after the "
                     "other")  # fmt: skip
    res.plot["latencies"] = latencies
    res.plot["cpu"] = {n: d["cpu"] for n, d in per.items()} | ({"ffmpeg": ffmpeg_cpu} if ffmpeg_cpu else {})
    return res


def _steady_window(sizes: Sizes, starts: list[float], pids: dict[str, int]) -> dict[str, float]:
    """CPU-s per hour of each process between (last start + settle) and (first start + duration - 1 s), /proc."""
    settle = min(5.0, sizes.live_s / 4)
    begin, end = max(starts) + settle, min(starts) + sizes.live_s - 1.0
    time.sleep(max(0.0, begin - time.monotonic()))
    c0, t0 = {n: proc_cpu_s(p) for n, p in pids.items()}, time.monotonic()
    time.sleep(max(0.5, end - time.monotonic()))
    c1, t1 = {n: proc_cpu_s(p) for n, p in pids.items()}, time.monotonic()
    return {n: per_hour(c1[n] - c0[n], t1 - t0) for n in pids}


def _start_ffmpeg(monitor: str) -> subprocess.Popen[bytes]:
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "pulse", "-i", monitor, "-ac", "1", "-ar", "16000",
           "-f", "s16le", "-y", "/dev/null"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- 3 replay ---------------------------------------------------------------------------------------------------------


def replay(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    res = ScenarioResult("replay", f"{sizes.outage_s:.0f} s outage during a live visit (file source in real time, "
                         "link cut by a TCP proxy)", "python -m benchmarks --only replay",
                         repeats=sizes.repeats)  # fmt: skip
    total = sizes.warmup_s + sizes.outage_s + sizes.after_outage_s
    wav = looped_dialogue(cache, total + 5)
    configs = {"default 4x pacing": {}, "unpaced": {"replay_speed": UNPACED}}
    figs: dict[str, dict[str, list[float]]] = {c: {"ready": [], "delay": [], "link": [], "backlog": [], "speed": []}
                                               for c in configs}  # fmt: skip
    curves: dict[str, list[tuple[float, float]]] = {}
    with server_process(work / "server") as srv:
        for rep in range(sizes.repeats):
            runs = {}
            for label, stream in configs.items():
                proxy = OutageProxy(srv.port)
                cfg = agent_config(srv, work / f"rp-{len(stream)}-{rep}", f"file:{wav}", duration_s=total,
                                   stream=stream, trace=True, speech_url=f"ws://127.0.0.1:{proxy.port}")  # fmt: skip
                runs[label] = (proxy, spawn_agent(cfg, work / f"rp-{len(stream)}-{rep}"))
            for _proxy, agent in runs.values():
                agent.wait_started()
            time.sleep(sizes.warmup_s)
            for proxy, _agent in runs.values():
                proxy.down()
            time.sleep(sizes.outage_s)
            for proxy, _agent in runs.values():
                proxy.up()
            for label, (proxy, agent) in runs.items():
                r = agent.result(timeout=total + 120)
                proxy.close()
                _check(res, r)
                c = catch_up(r, proxy.up_at)
                f = figs[label]
                f["ready"].append(c["done_at"] - c["ready_at"])
                f["link"].append(c["done_at"] - proxy.up_at)
                f["delay"].append(c["ready_at"] - proxy.up_at)
                f["backlog"].append(c["backlog_s"])
                f["speed"].append(c["backlog_s"] / (c["done_at"] - c["ready_at"]))
                if rep == 0:
                    curves[label] = _ack_curve(r, proxy.up_at)
    for label, f in figs.items():
        res.add(f"{label}: backlog (gated audio unacknowledged at link-up)", f["backlog"], "s")
        res.add(f"{label}: reconnect delay after link-up (backoff)", f["delay"], "s")
        res.add(f"{label}: reconnected -> backlog acknowledged", f["ready"], "s",
                "<= 16" if label.startswith("default") else "")  # fmt: skip
        res.add(f"{label}: link-up -> backlog acknowledged", f["link"], "s",
                "<= 20" if label.startswith("default") else "")  # fmt: skip
        res.add(f"{label}: replay speed (backlog / catch-up time)", f["speed"], "x",
                ">= 100" if label == "unpaced" else "")  # fmt: skip
    res.notes.append("link-up is when the proxy listens again; while it is down a connect is refused, and the agent "
                     "probes the speech host every stream.link_probe_s (2 s) instead of sleeping out its backoff")
    res.notes.append("the 16 s target is for a 60 s backlog; the dialogue is ~84% speech, so the gated backlog of a "
                     "60 s outage is shorter; compare the replay speed")  # fmt: skip
    res.plot["curves"] = curves
    return res


def _ack_curve(r: dict[str, Any], up_at: float) -> list[tuple[float, float]]:
    """(seconds since link-up, acked timeline position in seconds of audio) for every ack from 5 s before."""
    seq_end = {seq: start + n for _t, seq, start, n in r["sends"]}
    return [(t - up_at, seq_end.get(s, 0) / 16000) for t, s in sorted(r["acks"]) if t >= up_at - 5]


# --- 4 memory ---------------------------------------------------------------------------------------------------------


def memory(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    res = ScenarioResult("memory", f"RSS across {sizes.memory_audio_s / 60:.0f} min of audio, file source paced "
                         "'fast', unpaced stream", "python -m benchmarks --only memory")  # fmt: skip
    wav = looped_dialogue(cache, sizes.memory_audio_s)
    with server_process(work / "server") as srv:
        cfg = agent_config(srv, work / "mem", f"file:{wav}", pace="fast", duration_s=sizes.memory_audio_s,
                           stream={"replay_speed": UNPACED}, rss_interval_s=0.1)  # fmt: skip
        r = spawn_agent(cfg, work / "mem").result(timeout=1800)
    _check(res, r)
    t0, wall, audio_h = r["t0"], r["wall_s"], r["audio_s"] / HOUR
    # Audio position is proportional to elapsed time in a 'fast' run (the source never waits).
    series = [((t - t0) / wall * audio_h, rss / 2**20) for t, rss in r["rss"]]
    xs, ys = np.array([p[0] for p in series]), np.array([p[1] for p in series])
    tail = xs >= 0.2 * audio_h
    slope = float(np.polyfit(xs[tail], ys[tail], 1)[0]) if tail.sum() >= 3 else float("nan")
    res.add("RSS at visit start", [ys[0]], "MB")
    res.add("peak RSS", [ys.max()], "MB", "<= 80")
    res.add("RSS at visit end", [ys[-1]], "MB")
    res.add("growth (linear fit after the first 20%)", [slope], "MB per audio-hour", "< 1")
    res.add("audio", [r["audio_s"] / 60], "min")
    res.add("real-time factor", [r["audio_s"] / wall], "x")
    res.plot["rss"] = series
    return res


# --- 5 fleet ----------------------------------------------------------------------------------------------------------


def fleet(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    n = sizes.fleet_agents
    res = ScenarioResult("fleet", f"{n} agent processes streaming in real time to one server",
                         "python -m benchmarks --only fleet")  # fmt: skip
    wav = looped_dialogue(cache, sizes.fleet_s + 5)
    with server_process(work / "server") as srv:
        agents = []
        for i in range(n):
            cfg = agent_config(srv, work / f"fleet-{i}", f"file:{wav}", duration_s=sizes.fleet_s, wait_go=True,
                               trace=True)  # fmt: skip
            agents.append(spawn_agent(cfg, work / f"fleet-{i}"))
        for agent in agents:
            agent.wait_event("ready")
        s0, t0 = srv.cpu_s(), time.monotonic()
        for agent in agents:
            agent.go()
        results = [agent.result(timeout=sizes.fleet_s + 300) for agent in agents]
        server_cpu, wall = srv.cpu_s() - s0, time.monotonic() - t0
    for r in results:
        _check(res, r)
    _record_fleet(res, results, server_cpu, wall)
    return res


def _record_fleet(res: ScenarioResult, results: list[dict[str, Any]], server_cpu: float, wall: float) -> None:
    audio = sum(r["audio_s"] for r in results)
    lags = [lag * 1000 for r in results for lag in ack_lags(r)]
    p50, p95, p99 = percentiles(lags)
    res.add("agent CPU per audio-hour (one value per agent)", [per_hour(r["cpu_s"], r["audio_s"]) for r in results],
            "CPU-s")  # fmt: skip
    res.add("server CPU per agent audio-hour", [per_hour(server_cpu, audio)], "CPU-s")
    res.add("server CPU load while the fleet streamed", [server_cpu / wall * 100], "% of one core")
    res.add("ack lag p50 (first send -> ack)", [p50], "ms")
    res.add("ack lag p95", [p95], "ms")
    res.add("ack lag p99", [p99], "ms")
    res.add("visits confirmed", [sum(bool(r["confirmed"]) for r in results)], f"of {len(results)}")
    res.add("samples lost at the source (visit summaries)", [r["lost_samples"] for r in results], "samples")
    res.add("samples announced as a gap (visit summaries)", [r["gap_samples"] for r in results], "samples")
    res.notes.append("each agent is its own OS process (the real agent code, default StreamSettings: 100 ms "
                     "messages); all start streaming at the same moment")  # fmt: skip
    res.plot["fleet_cpu"] = [per_hour(r["cpu_s"], r["audio_s"]) for r in results]


# --- 6 startup (issue 11) ---------------------------------------------------------------------------------------------


def startup_cost(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    return startup(sizes.startup_runs, sizes.idle_settle_s)


def daemon(sizes: Sizes, work: Path, cache: Path) -> ScenarioResult:
    wav = looped_dialogue(cache, 600)
    soxr = {"audio": {**PROFILES["efficient"]["audio"], "resampler": "soxr"}, "stream": PROFILES["efficient"]["stream"]}
    profiles = {**PROFILES, "efficient with soxr": soxr}  # the resampler before issue 11, for comparison
    return daemon_bench.scenario(profiles, wav, work, sizes.daemon_visit_s, sizes.daemon_idle_s)


SCENARIOS = {"throughput": throughput, "live": live, "replay": replay, "memory": memory, "fleet": fleet,
             "startup": startup_cost, "daemon": daemon}  # fmt: skip
