#!/bin/sh
# system-layer.sh [PACKAGE...]: context/Dockerfile's system-build stage. Installs vim, curl, ca-certificates and
# the stack's apt packages through APT_MIRROR (apt-install.sh, kept in the image as modelarts-apt-install), takes
# the training uid from a user of the base that has it, and makes the system packages' layer: /out/system, every
# file and directory the step created or changed (by inode change time), with the time SOURCE_DATE_EPOCH.
#
# Why a tree and not the RUN's own layer: the engine gives a RUN layer the clock's time on every directory it
# touched and on the whiteouts of what it deleted, so two builds of the same packages would differ. What the step
# deletes from the base (its apt logs, a removed user's home) stays in the base's layer: hiding it saves nothing.
# Needs MA_USER, MA_UID, SOURCE_DATE_EPOCH.
set -eu
work=/tmp/system
mark="$work/mark"
touch "$mark"
install -m 0755 "$work/apt-install.sh" /usr/local/sbin/modelarts-apt-install
modelarts-apt-install vim curl ca-certificates "$@"
# ModelArts runs jobs as the training uid and expects it to be the training user (ubuntu:24.04 has `ubuntu` there).
other=$(getent passwd "${MA_UID}" || true)
other=${other%%:*}
if [ -n "$other" ] && [ "$other" != "${MA_USER}" ]; then userdel -r "$other" 2>/dev/null || userdel "$other"; fi
# Every changed path, relative to /, with its parent directories (so they keep their own owner and mode).
find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /out -o -path "$work" \) -prune -o \
    -cnewer "$mark" ! -path /etc/hosts ! -path /etc/hostname ! -path /etc/resolv.conf ! -path / -print |
    awk '{ n = split(substr($0, 2), part, "/"); path = ""
           for (i = 1; i <= n; i++) { path = (i == 1 ? part[i] : path "/" part[i]); print path } }' |
    sort -u > "$work/changed"
mkdir -p /out/system
tar -C / --no-recursion --xattrs -cf - -T "$work/changed" | tar -C /out/system --xattrs -xpf -
find /out/system -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
