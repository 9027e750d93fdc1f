#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# engine-up.sh: make sure a Docker Engine answers on /var/run/docker.sock (idempotent, run as root).
#
# Usage: scripts/engine-up.sh
# Env:   DOCKERD_LOG (default /tmp/dockerd.log), DOCKERD_PIDFILE (default /var/run/docker.pid),
#        DOCKERD_FLAGS (extra dockerd flags; normally empty), DOCKERD_WAIT (seconds, default 60).
#
# Why started by hand: CI machines here have no systemd (PID 1 is not an init), so the docker.io
# package cannot start its service; we run dockerd in the background ourselves.
#
# Flags: measured on this kind of machine (Firecracker VM, ext4 root, cgroup v1, iptables-nft),
# plain `dockerd` works: overlay2 storage, iptables NAT and the docker0 bridge all come up, so no
# special flags are needed. Fallbacks, only if dockerd dies at start-up:
#   - overlay/graphdriver errors (e.g. root on overlayfs/tmpfs): retry with --storage-driver=vfs
#     (slow, copies every layer, but works anywhere);
#   - iptables/nat/bridge errors (kernel without netfilter): retry with --iptables=false
#     --bridge=none: the engine then runs, but containers only get networking with --network host.
#
# Clients: after install `which -a docker` lists /usr/local/bin/docker (client 28, first on PATH)
# and Debian's /usr/bin/docker (20.10). Both talk to dockerd 20.10 (API 1.41) for info/run/push.
# For BuildKit use `DOCKER_BUILDKIT=1 /usr/bin/docker build`: client 28 has no buildx plugin, so
# BuildKit fails through it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log=${DOCKERD_LOG:-/tmp/dockerd.log}
pidfile=${DOCKERD_PIDFILE:-/var/run/docker.pid}
wait_s=${DOCKERD_WAIT:-60}

# Debian's client if present (matches the 20.10 engine); otherwise whatever is on PATH.
docker_cli() { if [[ -x /usr/bin/docker ]]; then /usr/bin/docker "$@"; else docker "$@"; fi; }
answers() { docker_cli info >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null; then
  source "$here/lib-apt.sh"
  apt_install docker.io
fi

# start_dockerd FLAGS...: returns 0 once `docker info` answers, 1 if dockerd died or timed out.
start_dockerd() {
  echo "engine-up: starting dockerd $* (log $log)" >&2
  # setsid + </dev/null: detach from the caller's session/process group so the engine survives
  # the CI step that started it (and a kill of that step's process group).
  # shellcheck disable=SC2086
  setsid dockerd --pidfile "$pidfile" ${DOCKERD_FLAGS:-} "$@" </dev/null >>"$log" 2>&1 &
  local pid=$! i
  for ((i = 0; i < wait_s; i++)); do
    answers && return 0
    kill -0 "$pid" 2>/dev/null || { echo "engine-up: dockerd exited, see $log" >&2; return 1; }
    sleep 1
  done
  echo "engine-up: dockerd did not answer within ${wait_s}s, see $log" >&2
  kill "$pid" 2>/dev/null || true
  # A retry must not race the old daemon for its pidfile and socket.
  for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  return 1
}

if ! answers; then
  : >"$log"
  if ! start_dockerd; then
    # Only the failure lines tell why: containerd logs "overlayfs" plugins on every start.
    failures=$(grep -iE 'level=(error|fatal)|failed to start daemon' "$log" || true)
    if grep -qiE 'overlay|graphdriver|storage.driver' <<<"$failures"; then
      start_dockerd --storage-driver=vfs
    elif grep -qiE 'iptables|docker0|bridge' <<<"$failures"; then
      start_dockerd --iptables=false --bridge=none
    else
      tail -n 30 "$log" >&2; exit 1
    fi || { tail -n 30 "$log" >&2; exit 1; }
  fi
fi

docker_cli info --format 'engine-up: dockerd {{.ServerVersion}} ready (storage driver {{.Driver}})'
