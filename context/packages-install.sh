#!/bin/sh
# packages-install.sh CONTEXT: context/Dockerfile's packages stages. Installs torch, torchvision and torchaudio
# (CONTEXT/wheels) with the image's conda pip, --no-index from CONTEXT/deps when HERMETIC=1, otherwise from the
# index in pip.conf (the BuildKit secret when there is one); compiles the bytecode on every CPU; and splits what
# the install added into /out/cuda (the nvidia-* wheels) and /out/torch (the rest), listing in /out/removed.txt
# what it took out of the conda installation (layers.py).
set -eu
context=$1
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONHASHSEED=0
python="${CONDA_PREFIX}/bin/python"
config="${context}/pip.conf"
if [ -f /run/secrets/pip.conf ]; then config=/run/secrets/pip.conf; fi
if [ "${HERMETIC:-0}" = 1 ]; then set -- --no-index --find-links "${context}/deps"; else set --; fi
"$python" -S -s "${context}/layers.py" snapshot "${CONDA_PREFIX}" /tmp/before.txt
PIP_CONFIG_FILE="$config" "$python" -m pip install --no-compile --no-warn-script-location "$@" \
    "${context}"/wheels/*.whl
# -S -s: no site-packages, no .pth file run: a module the compiler process has imported would get other bytecode
# (marshal marks objects by their reference count), so nothing installed is imported while compiling; and a
# stale .pyc of a file the install replaced is not rewritten by an import, with a file time in it.
"$python" -S -s "${context}/layers.py" compile "${CONDA_PREFIX}" /tmp/before.txt
"$python" -S -s "${context}/layers.py" split "${CONDA_PREFIX}" /tmp/before.txt /out
rm -rf /tmp/before.txt /root/.cache
