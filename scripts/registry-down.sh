#!/usr/bin/env bash
# registry-down.sh: stop the registry that scripts/registry-up.sh started on PORT and delete its
# temp dir (config, htpasswd, pushed data). Idempotent: nothing to do if it is not running.
#
# Usage: scripts/registry-down.sh PORT
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 PORT" >&2; exit 2; }
state=/tmp/registry-$1.state
[[ -r $state ]] || { echo "registry-down: no registry recorded for port $1"; exit 0; }
read -r pid dir <"$state"
# Only kill the pid if it is still our registry (pids get reused).
if kill -0 "$pid" 2>/dev/null && grep -qa docker-registry "/proc/$pid/cmdline"; then
  kill "$pid"
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
fi
[[ $dir == /tmp/registry-"$1".* ]] && rm -rf "$dir"
rm -f "$state"
echo "registry-down: stopped registry on port $1"
