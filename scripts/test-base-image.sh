#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# test-base-image.sh: build a local Debian bookworm base image for engine tests (idempotent, root).
#
# Usage: scripts/test-base-image.sh [NAME] [ARCH]
#   ARCH: amd64 (default) or arm64; x86_64 and aarch64 are read as those.
#   NAME: default modelarts-test-base:bookworm for the host's architecture,
#         modelarts-test-base:bookworm-ARCH for a foreign one.
#
# Why: no image can be pulled from a registry on these machines, but the Debian mirror is reachable
# through apt's normal route. So we debootstrap a minimal root (python3 + venv, Python 3.11) from the
# mirror the host's apt already uses and `docker import` it. The image's own
# /etc/apt/sources.list points at that same mirror over plain HTTP, which containers can reach,
# so `apt-get update && apt-get install ...` works inside it.
#
# A foreign ARCH (arm64 on this amd64 host) runs through QEMU user emulation: scripts/binfmt-up.sh
# registers the binfmt_misc handler (flag F, so chroots and containers use it), debootstrap then
# runs its second stage itself through the emulator (measured: about 3 minutes instead of 1), and
# the image is made with BuildKit (FROM scratch + ADD of the root's tar, --platform linux/ARCH):
# `docker import` would record the host's architecture, and `docker run` would then refuse the
# image or pick the wrong one. BuildKit needs Debian's /usr/bin/docker (20.10): the client 28 first
# on PATH has no buildx plugin (see engine-up.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=bookworm

case ${2:-amd64} in
  amd64 | x86_64) arch=amd64 machine=x86_64 ;;
  arm64 | aarch64) arch=arm64 machine=aarch64 ;;
  *) echo "test-base-image: unknown architecture '$2' (amd64/x86_64 or arm64/aarch64)" >&2; exit 2 ;;
esac
host_arch=$(dpkg --print-architecture)
if [[ $arch == "$host_arch" ]]; then
  name=${1:-modelarts-test-base:$suite}
else
  name=${1:-modelarts-test-base:$suite-$arch}
fi

docker_cli() { if [[ -x /usr/bin/docker ]]; then /usr/bin/docker "$@"; else docker "$@"; fi; }

if have=$(docker_cli image inspect -f '{{.Architecture}}' "$name" 2>/dev/null); then
  if [[ $have != "$arch" ]]; then
    echo "test-base-image: $name is present but its architecture is $have, not $arch;" \
      "remove it (docker rmi $name) or choose another NAME" >&2
    exit 1
  fi
  echo "test-base-image: $name already present ($have)"; exit 0
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

if [[ $arch != "$host_arch" ]]; then
  [[ -x /usr/bin/docker ]] ||
    { echo "test-base-image: $arch needs BuildKit through Debian's /usr/bin/docker (apt docker.io)" >&2; exit 1; }
  "$here/binfmt-up.sh" "$machine" >&2 ||
    { echo "test-base-image: no binfmt handler for $machine: run scripts/binfmt-up.sh $machine as root" >&2; exit 1; }
fi

root=$(mktemp -d /var/tmp/test-base-root.XXXXXX)
build=
cleanup() {
  # A failed debootstrap can leave proc/sys mounted inside the root: unmount before deleting.
  awk -v r="$root" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n 1 umount -l || true
  rm -rf --one-file-system "$root"
  [[ -z $build ]] || rm -rf "$build"
}
trap cleanup EXIT

if [[ $arch == "$host_arch" ]]; then
  echo "test-base-image: debootstrap $suite from $mirror" >&2
  t=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root" "$mirror" >&2
  echo "test-base-image: debootstrap took $((SECONDS - t))s" >&2; t=$SECONDS
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*   # keep the image small
  tar --numeric-owner -C "$root" -c . | docker_cli import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
  echo "test-base-image: import took $((SECONDS - t))s" >&2
  docker_cli run --rm "$name" python3 -c 'import sys; print("test-base-image:", sys.argv[1], "python", sys.version.split()[0])' "$name"
  exit 0
fi

# Foreign architecture: the same root, made by debootstrap through the emulator, then built with BuildKit.
echo "test-base-image: debootstrap $suite $arch from $mirror (second stage under QEMU)" >&2
t=$SECONDS
debootstrap --arch="$arch" --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >&2
echo "test-base-image: debootstrap $arch took $((SECONDS - t))s" >&2; t=$SECONDS
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*   # keep the image small
build=$(mktemp -d /var/tmp/test-base-build.XXXXXX)
tar --numeric-owner -C "$root" -cf "$build/rootfs.tar" .
printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' 'CMD ["/bin/bash"]' >"$build/Dockerfile"
DOCKER_BUILDKIT=1 /usr/bin/docker build --progress=plain --platform "linux/$arch" -t "$name" "$build" >&2
echo "test-base-image: image build took $((SECONDS - t))s" >&2
have=$(docker_cli image inspect -f '{{.Architecture}}' "$name")
[[ $have == "$arch" ]] ||
  { echo "test-base-image: $name was built but records architecture $have, not $arch" >&2; exit 1; }
# The container runs under the emulator: platform.machine() is what the kernel reports to it.
docker_cli run --rm --platform "linux/$arch" "$name" python3 -c 'import platform, sys
name, want = sys.argv[1:]
print("test-base-image:", name, platform.machine(), "python", sys.version.split()[0])
sys.exit(platform.machine() != want)' "$name" "$machine" ||
  { echo "test-base-image: $name does not run as $machine (machine printed above)" >&2; exit 1; }
