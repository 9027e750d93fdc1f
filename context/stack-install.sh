#!/bin/sh
# stack-install.sh CONTEXT: context/Dockerfile's stack stages. Installs the stack's files (CONTEXT/stack) into a
# prefix of their own, then moves it into the stack layer, /out/stack (layers.py); it never reaches the image.
#
# Every file is pinned in versions.lock and fetched already: --no-index, --no-deps (the resolution is done).
# With FROM_SOURCE=1 the sdists of build_from_source projects are built first, with build-essential from
# APT_MIRROR and the build requirements in CONTEXT/build-deps; the compilers stay in this builder stage.
set -eu
context=$1
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONHASHSEED=0
python="${CONDA_PREFIX}/bin/python"
built=/tmp/stack-built
mkdir -p "$built" /opt/stack
if [ "${FROM_SOURCE:-0}" = 1 ]; then
    sh "${context}/apt-install.sh" build-essential
    set -- "${context}"/build-deps/*.whl
    if [ -f "$1" ]; then "$python" -m pip install --no-index --no-deps "$@"; fi
    for sdist in "${context}"/stack/*.tar.gz "${context}"/stack/*.zip; do
        [ -f "$sdist" ] || continue
        "$python" -m pip wheel --no-index --no-deps --no-build-isolation -w "$built" "$sdist"
    done
fi
set --
for wheel in "${context}"/stack/*.whl "$built"/*.whl; do
    if [ -f "$wheel" ]; then set -- "$@" "$wheel"; fi
done
if [ "$#" -gt 0 ]; then
    # --ignore-installed: the build requirements installed above must not keep a stack file out of the prefix
    "$python" -m pip install --prefix /opt/stack --ignore-installed --no-index --no-deps --no-warn-script-location \
        "$@"
fi
"$python" -S -s "${context}/layers.py" place /opt/stack "${CONDA_PREFIX}" /out/stack
rm -rf /opt/stack "$built" /root/.cache
