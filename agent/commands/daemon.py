"""``medisync-agent daemon``: the long-running service systemd starts (see agent.daemon)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from agent.config import add_config_arguments, load_from_args
from agent.daemon import Daemon
from agent.malloc_bounds import bound_malloc
from agent.sdnotify import Notifier, watchdog_interval
from agent.settings import AgentSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="run the service: capture, visits via the control socket, uploads",
        description=(
            "Run the MediSync agent as a service (systemd starts it). The configured microphone stays open; visits "
            "are started and stopped with 'medisync-agent visit start/stop' through the control socket "
            "(daemon.control_socket); recordings are uploaded in the background, also after a reboot. "
            "SIGTERM ends a running visit cleanly (archive finished, upload queued) and exits; SIGHUP reloads the "
            "configuration (after the current visit). Talks to systemd over $NOTIFY_SOCKET (READY, WATCHDOG only "
            "while the microphone delivers audio, STATUS, STOPPING)."
        ),
    )
    add_config_arguments(parser)
    parser.set_defaults(func=cmd_daemon)


def cmd_daemon(args: argparse.Namespace) -> int:
    root = logging.getLogger()
    if root.level > logging.INFO:  # a service logs what it does; the journal keeps it
        root.setLevel(logging.INFO)
    settings = load_from_args(args).settings
    bound_malloc()  # before any thread starts: few arenas, freed memory given back (agent/malloc_bounds.py)

    def reload() -> AgentSettings:
        return load_from_args(args).settings

    daemon = Daemon(settings, reload=reload, notifier=Notifier.from_environ(), watchdog_s=watchdog_interval())
    return asyncio.run(daemon.run())
