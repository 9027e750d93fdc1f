#!/bin/sh
# apt-install.sh PACKAGE...: install Debian/Ubuntu packages through APT_MIRROR, leaving no apt lists behind.
#
# Used by context/Dockerfile's stages (installed in the image as /usr/local/sbin/modelarts-apt-install, so a
# Dockerfile built on the image can install through the same mirror handling).
#
# NVIDIA rotated its CUDA apt key in 2022: on old nvidia/cuda images `apt-get update` fails with NO_PUBKEY while
# the cuda and nvidia-ml lists are present, and an image needs only the distribution's own packages: they stay
# removed. The Ubuntu sources are pointed at APT_MIRROR (archive, security and ports hosts; one-line and deb822
# formats) for this run only; the original files are put back afterwards.
set -eu
[ "$#" -gt 0 ] || { echo "usage: apt-install.sh PACKAGE..." >&2; exit 2; }
# coreutils 9.1's `cp -a --parents` resolves an absolute source's parents from the working directory: work from /.
cd /
rm -f /etc/apt/sources.list.d/cuda.list /etc/apt/sources.list.d/nvidia-ml.list
saved=$(mktemp -d)
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    cp -a --parents "$f" "$saved/"
    if [ -n "${APT_MIRROR:-}" ]; then
        sed -i -E "s@https?://([a-z0-9.-]+\.)?(archive|security|ports)\.ubuntu\.com@${APT_MIRROR%/}@g" "$f"
    fi
done
restore() { cp -a "$saved/etc/apt/." /etc/apt/; rm -rf "$saved"; }
trap restore EXIT
# No translated descriptions (nothing here reads them), and no fsync after every file dpkg unpacks: a build step's
# files reach the disk when the engine commits its layer.
apt-get -o Acquire::Languages=none update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-unsafe-io "$@"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/log/alternatives.log /var/cache/debconf/*-old \
    /var/cache/ldconfig/aux-cache
