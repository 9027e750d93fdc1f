"""Boot probe: how the image's python starts the way a ModelArts boot command starts it.

Run by modelarts_images.verify.conformance (`boot_run`) as uid 1000 gid 100 in /home/ma-user, in a container without a
network and with ModelArts' job variables, with the python by its absolute path: no shell, no profile, no
`conda activate`. The source travels on the command line, so nothing is mounted:

    /home/ma-user/miniconda3/bin/python -c SOURCE

It prints one line, `MODELARTS_BOOT_FACTS {json}`, holding: sys.executable and sys.prefix, the python version,
the uid, gid and working directory it ran with, for each of ssl, ctypes, zlib, sqlite3, bz2 and lzma "ok" or why
it did not import (a library the interpreter cannot find without activation), and which activation variables
(CONDA_PREFIX, CONDA_DEFAULT_ENV, VIRTUAL_ENV) were set.

Python 3.7 and up, stdlib only: it runs with whatever python the image ships.
"""

import json
import os
import platform
import sys

PREFIX = "MODELARTS_BOOT_FACTS "
# Standard modules backed by shared libraries: they fail to import when the interpreter's libraries do not load.
MODULES = ("ssl", "ctypes", "zlib", "sqlite3", "bz2", "lzma")
ACTIVATION_VARIABLES = ("CONDA_PREFIX", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV")


def main():
    modules = {}
    for name in MODULES:
        try:
            __import__(name)
            modules[name] = "ok"
        except Exception as error:  # any failure to import is the fact to report, not a reason to stop
            modules[name] = f"{type(error).__name__}: {error}"
    print(PREFIX + json.dumps({
        "executable": sys.executable, "prefix": sys.prefix, "python": platform.python_version(),
        # the working directory as the OS gives it (os.getcwd), not as pathlib would rebuild it
        "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "modules": modules,  # noqa: PTH109
        "activated": sorted(name for name in ACTIVATION_VARIABLES if name in os.environ),
    }, sort_keys=True))


if __name__ == "__main__":
    main()
