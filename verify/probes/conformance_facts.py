"""Conformance probe: what ModelArts' image rules are judged on, seen from inside the image.

Run by modelarts_images.verify.conformance (`probe_run`) as root (user 0:0), in a container without a network, with the
image's conda python in isolated mode; the source travels on the command line, so nothing is mounted:

    /home/ma-user/miniconda3/bin/python -I -c SOURCE /home/ma-user/miniconda3 ma-user 1000 100

argv[1] is the conda prefix, argv[2] the name of the training user, argv[3] and argv[4] the uid and gid ModelArts
runs the job as. It prints one line, `MODELARTS_CONFORMANCE_FACTS {json}`, holding: the python version; the user
(uid, gid, home, shell, whether the home exists and who owns it); the names that uid and gid resolve to; from one
walk of the root filesystem, every setuid or setgid regular file (what `find / -xdev -type f -perm /6000` lists)
and every credential-looking file (.netrc, _netrc, .git-credentials, pip.conf, pip.ini, .pypirc,
.docker/config.json) with whether it holds a password or a URL with user:password@ (never the secret itself); the
conda packages of <prefix>/conda-meta with their channels (null when there is no conda-meta); the names of the
groups the user belongs to; which of the host NPU driver's paths (ModelArts mounts them into an Ascend job's
container) the image holds itself; and the errors met reading files.

Python 3.7 and up, stdlib only: it runs with whatever python the image ships.
"""

# ruff: noqa: PTH112, PTH113, PTH114, PTH116, PTH118, PTH119, PTH123, PTH207, PTH208
# os.path and not pathlib, on purpose: on Python 3.7 Path.is_file() raises PermissionError where os.path.isfile()
# answers False, and one unreadable corner of an image must not stop the walk.

import contextlib
import glob
import grp
import json
import os
import platform
import pwd
import re
import stat
import sys

PREFIX = "MODELARTS_CONFORMANCE_FACTS "
READ_LIMIT = 1 << 16  # a credential is near the top of its file; a huge file is not read whole
PASSWORD = re.compile(r"^\s*password\s*[=:]\s*\S", re.I | re.M)
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+(:[^/\s@]*)?@", re.I)
DOCKER_AUTH = re.compile(r'"(auth|identitytoken|password|registrytoken)"\s*:\s*"[^"]')
KINDS = {".netrc": "netrc", "_netrc": "netrc", ".git-credentials": "git-credentials", "pip.conf": "pip-config",
         "pip.ini": "pip-config", ".pypirc": "pypirc", "config.json": "docker-config"}
# Where an Ascend host's driver is mounted into a container: an image that holds files there hides the host's.
NPU_DRIVER_PATHS = ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi")
# Kernel filesystems: nothing of the image's own is there, and walking them is slow or endless.
PSEUDO_TOPS = ("proc", "sys", "dev")


def read(path, errors):
    """The start of a file as text; an unreadable file is noted in `errors` and reads as ""."""
    try:
        with open(path, "rb") as stream:
            return stream.read(READ_LIMIT).decode("utf-8", "replace")
    except OSError as error:
        errors.append(f"{path}: {error}")
        return ""


def user_facts(user):
    """The user's passwd entry and its home, or None when there is no such user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    home_exists = os.path.isdir(entry.pw_dir)
    home_owner = os.stat(entry.pw_dir).st_uid if home_exists else None
    return {"name": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir,
            "shell": entry.pw_shell, "home_exists": home_exists, "home_owner": home_owner}


def group_names(user, gid):
    """The names of the user's groups: its primary one and every group that lists it as a member."""
    names = set()
    with contextlib.suppress(KeyError):
        names.add(grp.getgrgid(gid).gr_name)
    names.update(group.gr_name for group in grp.getgrall() if user in group.gr_mem)
    return sorted(names)


def driver_paths():
    """The NPU driver paths the image itself holds (an empty directory, a mount point, does not count)."""
    held = []
    for path in NPU_DRIVER_PATHS:
        if os.path.isdir(path):
            try:
                if os.listdir(path):
                    held.append(path)
            except OSError:
                held.append(path)
        elif os.path.lexists(path):
            held.append(path)
    return held


def scan_files(errors, root="/"):
    """(credential-looking files, setuid/setgid files) of the root filesystem, in one walk: each credential file
    with what kind of secret it seems to hold."""
    found, setuid = [], []
    root_dev = os.lstat(root).st_dev
    for top, dirs, files in os.walk(root):
        if top == root:
            dirs[:] = [d for d in dirs if d not in PSEUDO_TOPS]
        # Only the root filesystem, like find -xdev: volumes the engine mounts are not part of the image.
        kept = []
        for d in dirs:
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(top, d)).st_dev == root_dev:
                    kept.append(d)
        dirs[:] = kept
        for name in files:
            with contextlib.suppress(OSError):
                mode = os.lstat(os.path.join(top, name)).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    setuid.append(os.path.join(top, name))
            kind = KINDS.get(name)
            # config.json is a common name: only Docker's own, under a .docker directory, counts
            if kind is None or (kind == "docker-config" and os.path.basename(top) != ".docker"):
                continue
            path = os.path.join(top, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            text = read(path, errors)
            found.append({
                "path": path, "kind": kind,
                "has_password": bool(PASSWORD.search(text) or (kind == "docker-config" and DOCKER_AUTH.search(text))),
                "has_url_credentials": bool(URL_CREDENTIALS.search(text))})
    return found, sorted(setuid)


def conda_packages(prefix, errors):
    """Name, version and channel of each package in <prefix>/conda-meta, or None when it is not a conda prefix."""
    meta = os.path.join(prefix, "conda-meta")
    if not os.path.isdir(meta):
        return None
    packages = []
    for path in sorted(glob.glob(os.path.join(meta, "*.json"))):
        try:
            with open(path) as stream:
                record = json.load(stream)
            packages.append({"name": str(record.get("name", "")), "version": str(record.get("version", "")),
                             "channel": str(record.get("channel", ""))})
        except (OSError, ValueError) as error:
            errors.append(f"{path}: {error}")
    return packages


def main():
    prefix, user, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    errors = []
    facts = {"python": platform.python_version(), "user": user_facts(user), "uid_owner": None, "group": None,
             "credential_files": [], "setuid_files": [], "conda_packages": None, "errors": errors,
             "groups": group_names(user, gid), "driver_paths": driver_paths()}
    with contextlib.suppress(KeyError):
        facts["uid_owner"] = pwd.getpwuid(uid).pw_name
    with contextlib.suppress(KeyError):
        facts["group"] = grp.getgrgid(gid).gr_name
    facts["credential_files"], facts["setuid_files"] = scan_files(errors)
    facts["conda_packages"] = conda_packages(prefix, errors)
    print(PREFIX + json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()
