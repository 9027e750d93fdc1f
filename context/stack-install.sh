#!/bin/sh
# stack-install.sh: install the stack's files from /tmp/stack into the prefix /opt/stack (context/Dockerfile's
# stack stages; it never reaches the image).
#
# Every file is pinned in versions.lock and fetched already: --no-index, --no-deps (the resolution is done).
# With FROM_SOURCE=1 the sdists of build_from_source projects are built first, with build-essential from
# APT_MIRROR and the build requirements in /tmp/build-deps; the compilers stay in this builder stage.
set -eu
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
pip="${CONDA_PREFIX}/bin/pip"
if [ "${FROM_SOURCE:-0}" = 1 ]; then
    sh /tmp/apt-install.sh build-essential
    set -- /tmp/build-deps/*.whl
    if [ -f "$1" ]; then "$pip" install --no-index --no-deps "$@"; fi
    for sdist in /tmp/stack/*.tar.gz /tmp/stack/*.zip; do
        [ -f "$sdist" ] || continue
        "$pip" wheel --no-index --no-deps --no-build-isolation -w /tmp/stack "$sdist"
        rm -f "$sdist"
    done
fi
mkdir -p /opt/stack
set -- /tmp/stack/*.whl
if [ -f "$1" ]; then
    # --ignore-installed: the build requirements installed above must not keep a stack file out of the prefix
    "$pip" install --prefix /opt/stack --ignore-installed --no-index --no-deps --no-warn-script-location "$@"
fi
rm -rf /tmp/stack /tmp/build-deps /tmp/apt-install.sh /tmp/stack-install.sh /root/.cache/pip
