#!/bin/sh
# packages-install.sh CONTEXT: installs one layer's packages with the image's conda pip, in the image itself, and
# dates what the step wrote (layers.py settle). CONTEXT is the step's directory of the build context, read only:
#   torch/  wheels/ (torch, torchvision, torchaudio) with their dependencies: --no-index from deps/ when
#           HERMETIC=1, otherwise from the index in pip.conf (on BuildKit, the secret mounted over it when the index
#           has credentials); the CUDA libraries are installed already
#   cuda/   no wheels/: deps/ (the nvidia-* wheels), installed without dependencies
# Bytecode is compiled afterwards on every CPU (layers.py compile).
set -eu
context=$1
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONHASHSEED=0
python="${CONDA_PREFIX}/bin/python"
layers() { "$python" -S -s "${context}/layers.py" "$@"; }
mark=$(mktemp)
before=$(mktemp)
layers snapshot "${CONDA_PREFIX}" "$before"
# Bytecode pip's own imports would write is timestamp-based: layers.py compiles instead (below).
if [ ! -d "${context}/wheels" ]; then
    set -- "${context}"/deps/*.whl
    if [ -f "$1" ]; then
        PYTHONDONTWRITEBYTECODE=1 "$python" -m pip install --no-index --no-deps --no-compile \
            --no-warn-script-location "$@"
    fi
else
    if [ "${HERMETIC:-0}" = 1 ]; then set -- --no-index --find-links "${context}/deps"; else set --; fi
    PYTHONDONTWRITEBYTECODE=1 PIP_CONFIG_FILE="${context}/pip.conf" "$python" -m pip install --no-compile \
        --no-warn-script-location "$@" "${context}"/wheels/*.whl
fi
# -S -s: no site-packages, no .pth file run: a module the compiler process has imported would get other bytecode
# (marshal marks objects by their reference count), so nothing installed is imported while compiling; and a
# stale .pyc of a file the install replaced is not rewritten by an import, with a file time in it.
layers compile "${CONDA_PREFIX}" "$before"
rm -rf /root/.cache
layers settle "$mark" "${CONDA_PREFIX}"
rm -f "$before" "$mark"
touch -d "@${SOURCE_DATE_EPOCH}" /tmp
