#!/bin/sh
# conda-install.sh CONTEXT [OUT BASE_ETC]: runs CONTEXT/installer/${INSTALLER} the way the recipe does (batch mode,
# fixed prefix) and leaves no package cache. Needs INSTALLER, CONDA_PREFIX, MA_USER, MA_UID, MA_GID,
# SOURCE_DATE_EPOCH.
#
# The packages the installer brings at another version than the lock's (CONTEXT/packages.txt: the wheels the
# packages' steps install) are uninstalled here, so that those steps, which install in the image itself, add files
# and delete none (a file deleted from a lower layer leaves a whiteout dated by the clock). Then:
# with OUT (BuildKit's conda stage), the conda layer is made as the tree OUT (layers.py tree), with empty
#   /etc/hosts and /etc/resolv.conf where the base has none (BASE_ETC: the base's /etc, mounted);
# without (the classic builder, in the image itself), what the step wrote is dated in place (layers.py settle).
set -eu
context=$1
out=${2:-}
installer=${context}/installer/${INSTALLER}
python="${CONDA_PREFIX}/bin/python"
layers() { "$python" -S -s "${context}/layers.py" "$@"; }
mark=$(mktemp)
# Bytecode the installer writes: hash-based with SOURCE_DATE_EPOCH set (Python 3.7+), sets in a fixed order.
export PYTHONHASHSEED=0
bash "$installer" -b -p "${CONDA_PREFIX}" || {
    status=$?
    echo "conda-install: ${installer} failed (exit ${status})" >&2
    exit "$status"
}
if [ -x "${CONDA_PREFIX}/bin/conda" ]; then "${CONDA_PREFIX}/bin/conda" clean --all --force-pkgs-dirs --yes; fi
# conda's history dates each transaction by the clock; the image's says SOURCE_DATE_EPOCH instead.
history="${CONDA_PREFIX}/conda-meta/history"
if [ -f "$history" ]; then
    when=$(date -u -d "@${SOURCE_DATE_EPOCH}" '+%Y-%m-%d %H:%M:%S')
    sed -i -E "s/^==> [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} <==/==> ${when} <==/" "$history"
fi
replaced=$(layers replaced "${CONDA_PREFIX}" "${context}/packages.txt")
if [ -n "$replaced" ]; then
    # shellcheck disable=SC2086 # a list of distribution names
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1 \
        "$python" -m pip uninstall --yes --quiet $replaced
fi
rm -rf /root/.cache /root/.conda
if [ -n "$out" ]; then
    rm -f "$mark"
    layers tree "${CONDA_PREFIX}" "$out"
    layers placeholders "$3" "$out" hosts resolv.conf
    exit 0
fi
layers settle "$mark" "${CONDA_PREFIX}"
rm -f "$mark"
touch -d "@${SOURCE_DATE_EPOCH}" /tmp
