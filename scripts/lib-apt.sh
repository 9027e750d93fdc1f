# shellcheck shell=bash
# Sourced by the other scripts/ helpers: install Debian packages only if they are missing.

# apt_install PKG... : idempotent `apt-get install --no-install-recommends`.
# - Skips packages dpkg already reports as installed (no network, no apt lock when nothing to do).
# - Runs `apt-get update` only if needed: when a package has no install candidate (fresh machine
#   with empty lists) or when the install fails (stale lists -> 404 on .deb files).
# - Blocks service auto-start during install with policy-rc.d (exit 101): without it the
#   docker-registry package starts its own registry on :5000 and docker.io may try to start
#   dockerd via init scripts/systemd; our helpers start what they need themselves.
apt_install() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  export DEBIAN_FRONTEND=noninteractive
  for p in "${missing[@]}"; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      apt-get update -qq; break
    fi
  done
  local own_policy=0 rc=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  return "$rc"
}
