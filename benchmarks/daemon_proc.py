"""``python -m benchmarks.daemon_proc TRACE.json daemon --config ...``: the real daemon, with the latency probe.

Runs :func:`agent.cli.main` (``medisync-agent daemon``) in this process after installing the opt-in probe of
:mod:`benchmarks.agent_proc` (wrappers of :func:`agent.stream.wire.encode_audio`/``decode`` that append a tuple per
message) and a hook on ``agent.visit.Visit._handle_output`` that records each frame's capture time; no agent code
changes. With ``MEDISYNC_LATENCY_STAGES=1`` also the per-stage hooks of :mod:`benchmarks.latency_stages`. The
records are written to TRACE.json when the daemon exits (SIGTERM). CPU and memory figures come from
the plain ``medisync-agent daemon`` (without this wrapper), latency from this one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent import cli
from agent.audio.pipeline import PipelineOutput
from agent.visit import Visit
from benchmarks.agent_proc import Probe
from benchmarks.latency_stages import StageProbe, enabled


def main(argv: list[str]) -> int:
    trace, args = Path(argv[0]), argv[1:]
    probe = Probe(trace=True)
    probe.install()
    staged = StageProbe() if enabled() else None
    if staged is not None:
        staged.install()
    handle = Visit._handle_output

    def hooked(self: Visit, out: PipelineOutput) -> None:
        probe.on_output(out)
        handle(self, out)

    Visit._handle_output = hooked  # type: ignore[method-assign]
    try:
        return cli.main(args)
    finally:
        record = {"frames": probe.frames, "sends": probe.sends, "acks": probe.acks, "readies": probe.readies,
                  "lookback": probe.lookback}  # fmt: skip
        if staged is not None:
            record["stages"] = staged.record()
        trace.write_text(json.dumps(record))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
