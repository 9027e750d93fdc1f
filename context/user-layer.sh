#!/bin/sh
# user-layer.sh: context/Dockerfile's user stage. Creates the training user (MA_USER, MA_UID:MA_GID, home
# /home/MA_USER, 0755) in its group, and copies what that changed into /out/user with the times set to
# SOURCE_DATE_EPOCH, the shadow file's date of last change included: the same layer in every build on the same
# system packages. -l: no lastlog or faillog entry (for a large uid a large sparse file).
# On an Ascend image (NPU_GROUP and NPU_GID set) the user also joins the group of the host's NPU devices
# (HwHiAiUser, gid 1000). A CANN base may hold a HwHiAiUser *user* at the training user's uid: that account goes
# (ModelArts runs the job as MA_UID, which must name the training user) and its group stays, or is made.
set -eu
if [ -n "${NPU_GROUP:-}" ]; then
    holder=$(getent passwd "${MA_UID}" | cut -d: -f1)
    if [ -n "${holder}" ] && [ "${holder}" != "${MA_USER}" ]; then
        echo "user-layer: uid ${MA_UID} is ${holder} in the base; it becomes ${MA_USER}" >&2
        userdel "${holder}"
    fi
    getent group "${NPU_GROUP}" >/dev/null || groupadd -g "${NPU_GID}" "${NPU_GROUP}"
fi
if ! getent group "${MA_GID}" >/dev/null; then
    if [ "${MA_GID}" = 100 ]; then groupadd -g 100 users; else groupadd -g "${MA_GID}" "${MA_USER}"; fi
fi
useradd -l -m -d "/home/${MA_USER}" -s /bin/bash -g "${MA_GID}" ${NPU_GROUP:+-G "${NPU_GROUP}"} -u "${MA_UID}" \
    "${MA_USER}"
chmod 0755 "/home/${MA_USER}"
sed -i -E "s/^(${MA_USER}:[^:]*:)[0-9]*:/\1$((SOURCE_DATE_EPOCH / 86400)):/" /etc/shadow
# The files useradd and groupadd write (and their backups, the content before), named rather than found by time.
mkdir -p /out/user
for path in /etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/subuid /etc/subgid; do
    for file in "$path" "$path-"; do
        if [ -f "$file" ]; then cp -a --parents "$file" /out/user; fi
    done
done
cp -a --parents "/home/${MA_USER}" /out/user
find /out/user -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
rm -f /tmp/user-layer.sh
