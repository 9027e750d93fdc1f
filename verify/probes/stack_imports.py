"""Stack probe: does each distribution of the image's stack import, the way a ModelArts job would import it.

Run by modelarts_images.verify.stack (`imports_run`) as uid 1000 gid 100 in /home/ma-user, without a network and
with ModelArts' job variables, by the boot command's python, with the distribution names as arguments:

    /home/ma-user/miniconda3/bin/python -c SOURCE NAME...

The modules to import are read from each installed distribution (its top_level.txt, else the top-level entries of
its RECORD), not guessed from its name: the distribution `pyyaml` installs the module `yaml`.

It prints one line, `MODELARTS_STACK_IMPORTS {json}`: for each distribution, its version (null when it is not
installed), the modules it provides, and for each module that did not import, why.

Python 3.7 and up, stdlib only (importlib.metadata arrived in 3.8: the dist-info directories are read directly).
"""

import importlib
import json
import re
import sys
from pathlib import Path

PREFIX = "MODELARTS_STACK_IMPORTS "


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_infos():
    """Every *.dist-info directory on sys.path, by canonical project name."""
    found = {}
    for entry in map(Path, sys.path):
        if not entry.is_dir():
            continue
        for path in sorted(entry.iterdir()):
            if path.name.endswith(".dist-info"):
                project, _, version = path.name[:-len(".dist-info")].partition("-")
                found.setdefault(canonical(project), (path, version))
    return found


def read(path):
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def modules_of(dist_info):
    """The importable top-level names a distribution installs."""
    top_level = [line.strip() for line in read(dist_info / "top_level.txt").splitlines()]
    if any(top_level):
        return sorted(name for name in top_level if name and not name.startswith("_"))
    names = set()
    for line in read(dist_info / "RECORD").splitlines():
        path = line.split(",", 1)[0]
        first = path.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")) or first.startswith(("..", "_")) or first == "__pycache__":
            continue
        if "/" in path and path.endswith(".py"):
            names.add(first)
        elif "/" not in path and path.endswith(".py"):
            names.add(first[:-3])
        elif "/" not in path and path.endswith(".so"):
            names.add(first.split(".", 1)[0])
    return sorted(name for name in names if name.isidentifier())


def main(names):
    infos = dist_infos()
    result = {}
    for name in names:
        found = infos.get(canonical(name))
        if found is None:
            result[name] = {"version": None, "modules": [], "errors": {}}
            continue
        dist_info, version = found
        modules = modules_of(dist_info)
        errors = {}
        for module in modules:
            try:
                importlib.import_module(module)
            except BaseException as error:  # a module that exits or raises anything is the fact to report
                errors[module] = f"{type(error).__name__}: {error}"
        result[name] = {"version": version, "modules": modules, "errors": errors}
    print(PREFIX + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
