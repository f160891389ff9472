"""``medisync-agent uploads``: look at and work the visit upload queue by hand.

    medisync-agent uploads list            every queued visit: state, appointment, size, attempts, next try, error
    medisync-agent uploads retry [--now]   upload due items (all pending and blocked ones with --now), with progress
    medisync-agent uploads add APPT WAV    queue a WAV for an appointment (what the daemon does when a visit ends)
    medisync-agent uploads purge           delete local audio of confirmed uploads whose retention has expired

The daemon uploads on its own; a retry here takes the queue's lock, so the two never upload the same item at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from agent.archive.upload_policy import ItemState
from agent.archive.upload_queue import UploadItem, UploadQueue
from agent.archive.upload_runner import DrainReport, Progress, Uploader, drain
from agent.config import add_config_arguments, load_from_args
from agent.errors import InputError
from agent.settings import AgentSettings

EX_TEMPFAIL = 75
"""Exit code when uploads remain to be done (sysexits EX_TEMPFAIL: try again later)."""

UploaderFactory = Callable[[AgentSettings], contextlib.AbstractAsyncContextManager[Uploader]]


@contextlib.asynccontextmanager
async def medisync_uploader(settings: AgentSettings) -> AsyncIterator[Uploader]:
    """The real MediSync client with the configured login (password from file, systemd credential or env)."""
    from agent.api.medisync import MediSyncClient  # imported here: `uploads list` must work without network deps
    from agent.api.secret import load_credentials

    async with MediSyncClient(
        settings.api, load_credentials(settings.api), max_upload_bytes=settings.upload.max_bytes
    ) as client:
        yield client


uploader_factory: UploaderFactory = medisync_uploader
"""How ``retry`` gets its uploader; the daemon and tests may wire another."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "uploads",
        help="list and retry queued visit uploads",
        description="Look at and work the queue of visit recordings waiting to be uploaded to MediSync.",
        epilog="Nothing here deletes audio that MediSync has not confirmed; dead letters stay in <queue_dir>/dead.",
    )
    actions = parser.add_subparsers(dest="uploads_action", metavar="ACTION")
    show = actions.add_parser(
        "list",
        help="show queued, blocked, done and dead-lettered uploads",
        description="Show every item of the upload queue, oldest first.",
    )
    show.set_defaults(func=cmd_list)
    retry = actions.add_parser(
        "retry",
        help="upload the items that are due now",
        description="Upload due items now, showing progress; exit 75 while items remain pending or blocked.",
    )
    retry.add_argument(
        "--now", action="store_true", help="try every pending and blocked item now, ignoring backoff and blocked timers"
    )
    retry.set_defaults(func=cmd_retry)
    add = actions.add_parser(
        "add",
        help="queue a visit recording for upload",
        description="Queue a WAV for an appointment (large files are encoded to MP3 first).",
    )
    add.add_argument("appointment_id", help="MediSync appointment id")
    add.add_argument("wav", type=Path, help="the visit's WAV file")
    add.set_defaults(func=cmd_add)
    purge = actions.add_parser(
        "purge",
        help="delete audio of confirmed uploads past their retention",
        description="Delete local audio of uploads MediSync confirmed, once retention expired.",
    )
    purge.set_defaults(func=cmd_purge)
    for sub in (show, retry, add, purge):
        add_config_arguments(sub)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def open_queue(args: argparse.Namespace) -> tuple[AgentSettings, UploadQueue]:
    settings = load_from_args(args).settings
    return settings, UploadQueue(settings.upload)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_rows(items: list[UploadItem], now: float) -> list[str]:
    header = f"{'ITEM':8}  {'STATE':7}  {'APPOINTMENT':24}  {'SIZE':>9}  {'TRIES':>5}  {'NEXT / DONE':19}  LAST ERROR"
    rows = [header]
    for item in items:
        if item.state is ItemState.DONE:
            when = _when(item.uploaded_at)
        elif item.state is ItemState.DEAD:
            when = "-"
        else:
            when = "now" if item.next_attempt_at <= now else _when(item.next_attempt_at)
        error = item.dead_reason if item.state is ItemState.DEAD else item.last_error
        rows.append(
            f"{item.item_id[:8]:8}  {item.state.value:7}  {item.appointment_id[:24]:24}  {_mb(item.size):>9}  "
            f"{item.attempts:>5}  {when:19}  {error or '-'}"
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    _, queue = open_queue(args)
    items = queue.items() + queue.dead_items()
    if not items:
        print(f"upload queue {queue.directory} is empty")
        return 0
    print("\n".join(format_rows(items, time.time())))
    return 0


class ProgressView:
    """Upload progress on stderr: a redrawn bar on a terminal, a line every 10 % otherwise (logs, journal)."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._label = ""
        self._last_decile = -1

    def for_item(self, item: UploadItem) -> Progress:
        self._label, self._last_decile = item.item_id[:8], -1
        return self.update

    def update(self, sent: int, total: int) -> None:
        fraction = sent / total if total > 0 else 1.0
        if self.tty:
            filled = int(fraction * 30)
            bar = "#" * filled + "." * (30 - filled)
            self.out.write(f"\r{self._label} [{bar}] {fraction:4.0%} {_mb(sent)} / {_mb(total)}")
            if sent >= total:
                self.out.write("\n")
            self.out.flush()
            return
        decile = int(fraction * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            print(f"{self._label}: {fraction:.0%} of {_mb(total)} sent", file=self.out, flush=True)


def summarize(report: DrainReport) -> str:
    if report.busy:
        return "another process (the daemon?) is uploading right now; nothing tried"
    parts = [
        f"{len(report.uploaded)} uploaded",
        f"{len(report.failed)} failed (will retry)",
        f"{len(report.blocked)} blocked (no subscription)",
        f"{len(report.dead)} dead-lettered",
    ]
    text = ", ".join(parts)
    if report.stopped_early:
        text += "; stopped early: MediSync refused or is unreachable, the rest waits"
    return text


async def retry_queue(
    queue: UploadQueue, settings: AgentSettings, *, force: bool, factory: UploaderFactory, out: TextIO
) -> DrainReport:
    view = ProgressView(out)
    async with factory(settings) as uploader:
        return await drain(queue, uploader, force=force, progress_for=view.for_item)


def cmd_retry(args: argparse.Namespace) -> int:
    settings, queue = open_queue(args)
    report = asyncio.run(retry_queue(queue, settings, force=args.now, factory=uploader_factory, out=sys.stderr))
    waiting = [i for i in queue.items() if i.state in (ItemState.PENDING, ItemState.BLOCKED)]
    print(summarize(report) + (f"; {len(waiting)} still waiting" if waiting else ""))
    return EX_TEMPFAIL if report.busy or waiting else 0


def cmd_add(args: argparse.Namespace) -> int:
    _, queue = open_queue(args)
    wav: Path = args.wav
    if not wav.is_file():
        raise InputError(f"{wav}: no such file")
    item = queue.enqueue(args.appointment_id, wav.resolve())
    print(f"queued as item {item.item_id[:8]} ({item.state.value}, {_mb(item.size)})")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    _, queue = open_queue(args)
    print(f"{queue.purge_expired()} expired recording(s) deleted")
    return 0
