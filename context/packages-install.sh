#!/bin/sh
# packages-install.sh CONTEXT [cuda|torch]: installs torch, torchvision and torchaudio (CONTEXT/wheels) with the
# image's conda pip, --no-index from CONTEXT/deps when HERMETIC=1, otherwise from the index in pip.conf (the
# BuildKit secret when there is one), and compiles the bytecode on every CPU (layers.py compile).
#
# Without a part (BuildKit's packages stage): one install, split into /out/cuda (the nvidia-* wheels) and
# /out/torch (the rest), with /out/removed.txt listing what it took out of the conda installation (layers.py).
# With a part (the classic builder, in the image itself, CONTEXT fetched for this step and deleted after it):
#   cuda    the CUDA libraries: CONTEXT/deps holds only the nvidia-* wheels, installed without dependencies
#   torch   the rest, with the CUDA libraries installed already
# and what the step wrote dated in place (layers.py settle).
set -eu
context=$1
part=${2:-}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONHASHSEED=0
python="${CONDA_PREFIX}/bin/python"
layers() { "$python" -S -s "${context}/layers.py" "$@"; }
config="${context}/pip.conf"
if [ -f /run/secrets/pip.conf ]; then config=/run/secrets/pip.conf; fi
mark=$(mktemp)
before=$(mktemp)
layers snapshot "${CONDA_PREFIX}" "$before"
# Bytecode pip's own imports would write is timestamp-based: layers.py compiles instead (below).
if [ "$part" = cuda ]; then
    set -- "${context}"/deps/*.whl
    if [ -f "$1" ]; then
        PYTHONDONTWRITEBYTECODE=1 "$python" -m pip install --no-index --no-deps --no-compile \
            --no-warn-script-location "$@"
    fi
else
    if [ "${HERMETIC:-0}" = 1 ]; then set -- --no-index --find-links "${context}/deps"; else set --; fi
    PYTHONDONTWRITEBYTECODE=1 PIP_CONFIG_FILE="$config" "$python" -m pip install --no-compile \
        --no-warn-script-location "$@" "${context}"/wheels/*.whl
fi
# -S -s: no site-packages, no .pth file run: a module the compiler process has imported would get other bytecode
# (marshal marks objects by their reference count), so nothing installed is imported while compiling; and a
# stale .pyc of a file the install replaced is not rewritten by an import, with a file time in it.
layers compile "${CONDA_PREFIX}" "$before"
if [ -z "$part" ]; then
    layers split "${CONDA_PREFIX}" "$before" /out
    rm -rf "$before" "$mark" /root/.cache
    exit 0
fi
layers settle "$mark" "${CONDA_PREFIX}"
rm -rf "$context" "$before" "$mark" /root/.cache
touch -d "@${SOURCE_DATE_EPOCH}" /tmp
