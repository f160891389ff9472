"""``medisync-agent record``: capture a source into a crash-safe WAV archive and show the voice gate's segments."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from agent import SAMPLE_RATE
from agent.archive.keys import load_archive_keys, load_identity
from agent.archive.repair import RepairResult, repair_all
from agent.audio.sources import open_source
from agent.commands._args import duration_seconds
from agent.config import add_config_arguments, load_from_args
from agent.errors import ConfigError
from agent.recorder import Recorder, RecordSummary, SpeechSegment
from agent.settings import ArchiveSettings

DESCRIPTION = """\
Record audio into a WAV file (16 kHz mono 16-bit, the visit timeline) the way a visit is archived: the source is
resampled, every sample is written (the voice gate only marks speech, it does not cut the archive), and the file
is crash-safe: while recording it is FILE.wav.partial (made durable every second), and it becomes FILE.wav when
recording ends. Ctrl-C or SIGTERM end the recording cleanly. Interrupted recordings (.partial files) found in the
output folder are repaired first (sealed ones need the device key: 'medisync-agent repair').

The file is sealed (age format, to the device key's public recipient: archive.recipient_file) unless you ask
for plaintext with --plaintext; open a sealed one with 'medisync-agent export FILE --out PLAIN.wav'.

Sources:
  mic                        the default microphone
  mic:NAME                   the input device whose name contains NAME (see 'medisync-agent devices')
  mic:NAME@48000x1           ... opened at 48000 Hz, 1 channel
  file:PATH.wav              a WAV file (16/24/32-bit PCM or 32-bit float, 8-48 kHz, mono or stereo)
  synth:RECIPE               synthetic test audio

Prints each speech segment the voice gate found (timeline seconds) and a summary.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "record",
        help="record a microphone or file into a crash-safe WAV file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", required=True, metavar="SRC", help="what to record (see above)")
    parser.add_argument("--out", required=True, metavar="FILE.wav", type=Path, help="the WAV file to write")
    parser.add_argument("--duration", metavar="S",
                        help="stop after S seconds of audio (a finite number, at least one frame)")  # fmt: skip
    parser.add_argument(
        "--pace", choices=("realtime", "fast"), help="file and synth sources: real time or as fast as possible"
    )
    parser.add_argument("--frame-ms", type=int, choices=(10, 20, 30), help="timeline frame (and VAD frame) in ms")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE.wav if it exists")
    parser.add_argument("--plaintext", action="store_true",
                        help="write a plaintext WAV instead of a sealed one (patient audio readable by anyone "
                             "who gets the file)")  # fmt: skip
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    flags: dict[str, object] = {"audio.source": args.source, "archive.directory": str(out.parent)}
    if args.pace is not None:
        flags["audio.pace"] = args.pace
    if args.frame_ms is not None:
        flags["audio.frame_ms"] = args.frame_ms
    if args.plaintext:
        flags["archive.encrypt"] = False
    settings = load_from_args(args, flags).settings
    keys = load_archive_keys(settings.archive, identity=False)  # only the public recipient: exit 78 if missing
    duration_s = duration_seconds(args.duration, frame_ms=settings.audio.frame_ms)
    source = open_source(settings.audio.source, settings.audio)  # a bad source fails before any file is touched
    repair_leftovers(out.parent, settings.archive)
    recorder = Recorder(source, out, settings, duration_s=duration_s, overwrite=args.overwrite,
                        on_segment=print_segment, recipient=keys.recipient if keys else None)  # fmt: skip
    print(f"recording {source.description} to {out} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    with stop_on_signals(recorder):
        summary = recorder.run()
    print_summary(summary)
    return 0


def repair_leftovers(folder: Path, settings: ArchiveSettings) -> None:
    """Repair interrupted recordings in ``folder``; sealed ones only if the device key is readable here (recording
    itself never needs it: those are left for 'medisync-agent repair')."""
    if not folder.is_dir():
        return  # the archive reports a missing folder in its own words
    try:
        identity = load_identity(settings) if settings.key_file or settings.encrypt else None
    except ConfigError:
        identity = None
    for outcome in repair_all(folder, identity=identity):
        if isinstance(outcome, RepairResult):
            print(f"repaired interrupted recording {outcome.final} ({outcome.seconds:.2f} s)", flush=True)
        else:
            print(f"medisync-agent: warning: {outcome.reason}", file=sys.stderr, flush=True)


@contextmanager
def stop_on_signals(recorder: Recorder) -> Iterator[None]:
    """SIGINT and SIGTERM stop the recording (the archive is finished normally) instead of killing the process."""

    def handler(signum: int, frame: FrameType | None) -> None:
        recorder.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def timestamp(samples: int) -> str:
    seconds = samples / SAMPLE_RATE
    return f"{int(seconds // 60):02d}:{seconds % 60:06.3f}"


def print_segment(segment: SpeechSegment) -> None:
    print(f"speech {timestamp(segment.start)} - {timestamp(segment.end)}  [{segment.start}, {segment.end})", flush=True)


def print_summary(summary: RecordSummary) -> None:
    ended = {"end": "end of source", "duration": "duration reached", "stop": "stopped"}[summary.stopped_by]
    print(
        f"saved {summary.path}: {summary.seconds:.2f} s ({summary.samples} samples), "
        f"{len(summary.segments)} speech segments, speech {summary.speech_share:.0%} of frames, "
        f"{len(summary.gaps)} overflows ({summary.lost_samples} samples filled with silence); {ended}",
        flush=True,
    )
