#!/bin/sh
# packages-install.sh CONTEXT: installs one layer's packages into the image's conda, in the image itself, and
# dates what the step wrote (layers.py settle). CONTEXT is the step's directory of the build context, read only:
#   torch/  wheels/ (torch, torchvision, torchaudio) with their dependencies: --no-index from deps/ when
#           HERMETIC=1, otherwise from the index in pip.conf (on BuildKit, the secret mounted over it when the index
#           has credentials); the CUDA libraries are installed already
#   cuda/   no wheels/: deps/ (the nvidia-* wheels), installed without dependencies
#   tools/  uv's wheel, where fetch found one for the image's Python: uv then installs what has no index to read
#           (it unpacks a wheel on every CPU, pip on one); otherwise, and from an index, pip does
# Bytecode is compiled afterwards on every CPU (layers.py compile).
set -eu
context=$1
# Bytecode pip's own imports would write is timestamp-based: layers.py compiles instead (below).
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONHASHSEED=0 \
    PYTHONDONTWRITEBYTECODE=1 PIP_CONFIG_FILE="${context}/pip.conf"
python="${CONDA_PREFIX}/bin/python"
layers() { "$python" -S -s "${context}/layers.py" "$@"; }
mark=$(mktemp)
before=$(mktemp)
layers snapshot "${CONDA_PREFIX}" "$before"
uv=""
set -- "${context}"/tools/uv-*.whl
if [ -f "$1" ] && { [ ! -d "${context}/wheels" ] || [ "${HERMETIC:-0}" = 1 ]; }; then
    tools=$(mktemp -d)
    uv=$(layers tool "$1" "$tools")
fi
had_lock=0
if [ -e "${CONDA_PREFIX}/.lock" ]; then had_lock=1; fi
install() {
    if [ -n "$uv" ]; then
        # No installer metadata: uv's cache notes hold the wheel files' times, and RECORD their hashes.
        UV_NO_INSTALLER_METADATA=1 "$uv" pip install --python "$python" --no-cache --no-config --offline "$@"
    else
        "$python" -m pip install --no-compile --no-warn-script-location "$@"
    fi
}
if [ ! -d "${context}/wheels" ]; then
    set -- "${context}"/deps/*.whl
    if [ -f "$1" ]; then install --no-index --no-deps "$@"; fi
else
    if [ "${HERMETIC:-0}" = 1 ]; then set -- --no-index --find-links "${context}/deps"; else set --; fi
    install "$@" "${context}"/wheels/*.whl
fi
if [ -n "$uv" ]; then
    rm -rf "$tools"
    # uv's lock of the environment it installed into, not part of it.
    if [ "$had_lock" = 0 ]; then rm -f "${CONDA_PREFIX}/.lock"; fi
fi
# -S -s: no site-packages, no .pth file run: a module the compiler process has imported would get other bytecode
# (marshal marks objects by their reference count), so nothing installed is imported while compiling; and a
# stale .pyc of a file the install replaced is not rewritten by an import, with a file time in it.
layers compile "${CONDA_PREFIX}" "$before"
rm -rf /root/.cache
layers settle "$mark" "${CONDA_PREFIX}"
rm -f "$before" "$mark"
touch -d "@${SOURCE_DATE_EPOCH}" /tmp
