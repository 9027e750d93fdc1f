#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# test-base-image.sh: build a local Debian bookworm base image for engine tests (idempotent, root).
#
# Usage: scripts/test-base-image.sh [NAME]      (default NAME: modelarts-test-base:bookworm)
#
# Why: no image can be pulled from a registry on these machines, but the Debian mirror is reachable
# through apt's normal route. So we debootstrap a minimal root (python3 + venv, Python 3.11) from the
# mirror the host's apt already uses and `docker import` it. The image's own
# /etc/apt/sources.list points at that same mirror over plain HTTP, which containers can reach,
# so `apt-get update && apt-get install ...` works inside it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${1:-modelarts-test-base:bookworm}
suite=bookworm

docker_cli() { if [[ -x /usr/bin/docker ]]; then /usr/bin/docker "$@"; else docker "$@"; fi; }

if docker_cli image inspect "$name" >/dev/null 2>&1; then
  echo "test-base-image: $name already present"; exit 0
fi

# The first mirror URI the host's apt sources use for suite $suite (one-line *.list and deb822
# *.sources formats; disabled entries skipped). No host name is hard-coded here.
host_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    awk -v s="$suite" '{ sub(/\[[^]]*\]/, ""); $0 = $0 } $1 == "deb" && $3 == s { print $2; exit }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; ok = 0; deb = 0; off = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)    { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Types:.*(^|[ \t])deb([ \t]|$)/) deb = 1
          if ($i ~ /^Enabled:[ \t]*no/) off = 1
          if ($i ~ /^Suites:/)  { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 } }
        if (ok && deb && !off && uri != "") { print uri; exit } }' "$f"
  done
}
mirror=$(host_mirror); mirror=${mirror%%$'\n'*}   # first hit (no `| head`: SIGPIPE + pipefail)
[[ -n $mirror ]] || { echo "test-base-image: no apt source for '$suite' found in /etc/apt" >&2; exit 1; }

command -v debootstrap >/dev/null || { source "$here/lib-apt.sh"; apt_install debootstrap; }

root=$(mktemp -d /var/tmp/test-base-root.XXXXXX)
cleanup() {
  # A failed debootstrap can leave proc/sys mounted inside the root: unmount before deleting.
  awk -v r="$root" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n 1 umount -l || true
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "test-base-image: debootstrap $suite from $mirror" >&2
t=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root" "$mirror" >&2
echo "test-base-image: debootstrap took $((SECONDS - t))s" >&2; t=$SECONDS
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*   # keep the image small
tar --numeric-owner -C "$root" -c . | docker_cli import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "test-base-image: import took $((SECONDS - t))s" >&2
docker_cli run --rm "$name" python3 -c 'import sys; print("test-base-image:", sys.argv[1], "python", sys.version.split()[0])' "$name"
