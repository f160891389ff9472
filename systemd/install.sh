#!/usr/bin/env bash
# Install or update the MediSync Edge Agent as a systemd service (Raspberry Pi OS / Debian 12). Idempotent.
set -euo pipefail

readonly SERVICE=medisync-agent
readonly SERVICE_USER=medisync-agent
readonly PREFIX=/opt/medisync-agent
readonly VENV="$PREFIX/venv"
readonly CONFIG_DIR=/etc/medisync-agent
readonly CONFIG_FILE="$CONFIG_DIR/agent.toml"
readonly PASSWORD_FILE="$CONFIG_DIR/password"
readonly KEY_CREDENTIAL="$CONFIG_DIR/archive-key.cred"
readonly RECIPIENT_FILE="$CONFIG_DIR/archive.recipient"
readonly UNIT_DIR=/etc/systemd/system

usage() {
    cat <<USAGE
Usage: sudo $0 [options]

Installs the MediSync Edge Agent from this checkout as the systemd service '$SERVICE':
  - apt packages libportaudio2 and python3-venv
  - system user '$SERVICE_USER' (member of group 'audio')
  - virtual environment $VENV with the agent installed from the checkout (dependencies from wheels only)
  - $CONFIG_FILE from 'medisync-agent config example' when absent (an existing file is kept)
  - the MediSync password in $PASSWORD_FILE (mode 0600, root), handed to the service as a systemd credential
  - the device key that seals recordings at rest, when none exists yet: 'medisync-agent keys init' seals it with
    systemd-creds (TPM2 where the device has one) into $KEY_CREDENTIAL (LoadCredentialEncrypted= in the unit);
    its public recipient in $RECIPIENT_FILE (readable by the service: recording needs only that)
  - the unit $UNIT_DIR/$SERVICE.service, enabled and started (only enabled where systemd is not running,
    e.g. in a chroot building an SD card image: it starts at the next boot)
Running it again updates the agent and the unit and keeps configuration, password, device key, recordings and
upload queue.

Options:
  --email ADDRESS     login e-mail of the clinic's MediSync account (written into a newly created config file)
  --password-stdin    read the password from standard input (otherwise: prompt, when none is stored yet)
  --new-password      replace a stored password (prompt or --password-stdin)
  --no-apt            do not run apt-get (packages already installed)
  --no-start          install and enable, but do not (re)start the service
  -h, --help          show this help
USAGE
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
note() { echo "install.sh: $*"; }

email=""
password_stdin=0
new_password=0
run_apt=1
start=1
while [ $# -gt 0 ]; do
    case "$1" in
        --email) [ $# -ge 2 ] || die "--email needs an address"; email="$2"; shift 2 ;;
        --password-stdin) password_stdin=1; shift ;;
        --new-password) new_password=1; shift ;;
        --no-apt) run_apt=0; shift ;;
        --no-start) start=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "$checkout/pyproject.toml" ] || die "$checkout does not look like the agent's checkout (no pyproject.toml)"
if [ -n "$email" ] && ! [[ "$email" =~ ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+$ ]]; then
    die "--email $email does not look like an e-mail address"
fi

if [ "$run_apt" -eq 1 ]; then
    note "installing apt packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libportaudio2 python3-venv
fi

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    note "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir /var/lib/medisync-agent --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi
usermod --append --groups audio "$SERVICE_USER"

note "installing the agent into $VENV"
install -d -m 0755 "$PREFIX"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade --only-binary=:all: pip
# Wheels only: a device has no compiler, and a source build would fail late and obscurely (or take an hour).
"$VENV/bin/pip" install --quiet --upgrade --only-binary=:all: "$checkout" \
    || die "pip could not install the agent from wheels: a dependency named above has no wheel for $(uname -m)"
# The files pip just wrote stay cached as large folios that the daemon would map whole (~6 MB more resident than
# after a reboot, agent/page_cache.py): drop them, so the first start maps what a later one does.
"$VENV/bin/python" -m agent.page_cache "$VENV"

install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
if [ ! -e "$CONFIG_FILE" ]; then
    note "writing $CONFIG_FILE"
    tmp="$(mktemp "$CONFIG_DIR/.agent.toml.XXXXXX")"
    "$VENV/bin/medisync-agent" config example >"$tmp"
    if [ -n "$email" ]; then
        sed -i "s|^#email = \"\"\$|email = \"$email\"|" "$tmp"
    fi
    chown "root:$SERVICE_USER" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$CONFIG_FILE"
else
    note "keeping $CONFIG_FILE"
    [ -z "$email" ] || note "not changing the e-mail in the existing $CONFIG_FILE (edit api.email there)"
fi
"$VENV/bin/medisync-agent" config show --config "$CONFIG_FILE" >/dev/null

if [ ! -s "$PASSWORD_FILE" ] || [ "$new_password" -eq 1 ]; then
    if [ "$password_stdin" -eq 1 ]; then
        IFS= read -r password || [ -n "${password:-}" ] || die "no password on standard input"
    elif [ -t 0 ]; then
        IFS= read -r -s -p "MediSync password: " password
        echo
    else
        die "no password stored yet: pass it with --password-stdin or run interactively"
    fi
    [ -n "$password" ] || die "the password is empty"
    (umask 077 && printf '%s\n' "$password" >"$PASSWORD_FILE.new")
    unset password
    chown root:root "$PASSWORD_FILE.new"
    chmod 0600 "$PASSWORD_FILE.new"
    mv "$PASSWORD_FILE.new" "$PASSWORD_FILE"
    note "stored the password in $PASSWORD_FILE (mode 0600)"
else
    chmod 0600 "$PASSWORD_FILE"
    note "keeping the stored password"
fi

if [ ! -s "$KEY_CREDENTIAL" ]; then
    command -v systemd-creds >/dev/null 2>&1 || die "systemd-creds is needed to seal the device key (systemd 250 or newer)"
    rm -f "$RECIPIENT_FILE" "$KEY_CREDENTIAL"  # an empty credential; a recipient without its key seals for nobody
    "$VENV/bin/medisync-agent" keys init --config "$CONFIG_FILE" --key-file "" --recipient-file "$RECIPIENT_FILE"
    note "created the device key, sealed in $KEY_CREDENTIAL"
else
    note "keeping the device key in $KEY_CREDENTIAL"
fi
chown root:root "$KEY_CREDENTIAL"
chmod 0600 "$KEY_CREDENTIAL"
chown "root:$SERVICE_USER" "$RECIPIENT_FILE"
chmod 0640 "$RECIPIENT_FILE"

note "installing $UNIT_DIR/$SERVICE.service"
install -m 0644 "$checkout/systemd/$SERVICE.service" "$UNIT_DIR/$SERVICE.service"
if [ ! -d /run/systemd/system ]; then
    # No systemd as PID 1 (an SD card image being built, a chroot, a container): systemctl enables the unit by
    # its files alone; there is no manager to reload or to start it, so it starts at the next boot.
    systemctl enable "$SERVICE.service"
    note "systemd is not running here: enabled for the next boot, not started"
    exit 0
fi
systemctl daemon-reload
systemctl enable "$SERVICE.service"
if [ "$start" -eq 1 ]; then
    systemctl restart "$SERVICE.service"
    note "started; follow it with: journalctl -u $SERVICE -f"
else
    note "enabled, not started (--no-start)"
fi
