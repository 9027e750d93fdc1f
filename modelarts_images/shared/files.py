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
