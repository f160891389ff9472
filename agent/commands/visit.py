"""``medisync-agent visit start --appointment ID`` / ``visit stop``: control the running daemon's visit.

Also home of :func:`ask_daemon`, the control socket client used by ``status``.
"""

from __future__ import annotations

import argparse
import socket
import sys

import msgspec

from agent.config import add_config_arguments, load_from_args
from agent.control import (
    MAX_LINE_BYTES,
    GetStatus,
    ProtocolViolation,
    Request,
    Response,
    StartVisit,
    StopVisit,
    encode_request,  # fmt: skip
    format_status,
    parse_response,
    validate_appointment_id,
)
from agent.errors import ControlError, InputError
from agent.safe_text import clean_line, clean_text

REQUEST_TIMEOUT_S = 120.0
"""Seconds to wait for the daemon's answer: a start checks the account, a stop waits for the stream to close."""


def connect_daemon(sock: socket.socket, socket_path: str) -> None:
    """Connect ``sock`` to the control socket; ControlError with one clear line if nobody is there."""
    try:
        sock.connect(socket_path)
    except FileNotFoundError:
        raise ControlError(f"the daemon is not running (no control socket at {socket_path})") from None
    except ConnectionRefusedError:
        raise ControlError(f"the daemon is not running (nothing listens on {socket_path})") from None
    except PermissionError:
        raise ControlError(f"no permission to use {socket_path} (are you in the service's group?)") from None


def ask_daemon(socket_path: str, request: Request, timeout_s: float = REQUEST_TIMEOUT_S) -> Response:
    """Send one request over the control socket and return the answer; ControlError with one clear line if not."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        connect_daemon(sock, socket_path)
        sock.sendall(encode_request(request))
        line = _read_line(sock)
    except TimeoutError:
        raise ControlError(f"the daemon did not answer within {timeout_s:.0f} s ({socket_path})") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the daemon at {socket_path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        return parse_response(line)
    except ProtocolViolation as exc:
        raise ControlError(str(exc)) from None


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(MAX_LINE_BYTES)
        if not chunk:
            raise ControlError("the daemon closed the connection without answering")
        data += chunk
    return data


def print_response(response: Response, as_json: bool) -> int:
    """Print the answer (text or JSON) and return the exit code: 0 if the daemon did it, 1 if it refused."""
    if as_json:
        print(msgspec.json.encode(response).decode())
    elif response.ok:  # the daemon's words may quote MediSync's: cleaned for the terminal
        if response.message:
            print(clean_line(response.message))
        if response.status is not None:
            print(clean_text(format_status(response.status)))
    else:
        print(f"medisync-agent: error: {clean_line(response.error)}", file=sys.stderr)
    return 0 if response.ok else 1


def add_common(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--socket", metavar="PATH", help="control socket (default: daemon.control_socket)")
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return load_from_args(args).settings.daemon.control_socket


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "visit", help="start or stop a visit on the running daemon",
        description="Start or stop the recording of a visit on the running daemon (medisync-agent daemon).",
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start", help="start recording a visit",
        description="Start recording a visit for a MediSync appointment: the daemon checks the account, then "
                    "captures, streams and archives until 'visit stop'.",
    )  # fmt: skip
    start.add_argument("--appointment", metavar="ID", required=True, help="MediSync appointment id")
    add_common(start)
    start.set_defaults(func=cmd_start)
    stop = actions.add_parser(
        "stop", help="stop the running visit",
        description="Stop the running visit: the archive is finished and its upload queued; waits until done.",
    )  # fmt: skip
    add_common(stop)
    stop.set_defaults(func=cmd_stop)


def cmd_start(args: argparse.Namespace) -> int:
    try:
        appointment_id = validate_appointment_id(args.appointment)
    except ProtocolViolation as exc:
        raise InputError(str(exc)) from None
    return print_response(ask_daemon(socket_path(args), StartVisit(appointment_id=appointment_id)), args.json)


def cmd_stop(args: argparse.Namespace) -> int:
    return print_response(ask_daemon(socket_path(args), StopVisit()), args.json)


def cmd_status(args: argparse.Namespace) -> int:
    return print_response(ask_daemon(socket_path(args), GetStatus(), timeout_s=10.0), args.json)
