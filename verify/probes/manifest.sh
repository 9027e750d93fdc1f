#!/bin/sh
# Package manifest probe: what conda (or pip) and dpkg installed in an image, for the matrix report.
#
# Run by modelarts_images.report (`manifest_spec`) as root (user 0:0), in a container without a network; the
# script travels on the command line, so nothing is mounted, and the conda prefix is its first argument:
#
#     /bin/sh -c SCRIPT sh /home/ma-user/miniconda3
#
# It prints sections, each after a marker line `### modelarts-images manifest: <section>`:
#   conda  `conda list --export`, when <prefix>/bin/conda exists; else
#   pip    `python -m pip freeze --all` with <prefix>/bin/python, when that exists;
#   dpkg   `dpkg-query -W` as name=version lines, when dpkg-query is on the PATH.
# A tool that fails leaves its section empty (its errors go to /dev/null): the manifest is information, and the
# cell does not fail over it. POSIX sh only: an image may have nothing but dash or busybox.

# No prefix is a caller's mistake, not an image without conda: stop instead of looking under /bin.
prefix=${1:?usage: manifest.sh CONDA_PREFIX}

if [ -x "$prefix/bin/conda" ]; then
  echo '### modelarts-images manifest: conda'; "$prefix/bin/conda" list --export 2>/dev/null || true
elif [ -x "$prefix/bin/python" ]; then
  echo '### modelarts-images manifest: pip'; "$prefix/bin/python" -m pip freeze --all 2>/dev/null || true
fi
if command -v dpkg-query >/dev/null 2>&1; then
  # single quotes: dpkg-query itself expands ${Package}, ${Version} and \n
  echo '### modelarts-images manifest: dpkg'; dpkg-query -W -f '${Package}=${Version}\n' 2>/dev/null || true
fi
