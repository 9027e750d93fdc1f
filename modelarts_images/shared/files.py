"""Files replaced whole (a reader, or another process writing the same file, sees the old one or the new one),
and files linked rather than copied."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from modelarts_images.errors import ConfigError, WriteError

log = logging.getLogger(__name__)

# Failures of os.link that a copy can get past: another filesystem, or one without hardlinks.
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP}


def write_atomic(path: Path, text: str, *, what: str) -> Path:
    """Write `text` to `path` through a temporary file beside it and a rename; WriteError naming it on failure.

    The temporary name is unique per writer (O_EXCL), so concurrent writers never share one; the new file keeps
    the old one's mode, and a first one gets 0o666 less the umask like any file an editor writes (mkstemp's
    0600 would hide a committed versions.lock or a report from the rest of a shared checkout). Nothing is left
    beside the file when writing fails or is interrupted.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as problem:
        raise WriteError(f"cannot write the {what} {path}: {problem.strerror or problem}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(stream.fileno(), stat.S_IMODE(path.stat().st_mode))
            stream.write(text)
        temporary.replace(path)
    except OSError as problem:  # disk full, the path taken by a directory
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write the {what} {path}: {problem.strerror or problem}") from None
    except BaseException:  # Ctrl-C included
        temporary.unlink(missing_ok=True)
        raise
    return path


def check_writable(reports_dir: Path, *, set_by: str = "modelarts.reports_dir in invoke.yaml") -> None:
    """ConfigError now, rather than after hours of builds, when the reports directory cannot take a file.

    A configuration problem, unlike a write that fails later (WriteError): the directory is a setting."""
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=reports_dir):  # nameless where the OS allows: nothing to clean up
            pass
    except OSError as problem:
        raise ConfigError(f"cannot write to the reports directory {reports_dir}: {problem.strerror or problem} "
                          f"({set_by})") from problem


def link_or_copy(source: Path, destination: Path) -> None:
    """Hardlink `source` at `destination`; copy only where the filesystem cannot link it (with a warning)."""
    try:
        os.link(source, destination)
    except OSError as error:
        if error.errno not in _LINK_FALLBACK:
            raise
        log.warning("cannot hardlink %s at %s (%s); copying it instead. Keep the cache and the build directory "
                    "on one filesystem to avoid the copy", source, destination, error.strerror)
        shutil.copy2(source, destination)


# The kernel makes these files up as they are read: /proc/self/environ calls itself a regular file of size 0 and
# holds the environment (secrets included); /dev/zero never ends.
_KERNEL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def _irregular_kind(mode: int) -> str | None:
    """What a file other than a regular one is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_bounded(path: Path, *, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path` names (links resolved), at most `limit` of them; ConfigError naming
    `what` and the path (and what a link resolved to) otherwise.

    A directory, FIFO, device or socket, a link loop or a missing target, and a file under /proc, /sys or /dev is
    refused from os.stat alone, never opened: opening a FIFO waits for a writer forever, /dev/zero never ends.
    A file over `limit` bytes is refused from its size, unread. The resolved path is then opened with O_NONBLOCK
    and O_NOFOLLOW (something swapped in since the check cannot block the open, nor be a link) and checked
    again on the open descriptor; at most limit + 1 bytes are read, so a file that grows is refused too.
    """
    resolved = Path(os.path.realpath(path))  # not Path.resolve(): RuntimeError on a link loop in Python 3.11
    link = False
    with contextlib.suppress(OSError):  # a directory on the way that cannot be searched: said below
        link = path.is_symlink()
    shown = (f"{path} (a link to {resolved})" if link else
             str(path) if resolved == path.absolute() else f"{path} (resolved to {resolved})")
    try:
        info = resolved.stat()
    except FileNotFoundError:
        raise ConfigError(f"the {what} {shown} does not exist") from None
    except OSError as problem:  # a link loop (ELOOP), a directory on the way that cannot be searched
        raise ConfigError(f"cannot read the {what} {shown}: {problem.strerror or problem}") from None
    kind = _irregular_kind(info.st_mode)
    if kind is not None:
        raise ConfigError(f"the {what} {shown} is {kind}, not a regular file; give a file's path")
    tree = next((root for root in _KERNEL_TREES if root == resolved or root in resolved.parents), None)
    if tree is not None:
        raise ConfigError(f"the {what} {shown} is under {tree}, whose files the kernel makes up as they are read; "
                          "give a file on disk")
    if info.st_size > limit:
        raise ConfigError(f"the {what} {shown} has {info.st_size} bytes, more than the {limit} a {what} may have")
    try:
        descriptor = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as problem:  # ELOOP: a link put in its place since the check
        raise ConfigError(f"cannot read the {what} {shown}: {problem.strerror or problem}") from None
    with os.fdopen(descriptor, "rb") as stream:
        opened = os.fstat(descriptor)  # what was opened, not what the path named a moment ago
        kind = _irregular_kind(opened.st_mode)
        if kind is not None or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise ConfigError(f"the {what} {shown} was replaced while it was read; read it again when nothing "
                              "writes it")
        try:
            data = stream.read(limit + 1)
        except OSError as problem:
            raise ConfigError(f"cannot read the {what} {shown}: {problem.strerror or problem}") from None
    if len(data) > limit:
        raise ConfigError(f"the {what} {shown} grew past the {limit} bytes a {what} may have while it was read")
    return data
