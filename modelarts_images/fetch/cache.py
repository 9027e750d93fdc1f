"""The artifact cache: files stored by sha256, with a record that proves them unchanged without re-hashing.

Everything the cache opens or writes is inside its root and is not followed through a symbolic link: a link
planted in the cache (at a blob, a lock or a record, or at one of its directories) must never make a fetch write,
or delete, a file elsewhere. The root itself may be a link (cache_dir is the user's choice); every directory
below it must be a real one. A cache that cannot be written (a read-only mount) still serves what it holds, for
`--offline`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from modelarts_images.errors import FetchError
from modelarts_images.model import filename_problem, sha256_problem
from modelarts_images.shared.files import write_atomic

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[bool]:
    """An flock on `path` (created, never through a link); yields False, unlocked, where the file cannot be
    created (a read-only cache): readers then go on without the lock, and nothing is written.

    FetchError naming the file when something else is there (a link, a directory, a pipe): a lock that is not the
    cache's own file locks nothing, so the work it guards must not go on."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield False
            return
        if error.errno == errno.ELOOP:  # O_NOFOLLOW refused the last part of the path: a link
            raise FetchError(f"cache: {path} is a symbolic link where the cache keeps a lock file: a link planted "
                             "in the cache is never followed; remove it") from None
        if error.errno == errno.EISDIR:
            raise _not_a_lock(path) from None
        raise FetchError(f"cache: cannot open the lock file {path}: {error.strerror or error}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a named pipe opens (O_RDWR never waits) and flocks
            raise _not_a_lock(path)
        fcntl.flock(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # closing releases the lock


def _not_a_lock(path: Path) -> FetchError:
    return FetchError(f"cache: {path} is not a regular file, where the cache keeps a lock file: it was put there "
                      "by something else; remove it")


class Cache:
    """blobs/sha256/<hex> files; verified.json maps hex -> [size, mtime_ns, inode] seen right after hashing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.incoming = root / "incoming"
        self._records_path = root / "verified.json"

    def blob(self, sha256: str) -> Path:
        """Where the blob of `sha256` lives; FetchError for anything that is not a sha256 (it would be a path),
        or when blobs/sha256 is not a directory of the cache's own (see prepare)."""
        problem = sha256_problem(sha256)
        if problem:
            raise FetchError(f"cache: {problem}")
        self.prepare()
        return self.blobs / sha256

    def entry(self, name: str) -> Path:
        """incoming/<name>: a download in progress, its lock or its note; FetchError for a name that is a path,
        or when incoming is not a directory of the cache's own (see prepare)."""
        problem = filename_problem(name)
        if problem:
            raise FetchError(f"cache: {problem}")
        self.prepare()
        return self.incoming / name

    def prepare(self) -> None:
        """Make the cache's directories where they are missing; FetchError naming one that is something else.

        Checked without following links, each time a path in them is handed out: with blobs/sha256 (or blobs, or
        incoming) a link to another directory, every blob, lock and partial would be written there, and has()
        would delete a wrongly hashed file there. An existing tree needs no write, so a read-only cache still
        serves; an OSError (a directory that cannot be made) is the caller's to explain.
        """
        if not self.root.is_dir():  # the root may be a link: the user chose where the cache lives
            self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.blobs.parent, self.blobs, self.incoming):  # parents first
            try:
                status = directory.lstat()
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # another fetch made it first
                    directory.mkdir()
                status = directory.lstat()
            if stat.S_ISLNK(status.st_mode):
                raise FetchError(f"cache: {directory} is a symbolic link (to {directory.readlink()}), where the "
                                 "cache keeps a directory of its own: a fetch would write its files wherever it "
                                 "points; remove the link (the cache makes the directory again)")
            if not stat.S_ISDIR(status.st_mode):
                raise FetchError(f"cache: {directory} is not a directory, where the cache keeps one; remove it "
                                 "(the cache makes the directory again)")

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """An flock on incoming/<name>.adopting, for work that spans a download and its move into the store.

        Not <name>.lock: the download of <name> takes that one itself, and flock would wait on its own holder.
        """
        with locked(self.entry(f"{name}.adopting")):
            yield

    def note(self, name: str) -> str | None:
        """The sha256 a note in incoming/ holds, when it holds one (a note is the cache's own, but checked)."""
        path = self.entry(name)
        try:
            text = path.read_text("utf-8").strip() if path.is_file() and not path.is_symlink() else None
        except (OSError, UnicodeDecodeError):
            return None
        return text if text is not None and sha256_problem(text) is None else None

    def write_note(self, name: str, sha256: str) -> None:
        write_atomic(self.entry(name), sha256, what="cache note")

    def _read_records(self) -> dict[str, list[int]]:
        try:
            records = json.loads(self._records_path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        # A directory, garbage, or nesting deeper than the parser goes: re-hashing proves the blobs again.
        except (OSError, ValueError, RecursionError) as error:
            log.warning("cache record %s cannot be read (%s): blobs are hashed again", self._records_path,
                        getattr(error, "strerror", None) or error)
            return {}
        if not isinstance(records, dict):
            return {}
        return {key: value for key, value in records.items()
                if sha256_problem(key) is None and isinstance(value, list) and len(value) == 3}

    @contextlib.contextmanager
    def _records(self) -> Iterator[dict[str, list[int]]]:
        """Read-modify-write of verified.json under a lock shared by every fetch process; read-only (nothing
        written back) where the cache cannot be written."""
        self.prepare()
        with locked(self.root / "verified.lock") as writable:
            records = self._read_records()
            before = dict(records)
            yield records
            if writable and records != before:
                write_atomic(self._records_path, json.dumps(records, sort_keys=True), what="cache record")

    @staticmethod
    def _stamp(status: os.stat_result) -> list[int]:
        return [status.st_size, status.st_mtime_ns, status.st_ino]

    def _regular(self, path: Path) -> os.stat_result | None:
        """The blob's status when it is a regular file of its own; a link or anything else planted at a blob's
        place is removed (it is inside the cache) and counts as absent."""
        try:
            status = path.lstat()
        except FileNotFoundError:
            return None
        if stat.S_ISREG(status.st_mode):
            return status
        log.warning("cache: %s is not a regular file; removing it", path)
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def has(self, sha256: str, *, rehash: bool = False) -> bool:
        """Whether the blob is present and proven intact; a blob that fails the check is removed."""
        path = self.blob(sha256)
        status = self._regular(path)
        if status is None:
            return False
        with self._records() as records:
            if not rehash and records.get(sha256) == self._stamp(status):
                return True
            if sha256_of(path) == sha256:
                records[sha256] = self._stamp(status)
                return True
            records.pop(sha256, None)
            with contextlib.suppress(OSError):  # a read-only cache keeps it, but never serves it
                path.unlink()
            return False

    def record(self, sha256: str) -> None:
        """Note a blob that was hashed while it was written."""
        status = self._regular(self.blob(sha256))
        if status is None:
            raise FetchError(f"cache: the blob {sha256} vanished right after it was written")
        with self._records() as records:
            records[sha256] = self._stamp(status)

    def adopt(self, path: Path, sha256: str) -> Path:
        """Move a verified download into the store under its hash."""
        target = self.blob(sha256)
        path.replace(target)
        self.record(sha256)
        return target
