#!/usr/bin/env bash
# Remove the MediSync Edge Agent service. Recordings and the upload queue are kept unless --purge.
set -euo pipefail

readonly SERVICE=medisync-agent
readonly SERVICE_USER=medisync-agent
readonly PREFIX=/opt/medisync-agent
readonly CONFIG_DIR=/etc/medisync-agent
readonly STATE_DIR=/var/lib/medisync-agent
readonly UNIT_FILE=/etc/systemd/system/$SERVICE.service

usage() {
    cat <<USAGE
Usage: sudo $0 [--purge]

Stops and disables the '$SERVICE' service, removes its unit and $PREFIX (the virtual environment).
Keeps $STATE_DIR (visit recordings and the upload queue: visits not uploaded yet are still there),
$CONFIG_DIR (configuration and password) and the user '$SERVICE_USER'.

Options:
  --purge     also delete $STATE_DIR (recordings not yet uploaded are LOST), $CONFIG_DIR and the user
  -h, --help  show this help
USAGE
}

die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
note() { echo "uninstall.sh: $*"; }

purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"

if [ -e "$UNIT_FILE" ]; then
    note "stopping and disabling $SERVICE"
    systemctl disable --now "$SERVICE.service" || note "could not stop $SERVICE cleanly; continuing"
    rm -f "$UNIT_FILE"
    systemctl daemon-reload
fi
rm -rf "$PREFIX"
note "removed the unit and $PREFIX"

if [ "$purge" -eq 1 ]; then
    rm -rf "$STATE_DIR" "$CONFIG_DIR"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER"
    fi
    note "purged $STATE_DIR (recordings, upload queue), $CONFIG_DIR and the user $SERVICE_USER"
else
    note "kept $STATE_DIR (recordings and upload queue) and $CONFIG_DIR; remove them with --purge"
fi
