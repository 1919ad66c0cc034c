#!/usr/bin/env bash
# Install what hangproof needs, idempotently: Debian packages, a virtualenv, the package.
# Fast when everything is already there. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 iptables conntrack keepalived rabbitmq-server curl procps make)
VENV=${HANGPROOF_VENV:-.venv}
# chromium: the browser test of the HTML timelines (headless, offline).
APT_PACKAGES+=(chromium)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
  echo "setup: installing ${missing[*]}" >&2
  # The package's own service must not start in the root namespace: the lab
  # starts its brokers itself, by pid, inside namespaces.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV" >&2
  python3 -m venv "$VENV"
fi
stamp="$VENV/.hangproof-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing hangproof and its extras into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[clients,doctor,guard,report,dev]"
  touch "$stamp"
fi
