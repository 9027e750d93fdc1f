"""layers.py: turn what an install wrote into the conda prefix into image layers, with fixed owners and times.

context/Dockerfile's builder stages run it with the image's own Python (3.6 or later, stdlib only); it never
reaches the image. Each layer is a tree OUT/<name>/ that the final stage copies to / as one layer:
OUT/<name>/home (root, 0755), OUT/<name>/home/<user> (the user, 0755), then the prefix's paths. Every entry of a
tree belongs to the user (but home/) and has its times set to SOURCE_DATE_EPOCH, so the same files give the same
layer in every build.

    layers.py snapshot PREFIX LIST           write every path under PREFIX to LIST
    layers.py compile PREFIX LIST            byte-compile the .py files added since LIST, on every CPU
    layers.py tree PREFIX OUT/NAME           hard-link the whole prefix into the layer NAME
    layers.py placeholders BASE OUT/NAME FILE...
                                             an empty OUT/NAME/etc/FILE, root's, for each FILE the directory
                                             BASE (what the base has of /etc) lacks
    layers.py place TREE PREFIX OUT/NAME     move TREE, a `pip install --prefix TREE`, into the layer NAME
    layers.py settle MARK PREFIX             in place (the classic builder's steps): every entry of the image's
                                             filesystem changed since MARK was made gets SOURCE_DATE_EPOCH as its
                                             time, and the user as its owner under PREFIX (PREFIX itself always)
    layers.py replaced PREFIX WHEELS         print the distributions installed in PREFIX that WHEELS (a list of
                                             wheel file names) has at another version
    layers.py tool WHEEL DIR                 unpack the program a tool's wheel ships (uv's wheel: its
                                             uv-X.data/scripts/uv) into DIR and print its path

Environment: MA_USER, MA_UID, MA_GID, SOURCE_DATE_EPOCH.
"""

# ruff: noqa: PTH101, PTH102, PTH103, PTH104, PTH112, PTH113, PTH114, PTH116, PTH118, PTH119, PTH120, PTH123, PTH207, PTH208
# os and os.path, not pathlib: os.link(follow_symlinks=False), os.lchown and os.utime(follow_symlinks=False) have
# no pathlib form on Python 3.6, and one set of calls reads better than a mix.

import compileall
import concurrent.futures
import glob
import os
import py_compile
import re
import shutil
import stat
import sys
import zipfile

USER = os.environ["MA_USER"]
UID, GID = int(os.environ["MA_UID"]), int(os.environ["MA_GID"])
EPOCH = int(os.environ["SOURCE_DATE_EPOCH"])
HOME = "/home/" + USER


def walk(prefix):
    """Every path under prefix (itself excluded), parents before children, symbolic links not followed."""
    for directory, dirs, files in os.walk(prefix):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            yield os.path.join(directory, name)


def snapshot(prefix, listing):
    with open(listing, "w") as stream:
        for path in walk(prefix):
            stream.write(path + "\n")


def read_listing(listing):
    with open(listing) as stream:
        return set(line.rstrip("\n") for line in stream)


def written(prefix, listing):
    """The files under prefix that are new since LIST was written, or were written again (an upgrade)."""
    before, stamp = read_listing(listing), os.stat(listing).st_mtime
    return [path for path in walk(prefix) if not os.path.isdir(path)
            and (path not in before or os.lstat(path).st_ctime > stamp)]


def _compile(path):
    if hasattr(py_compile, "PycInvalidationMode"):  # 3.7+: hash-based, so the .pyc does not hold a file time
        return compileall.compile_file(path, quiet=2,
                                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    return compileall.compile_file(path, quiet=2)


def compile_added(prefix, listing):
    """Bytecode for what the install wrote (pip ran with --no-compile): the same files pip compiles, on every
    CPU at once. Hash-based .pyc files (Python 3.7 and later) hold no file time: the same in every build."""
    sources = [path for path in written(prefix, listing) if path.endswith(".py") and not os.path.islink(path)]
    workers = max(os.cpu_count() or 1, 1)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_compile, sources, chunksize=64))


def layer_root(out):
    """OUT/<name>/home and its user's home, owned and dated as in the image."""
    home = os.path.join(out, "home")
    user_home = os.path.join(out, HOME.lstrip("/"))
    for path, owner in ((out, (0, 0)), (home, (0, 0)), (user_home, (UID, GID))):
        if not os.path.isdir(path):
            os.makedirs(path)
        os.chmod(path, 0o755)
        os.chown(path, *owner)
    return out


def in_layer(out, path):
    return os.path.join(out, path.lstrip("/"))


def make_parents(out, path):
    """The directories above `path` in the layer, each with the mode of the prefix's own directory."""
    parent = os.path.dirname(path)
    missing = []
    while not os.path.isdir(in_layer(out, parent)):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(in_layer(out, directory))
        os.chmod(in_layer(out, directory), stat.S_IMODE(os.lstat(directory).st_mode))


def link_into(out, path):
    """`path` into the layer by a hard link (the same file, no copy); a directory is made, not linked."""
    make_parents(out, path)
    target = in_layer(out, path)
    if os.path.isdir(path) and not os.path.islink(path):
        if not os.path.isdir(target):
            os.mkdir(target)
            os.chmod(target, stat.S_IMODE(os.lstat(path).st_mode))
    else:
        os.link(path, target, follow_symlinks=False)


def finish(out):
    """Owners and times of every entry of the layer: the user's (home/ stays root's), SOURCE_DATE_EPOCH."""
    home = os.path.join(out, "home")
    for path in [out, *walk(out)]:
        if path not in (out, home):
            os.lchown(path, UID, GID)
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def tree(prefix, out):
    layer_root(out)
    link_into(out, prefix)
    for path in walk(prefix):
        link_into(out, path)
    finish(out)


def place(tree_dir, prefix, out):
    """Move a `pip install --prefix` tree into the layer at the prefix's place (renames: it was just written)."""
    layer_root(out)
    for path in walk(tree_dir):
        final = prefix + path[len(tree_dir):]
        target = in_layer(out, final)
        if os.path.isdir(path) and not os.path.islink(path):
            make_parents(out, final)
            if not os.path.isdir(target):
                os.mkdir(target)
                os.chmod(target, stat.S_IMODE(os.lstat(path).st_mode))
        else:
            make_parents(out, final)
            os.rename(path, target)
    finish(out)


def placeholders(base, out, *names):
    """Empty /etc files for the mount points the base lacks, owned by root and dated like the rest of the layer:
    BuildKit then mounts over them instead of creating them for a step and deleting them after it, which would
    leave /etc in that step's layer with the clock's time."""
    missing = [name for name in names if not os.path.lexists(os.path.join(base, name))]
    if not missing:
        return
    etc = os.path.join(out, "etc")
    os.mkdir(etc)
    for name in missing:
        with open(os.path.join(etc, name), "w"):
            pass
    for path, mode in [(etc, 0o755), *((os.path.join(etc, name), 0o644) for name in missing)]:
        os.chmod(path, mode)  # not the umask's
        os.lchown(path, 0, 0)
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def changed_since(mark):
    """Every path of this filesystem (not /, nor what is mounted on it: /proc, /etc/hosts...) whose inode changed
    since `mark` was made, parents before children."""
    since, device = os.lstat(mark).st_ctime_ns, os.lstat("/").st_dev
    for directory, dirs, files in os.walk("/"):
        dirs[:] = sorted(name for name in dirs if os.lstat(os.path.join(directory, name)).st_dev == device)
        for name in dirs + sorted(files):
            path = os.path.join(directory, name)
            status = os.lstat(path)
            if status.st_dev == device and status.st_ctime_ns >= since:
                yield path


def settle(mark, prefix):
    """What a step wrote in place, owned and dated as a layer tree's entries are (finish): the engine commits the
    step's layer with these times. PREFIX itself is always settled, so a step that installed nothing (the CUDA
    libraries of a CPU image) still makes the same small layer in every build."""
    inside = prefix.rstrip("/") + "/"
    for path in [prefix, *changed_since(mark)]:
        if path == mark:
            continue
        if path == prefix or path.startswith(inside):
            os.lchown(path, UID, GID)
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def metadata(path):
    """Name and Version of an installed distribution's METADATA or PKG-INFO."""
    fields = {}
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    return fields.get("name", ""), fields.get("version", "")


def installed(prefix):
    for site in sorted(glob.glob(os.path.join(prefix, "lib", "python*", "site-packages"))):
        for entry in sorted(os.listdir(site)):
            path = os.path.join(site, entry)
            if entry.endswith(".dist-info"):
                path = os.path.join(path, "METADATA")
            elif entry.endswith(".egg-info") and os.path.isdir(path):
                path = os.path.join(path, "PKG-INFO")
            elif not entry.endswith(".egg-info"):
                continue
            if os.path.isfile(path):
                yield metadata(path)


def replaced(prefix, wheels):
    with open(wheels) as stream:
        locked = dict(line.strip().split("-")[:2] for line in stream if line.strip().endswith(".whl"))
    locked = {canonical(name): version for name, version in locked.items()}
    for name, version in installed(prefix):
        if canonical(name) in locked and locked[canonical(name)] != version:
            print(name)


def tool(wheel, directory):
    project = os.path.basename(wheel).split("-")[0]
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist()
                 if re.match(r"^[^/]+\.data/scripts/" + re.escape(project) + "$", name)]
        if len(names) != 1:
            sys.exit("layers.py tool: " + os.path.basename(wheel) + " has no program " + project)
        program = os.path.join(directory, project)
        with archive.open(names[0]) as source, open(program, "wb") as target:
            shutil.copyfileobj(source, target)
    os.chmod(program, 0o755)
    print(program)


COMMANDS = {"snapshot": snapshot, "compile": compile_added, "tree": tree, "placeholders": placeholders,
            "place": place, "settle": settle, "replaced": replaced, "tool": tool}

if __name__ == "__main__":
    command = COMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if command is None:
        sys.exit("usage: layers.py " + "|".join(COMMANDS) + " ARGUMENTS (see its docstring)")
    command(*sys.argv[2:])
