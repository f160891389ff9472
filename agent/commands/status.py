"""``medisync-agent status``: what the running daemon is doing (see agent.control.DaemonStatus).

``status --follow`` prints the device state as one JSON line now and one per change (:mod:`agent.events`) until
interrupted (exit 130) or the daemon ends the stream (one line on stderr, exit 69).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator

import msgspec

from agent.commands.visit import add_common, cmd_status, connect_daemon, socket_path
from agent.control import MAX_LINE_BYTES, Follow, ProtocolViolation, encode_request, parse_response
from agent.errors import ControlError
from agent.events import StateEvent, encode_event, parse_event

CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for the daemon to accept the connection and the request (then the stream waits forever)."""
ENDED = "the daemon ended the event stream (it stopped, or this follower fell too far behind)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the running daemon's state",
        description=(
            "Show what the running daemon is doing: state, device, input level, voice share, speech connection, "
            "ring fill, reconnects and the upload queue. Exits 69 with one line if the daemon is not running. "
            "With --follow: one JSON line now and one per change of the device state (idle, recording, paused, "
            "offline, uploading, error, audio warnings) until interrupted or the daemon stops (exit 69)."
        ),
    )
    add_common(parser)
    parser.add_argument("--follow", action="store_true",
                        help="print the device state as JSON lines, one per change, until interrupted")  # fmt: skip
    parser.set_defaults(func=cmd_status_or_follow)


def cmd_status_or_follow(args: argparse.Namespace) -> int:
    if not args.follow:
        return cmd_status(args)
    for event in follow_daemon(socket_path(args)):
        print(encode_event(event).decode().rstrip("\n"), flush=True)
    return 0  # not reached: the stream ends with ControlError


def _event(line: bytes) -> StateEvent:
    """An event line -> StateEvent; the daemon's error answer (or anything else) -> ControlError."""
    try:
        return parse_event(line)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    try:
        response = parse_response(line)
    except ProtocolViolation as exc:
        raise ControlError(str(exc)) from None
    raise ControlError(response.error or ENDED)


def follow_daemon(path: str) -> Iterator[StateEvent]:
    """The daemon's state events as they come; ends only with ControlError (daemon gone, stream ended)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        connect_daemon(sock, path)
        sock.sendall(encode_request(Follow()))
        sock.settimeout(None)
        with sock.makefile("rb") as stream:
            while line := stream.readline(MAX_LINE_BYTES):
                yield _event(line)
    except TimeoutError:
        raise ControlError(f"the daemon did not answer within {CONNECT_TIMEOUT_S:.0f} s ({path})") from None
    except OSError as exc:
        raise ControlError(f"lost the connection to the daemon at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    raise ControlError(ENDED)
