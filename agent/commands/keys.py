"""``medisync-agent keys``: the device key that seals visit recordings at rest (see ``agent.archive.keys``)."""

from __future__ import annotations

import argparse
import sys

from agent.archive.keys import init_keys, load_identity, load_recipient
from agent.config import add_config_arguments, load_from_args
from agent.errors import ConfigError

DESCRIPTION = """\
Every visit recording is sealed at rest in the age format (https://age-encryption.org/v1) to this device's key:
recording needs only the public recipient (age1...), uploading, repairing and exporting need the private key.
Each recording has its own file key inside its header, so deleting a recording's header destroys that visit.

  keys init    create the device key: the private key in archive.key_file (mode 0600) or, when that is empty and
               you are root, sealed as the systemd credential archive.key_credential (systemd-creds, TPM2 where
               the device has one); the recipient in archive.recipient_file
  keys show    print the public recipient (never the private key)

IT can open a recording by hand with Debian's age tool: age -d -i KEYFILE visit-....wav > visit.wav (the WAV
inside carries a streaming header; 'medisync-agent export' writes the exact one).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="create or show the device key that seals recordings",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION")
    init = actions.add_parser("init", help="create the device key", description=(
        "Create the device key (see 'medisync-agent keys --help'). Refuses to replace an existing key: recordings "
        "sealed to it could never be opened again."))  # fmt: skip
    init.add_argument("--key-file", metavar="FILE", help="write the private key here (default: archive.key_file)")
    init.add_argument("--recipient-file", metavar="FILE",
                      help="write the public recipient here (default: archive.recipient_file)")  # fmt: skip
    init.add_argument("--force", action="store_true", help="replace an existing key (old recordings become unreadable)")
    init.set_defaults(func=cmd_init)
    show = actions.add_parser("show", help="print the public recipient",
                              description="Print the device key's public recipient (age1...); never the private key.")
    show.set_defaults(func=cmd_show)
    for sub in (init, show):
        add_config_arguments(sub)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def cmd_init(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in (("archive.key_file", args.key_file),
                               ("archive.recipient_file", args.recipient_file)) if v}  # fmt: skip
    settings = load_from_args(args, flags).settings
    keys, where = init_keys(settings.archive, force=args.force)
    print(f"created the device key in {where}; recordings are sealed to {keys.recipient} "
          f"(recipient in {settings.archive.recipient_file})")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_from_args(args).settings.archive
    try:
        recipient = load_recipient(settings)
    except ConfigError:
        recipient = load_identity(settings).recipient  # no recipient file: derive it from the key, if readable
    print(recipient)
    if not settings.encrypt:
        print("note: archive.encrypt is false: new recordings are NOT sealed", file=sys.stderr)
    return 0
