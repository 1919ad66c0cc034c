#!/usr/bin/env bash
# One run of the report's loop on a fresh lab, for docs/seed-loop.md (issue 11).
# Usage (always through scripts/labrun): sudo scripts/labrun scripts/seed_loop_once.sh OUT.json [cluster|single] [ARGS...]
# Brings a lab up (3-node RabbitMQ cluster, or the single broker on n1), runs
# `hangproof lab run seed-loop --json ARGS` (defaults: literal waiter, --trigger none),
# writes its JSON to OUT.json, and takes the lab down again whatever happened.
set -u
out=$1; shift
kind=${1:-cluster}; shift || true
here=$(cd "$(dirname "$0")/.." && pwd)
hp="$here/.venv/bin/hangproof"
name=hpsl
cluster=(); [ "$kind" = cluster ] && cluster=(--cluster)
trap '"$hp" lab down --name "$name" >/dev/null 2>&1' EXIT
"$hp" lab up "${cluster[@]}" --name "$name" >/dev/null || exit 2
"$hp" lab run seed-loop --name "$name" --json "$@" >"$out"
rc=$?
echo "seed_loop_once: rc=$rc -> $out" >&2
exit $rc
