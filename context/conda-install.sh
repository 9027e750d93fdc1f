#!/bin/sh
# conda-install.sh: context/Dockerfile's conda stage. Runs the installer the way the recipe does (batch mode, fixed
# prefix), leaves no package cache, and makes the conda layer: /out/conda, the prefix hard-linked with fixed
# owners and times (layers.py). Needs INSTALLER, CONDA_PREFIX, MA_USER, MA_UID, MA_GID, SOURCE_DATE_EPOCH.
set -eu
# Bytecode the installer writes: hash-based with SOURCE_DATE_EPOCH set (Python 3.7+), sets in a fixed order.
export PYTHONHASHSEED=0
bash "/tmp/installer/${INSTALLER}" -b -p "${CONDA_PREFIX}" || {
    status=$?
    echo "conda-install: /tmp/installer/${INSTALLER} failed (exit ${status})" >&2
    exit "$status"
}
if [ -x "${CONDA_PREFIX}/bin/conda" ]; then "${CONDA_PREFIX}/bin/conda" clean --all --force-pkgs-dirs --yes; fi
# conda's history dates each transaction by the clock; the image's says SOURCE_DATE_EPOCH instead.
history="${CONDA_PREFIX}/conda-meta/history"
if [ -f "$history" ]; then
    when=$(date -u -d "@${SOURCE_DATE_EPOCH}" '+%Y-%m-%d %H:%M:%S')
    sed -i -E "s/^==> [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} <==/==> ${when} <==/" "$history"
fi
rm -rf /tmp/installer /root/.cache /root/.conda
"${CONDA_PREFIX}/bin/python" -S -s /tmp/layers.py tree "${CONDA_PREFIX}" /out/conda
