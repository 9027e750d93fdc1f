"""The artifact cache: files stored by sha256, with a record that proves them unchanged without re-hashing."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Cache:
    """blobs/sha256/<hex> files; verified.json maps hex -> [size, mtime_ns, inode] seen right after hashing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.incoming = root / "incoming"
        self._records_path = root / "verified.json"

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256

    def prepare(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """An flock on incoming/<name>.adopting, for work that spans a download and its move into the store.

        Not <name>.lock: the download of <name> takes that one itself, and flock would wait on its own holder.
        """
        self.prepare()
        with (self.incoming / f"{name}.adopting").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _records(self) -> Iterator[dict[str, list[int]]]:
        """Read-modify-write of verified.json under a lock shared by every fetch process."""
        self.prepare()
        with (self.root / "verified.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records: dict[str, list[int]] = json.loads(self._records_path.read_text("utf-8"))
            except (FileNotFoundError, ValueError):
                records = {}
            before = dict(records)
            yield records
            if records != before:
                partial = self._records_path.with_name("verified.json.tmp")
                partial.write_text(json.dumps(records, sort_keys=True), encoding="utf-8")
                partial.replace(self._records_path)

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        status = path.stat()
        return [status.st_size, status.st_mtime_ns, status.st_ino]

    def has(self, sha256: str, *, rehash: bool = False) -> bool:
        """Whether the blob is present and proven intact; a blob that fails the check is removed."""
        path = self.blob(sha256)
        if not path.is_file():
            return False
        with self._records() as records:
            if not rehash and records.get(sha256) == self._stamp(path):
                return True
            if sha256_of(path) == sha256:
                records[sha256] = self._stamp(path)
                return True
            records.pop(sha256, None)
            path.unlink()
            return False

    def record(self, sha256: str) -> None:
        """Note a blob that was hashed while it was written."""
        with self._records() as records:
            records[sha256] = self._stamp(self.blob(sha256))

    def adopt(self, path: Path, sha256: str) -> Path:
        """Move a verified download into the store under its hash."""
        target = self.blob(sha256)
        path.replace(target)
        self.record(sha256)
        return target
