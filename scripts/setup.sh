#!/usr/bin/env bash
# Install what hangproof needs, idempotently: Debian packages, a virtualenv, the package.
# Fast when everything is already there. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool for the alert rules' unit tests, and the real Prometheus of the
# prometheus-alerts lab scenario (its Debian service never starts: policy-rc.d below).
APT_PACKAGES=(iproute2 iptables conntrack keepalived rabbitmq-server curl procps make prometheus openssl)
VENV=${HANGPROOF_VENV:-.venv}
# chromium: the browser test of the HTML timelines (headless, offline).
APT_PACKAGES+=(chromium)
# nftables: `nft` for the lab's nftables kube-proxy modes and doctor's `nft -j list ruleset`.
APT_PACKAGES+=(nftables)

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
  # -- policy-rc.d, removed on every exit (issue 9) ---------------------------
  # The package's own service must not start in the root namespace: the lab
  # starts its brokers itself, by pid, inside namespaces. policy-rc.d (exit
  # 101) blocks every service start on the host, so it must never outlive this
  # script: a trap removes it on any exit (a failed apt-get under set -e
  # included), and only if we wrote it. Our file carries a marker line, so one
  # left by a killed run (SIGKILL runs no trap) is recognised and removed too.
  # HANGPROOF_POLICY_RC relocates it (tests; never set it in production).
  policy=${HANGPROOF_POLICY_RC:-/usr/sbin/policy-rc.d}
  policy_marker="# written by hangproof scripts/setup.sh; removed when it exits"
  created_policy=0
  if [ -e "$policy" ] && grep -qxF "$policy_marker" "$policy" 2>/dev/null; then
    created_policy=1 # ours, left by a killed run: reuse it, remove it below
  fi
  remove_policy() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
  trap remove_policy EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [ ! -e "$policy" ]; then
    created_policy=1
    printf '#!/bin/sh\n%s\nexit 101\n' "$policy_marker" > "$policy"
    chmod +x "$policy"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  remove_policy
  created_policy=0
  trap - EXIT INT TERM
  # -- end policy-rc.d ----------------------------------------------------------
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
