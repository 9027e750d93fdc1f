"""Download one file the way a package manager does (http, https or file URLs); sessions, requests and bodies
come from `session`, index pages from `pages`.

The bytes stream into ``<target>.part`` while being hashed; the final file appears only through ``os.replace``
once its sha256 matched, so no file at ``target`` ever has the wrong hash. An interrupted transfer resumes with
an HTTP Range request (guarded by If-Range, so a changed remote file is never spliced onto an old partial);
connection errors, stalls, short bodies, 429 and 5xx answers are retried with exponential backoff (at least as
long as a Retry-After header asks, up to retry.MAX_RETRY_AFTER), other 4xx answers are not. An flock on
``<target>.lock`` keeps two processes from writing the same cache entry.

Hostile or broken servers are bounded, since a file without a sha256 is pinned on first use (whatever arrives
becomes the truth) and a fetch must end:

- a 206 answer must carry the range asked for, and a file is finished only when it holds as many bytes as the
  server says the whole file has; a 206 with half the file (even to a plain GET) continues from where it ended;
  a 206 that gives no total (``bytes 0-499/*``) says nothing of where the file ends, so the next request asks
  from there, until a 416 names the size (or the sha256 matches): a partial file is never taken for a whole one;
- late response headers and a trickling body are cut (see `session`), and the transfer resumed;
- no file grows beyond the size versions.lock records, or ``max_size`` (max_file_size in invoke.yaml) when it
  records none: an endless body stops there instead of filling the disk;
- a ``.part`` that already holds the whole file (a kill after its last byte) is finished when the server refuses
  the resume with 416, instead of being downloaded again;
- file:// URLs must name regular files outside /proc, /sys and /dev.

URLs appear in messages and logs only through ``redact``: a mirror URL from invoke.yaml may carry
``user:password@``, which must never reach a terminal or a CI log, nor the disk (``.part.meta`` records the URL
without it).

Reuse rule: once the lock is held, an existing ``target`` whose sha256 matches ``expected_sha256`` (or any
existing ``target`` when ``expected_sha256`` is None) is returned as is with ``bytes_transferred == 0``; an
existing ``target`` with another hash is deleted and downloaded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests

from modelarts_images import declared
from modelarts_images.errors import FetchError
from modelarts_images.http.session import (
    DEFAULT_MIN_SPEED,
    DEFAULT_SPEED_WINDOW,
    Body,
    Speed,
    check_status,
    content_length,
    new_session,
    request,
)
from modelarts_images.shared import redact, retry
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.shared.text import size as shown_size

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1
DEFAULT_MAX_SIZE: int = declared.default("max_file_size")  # bytes: the bound when versions.lock has no size
# Numbers of at most 20 digits: a longer one matches nothing instead of making int() refuse a monster string.
_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20}|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d{1,20})")
# The kernel makes these files up as they are read: /proc/self/environ says it is a regular file of size 0 and
# holds the environment (secrets included), /dev/zero never ends.
_KERNEL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """The outcome of one download."""

    url: str
    path: Path  # the final file
    sha256: str
    size: int  # bytes of the final file
    bytes_transferred: int  # received in this call (all attempts; a resume counts only the missing part)
    resumed_from: int  # bytes of a .part left by an earlier run that ended up in the file (0: fresh start)
    attempts: int  # requests made (0: the final file was already there)


class AbortedError(FetchError):
    """The caller's abort event was set (another download failed, or Ctrl-C): the partial stays for a resume."""


def _check_abort(url: str, abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise AbortedError(f"stopped before the end: {redact.url(url)}")


def _pause(abort: threading.Event | None) -> Callable[[float], object]:
    """The backoff before a retry; an abort cuts it short instead of holding the caller for up to a backoff."""
    return abort.wait if abort is not None else time.sleep


@dataclass(frozen=True)
class _Bound:
    """The most bytes a file may have: the size versions.lock records, else max_file_size from invoke.yaml."""

    limit: int
    recorded: bool  # the limit is the size versions.lock records (not max_file_size)

    @classmethod
    def of(cls, expected_size: int | None, max_size: int) -> _Bound:
        return cls(expected_size, True) if expected_size is not None else cls(max_size, False)

    def exceeded(self, size: int | None) -> bool:
        return size is not None and size > self.limit

    def error(self, url: str, seen: str) -> FetchError:
        """`seen`: how the excess showed ('the server announces 5000 bytes')."""
        if self.recorded:
            return FetchError(
                f"{redact.url(url)} is larger than the {self.limit} bytes versions.lock records ({seen}): the file "
                "changed at its source, or a mirror serves another one; if the new file is right, run `inv lock` "
                "to record it")
        return FetchError(
            f"{redact.url(url)} is larger than max_file_size in invoke.yaml ({self.limit} bytes, "
            f"{shown_size(self.limit)}; {seen}): if the file really is that large, raise max_file_size")


@dataclass(frozen=True, kw_only=True)
class _Rules:
    """How one download may go: retries, timeouts, chunk size, the size bound and the minimum speed."""

    retries: int
    backoff: float
    timeouts: tuple[float, float]  # connect, read
    chunk_size: int
    bound: _Bound
    min_speed: int
    speed_window: float

    def speed(self) -> Speed:
        return Speed(self.min_speed, self.speed_window)


def download(
    url: str,
    target: Path,
    *,
    expected_sha256: str | None,
    session: requests.Session | None = None,
    retries: int = 4,
    backoff: float = 0.5,
    connect_timeout: float = 10,
    read_timeout: float = 30,
    progress: ProgressCallback | None = None,
    chunk_size: int = 1 << 20,
    abort: threading.Event | None = None,
    expected_size: int | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    min_speed: int = DEFAULT_MIN_SPEED,
    speed_window: float = DEFAULT_SPEED_WINDOW,
) -> Transfer:
    """Download `url` (http, https or file) to `target`, verified against `expected_sha256` when given.

    `expected_size` (what versions.lock records) bounds the file, else `max_size`; `min_speed` bytes/s over
    `speed_window` seconds is the slowest transfer kept (a slower one is cut and resumed; 0 turns it off).

    Raises FetchError for every expected failure: 4xx answers, retries exhausted, a hash mismatch, a file larger
    than its bound, a missing or irregular local file, an unwritable cache. Setting `abort` (from another thread)
    makes it raise AbortedError at the next chunk or retry, keeping the partial for a later resume.
    """
    expected = expected_sha256.lower() if expected_sha256 else None
    rules = _Rules(retries=retries, backoff=backoff, timeouts=(connect_timeout, read_timeout), chunk_size=chunk_size,
                   bound=_Bound.of(expected_size, max_size), min_speed=min_speed, speed_window=speed_window)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            _unlink_planted(target, _part(target), _part_meta(target))
            reused = _reuse(url, target, expected)
            if reused is not None:
                return reused
            report = _Progress(url, progress)
            if urlsplit(url).scheme == "file":
                return _copy_local(url, target, expected, rules, report, abort)
            http = session if session is not None else new_session()
            try:
                return _HttpDownload(url, _Partial(target), expected, http, rules, report, abort).run()
            finally:
                if session is None:
                    http.close()
    except OSError as exc:  # the cache itself (disk full, permissions), not the network
        raise FetchError(f"cannot write {target} for {redact.url(url)}: {exc}") from exc


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive flock on <target>.lock; the kernel drops it when the process dies, even by SIGKILL.

    The lock file is left in place: deleting it would let a third process lock a fresh inode while a second
    one still waits on the old one.
    """
    lock_path = target.with_name(target.name + ".lock")
    if lock_path.is_symlink():  # never a lock this tool made: removing it takes no lock from anyone
        log.warning("%s is a symbolic link: removing it", lock_path)
        lock_path.unlink()
    with _open(lock_path, os.O_RDWR | os.O_CREAT) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download of %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _open(path: Path, flags: int) -> BinaryIO:
    """A file of the download's own, never through a symbolic link: a link planted in the cache must not make
    a download write (or read) a file elsewhere. A link there fails with ELOOP."""
    descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    mode = "rb" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else ("ab" if flags & os.O_APPEND else "r+b")
    return cast(BinaryIO, os.fdopen(descriptor, mode))


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _part_meta(target: Path) -> Path:
    return target.with_name(target.name + ".part.meta")


def _unlink_planted(*paths: Path) -> None:
    """Remove what is not a regular file at the download's own names (a link, a pipe): they are the cache's, and
    anything else there was put by someone else."""
    for path in paths:
        try:
            status = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(status.st_mode):
            log.warning("%s is not a regular file: removing it before downloading", path)
            if stat.S_ISDIR(status.st_mode):
                raise FetchError(f"{path} is a directory where the cache keeps a download; remove it")
            path.unlink()


def _reuse(url: str, target: Path, expected: str | None) -> Transfer | None:
    """The existing final file when it can stand; a wrong one is removed so it can never be used."""
    if not target.is_file():
        return None
    hasher = hashlib.sha256()
    size = _hash_into(target, hasher)
    digest = hasher.hexdigest()
    if expected is None or digest == expected:
        log.info("already downloaded: %s", target)
        return Transfer(url=url, path=target, sha256=digest, size=size, bytes_transferred=0, resumed_from=0, attempts=0)
    log.warning("%s has sha256 %s, expected %s: downloading it again", target, digest, expected)
    target.unlink()
    return None


def _hash_into(path: Path, hasher: hashlib._Hash) -> int:
    """Feed the file to `hasher`; returns its size."""
    size = 0
    with _open(path, os.O_RDONLY) as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
            size += len(block)
    return size


class _Partial:
    """<target>.part with the running sha256 of its bytes, and <target>.part.meta naming its remote version."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = _part(target)
        self.meta = _part_meta(target)
        self.hasher = hashlib.sha256()
        # Hash what an earlier run left so the running hash continues from the resume offset.
        self.size = _hash_into(self.path, self.hasher) if self.path.is_file() else 0
        self.resumed_from = self.size  # bytes from an earlier run still in the file; 0 after a restart
        self.received = 0  # bytes appended by this call, over all attempts and restarts

    def validator(self, url: str) -> str | None:
        """The ETag or Last-Modified recorded when this partial started, if it was for the same URL."""
        meta = self._meta() or {}
        validator = meta.get("validator")
        return validator if meta.get("url") == redact.without_credentials(url) and isinstance(validator, str) else None

    def not_from(self, url: str) -> str | None:
        """Why the bytes kept cannot be continued from `url`, when they cannot: their note cannot be read, or names
        another URL. Without a note, a resume goes on without If-Range, and a pinned file's sha256 judges it."""
        meta = self._meta()
        if meta is None:
            return f"{self.meta} cannot be read"
        earlier = meta.get("url")
        if isinstance(earlier, str) and earlier != redact.without_credentials(url):
            return f"it was started from {redact.url(earlier)}"
        return None

    def _meta(self) -> dict[str, object] | None:
        """The note naming the partial's remote version: {} when there is none, None when it is unreadable."""
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        # Torn, garbage, or nested deeper than the parser goes: nothing says which version the bytes are from.
        except (OSError, ValueError, RecursionError):
            return None
        return meta if isinstance(meta, dict) else None

    def restart(self, url: str | None = None, validator: str | None = None) -> None:
        """Truncate to zero, recording which remote version the new bytes come from."""
        with _open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
            pass
        self.hasher = hashlib.sha256()
        self.size = 0
        self.resumed_from = 0
        if url is None:
            self.meta.unlink(missing_ok=True)
        else:
            # The URL without a mirror's user:password@: the note is a file on disk, in a cache others may read;
            # validator() and not_from() compare URLs without credentials too, so a resume still finds it.
            note = {"url": redact.without_credentials(url), "validator": validator}
            with _open(self.meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as meta:
                meta.write(json.dumps(note).encode("utf-8"))

    def append(self, fh: BinaryIO, chunk: bytes) -> None:
        fh.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)
        self.received += len(chunk)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def finish(self, url: str, expected: str | None, attempts: int) -> Transfer:
        """Check the hash, then move the partial into place; on mismatch nothing is left behind."""
        digest = self.hasher.hexdigest()
        if expected is not None and digest != expected:
            self.discard()
            raise FetchError(f"sha256 mismatch for {redact.url(url)}: expected {expected}, got {digest}")
        with _open(self.path, os.O_RDWR) as fh:
            os.fsync(fh.fileno())  # the rename must not publish a file whose bytes are still only in cache
        self.path.replace(self.target)  # atomic: the target is either absent or complete
        self.meta.unlink(missing_ok=True)
        log.info("downloaded %s (%d bytes, sha256 %s)", self.target, self.size, digest)
        return Transfer(
            url=url,
            path=self.target,
            sha256=digest,
            size=self.size,
            bytes_transferred=self.received,
            resumed_from=self.resumed_from,
            attempts=attempts,
        )


class _Progress:
    """Throttles the caller's callback so a fast transfer does not flood a terminal."""

    def __init__(self, url: str, callback: ProgressCallback | None) -> None:
        self.url = url
        self.callback = callback
        self.last: float | None = None  # never reported: the first report goes out whatever the clock says

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if final or self.last is None or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.callback(self.url, done, total)


# ----------------------------------------------------------------------------------------------------------------
# file:// URLs


def _copy_local(
    url: str, target: Path, expected: str | None, rules: _Rules, report: _Progress, abort: threading.Event | None
) -> Transfer:
    """file:// URLs: same hashing, atomic rename, mismatch and size rules, without HTTP."""
    bound = rules.bound
    with _open_regular(url, _local_path(url)) as src:
        total = os.fstat(src.fileno()).st_size
        if bound.exceeded(total):
            raise bound.error(url, f"the file has {total} bytes")
        partial = _Partial(target)
        partial.restart()  # a local copy is cheap: no resume
        with _open(partial.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fh:
            # One byte past the bound is read, to see a file that grows while it is copied cross it.
            while chunk := src.read(min(rules.chunk_size, bound.limit + 1 - partial.size)):
                _check_abort(url, abort)
                partial.append(fh, chunk)
                if bound.exceeded(partial.size):
                    partial.discard()
                    raise bound.error(url, "it grew while being copied")
                report(partial.size, total)
    report(partial.size, total, final=True)
    return partial.finish(url, expected, attempts=1)


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file URL with a remote host is not supported: {redact.url(url)}")
    return Path(url2pathname(parts.path))  # percent-decodes ('%2B' -> '+')


@contextlib.contextmanager
def _open_regular(url: str, source: Path) -> Iterator[BinaryIO]:
    """The file a file:// URL names, open for reading, when it is a regular file (after following links) outside
    the kernel's trees; FetchError otherwise."""
    resolved = Path(os.path.realpath(source))  # Path.resolve() raises RuntimeError on a link loop; open() says ELOOP
    shown = str(source) if resolved == source else f"{source} (a link to {resolved})"
    tree = next((root for root in _KERNEL_TREES if resolved == root or root in resolved.parents), None)
    if tree is not None:
        raise FetchError(
            f"file URL {redact.url(url)} is not a regular file: {shown} is under {tree}, whose files the kernel "
            "makes up as they are read (copying /proc/self/environ would put this process's environment, secrets "
            "included, into the cache); point the URL at a file on disk")
    try:
        # O_NONBLOCK: opening a FIFO would wait for a writer forever; reading a regular file ignores the flag.
        # O_NOFOLLOW: the resolved path has no link left; one put there since the check above is refused (ELOOP).
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FetchError(f"local file not found: {source} ({redact.url(url)})") from None
    except OSError as exc:
        raise FetchError(f"cannot read {shown} for {redact.url(url)}: {exc.strerror or exc}") from None
    kind = _irregular_kind(os.fstat(fd).st_mode)  # of what was opened, not of what the path named a moment ago
    if kind is not None:
        os.close(fd)
        raise FetchError(f"file URL {redact.url(url)} is not a regular file: {shown} is {kind}; point the URL at "
                         "the file itself")
    with os.fdopen(fd, "rb") as src:
        yield src


def _irregular_kind(mode: int) -> str | None:
    """What a file other than a regular one is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# ----------------------------------------------------------------------------------------------------------------
# http(s)


@dataclass(frozen=True, kw_only=True)
class _Answer:
    """What one 200 or 206 response carries."""

    start: int  # where its body goes in the file
    length: int | None  # bytes its body should have; None: until the connection closes
    total: int | None  # bytes of the whole file; None: not said

    @property
    def announced(self) -> int | None:
        """The size of the file the server claims: its total, else the end of this body."""
        if self.total is not None:
            return self.total
        return None if self.length is None else self.start + self.length


class _Incomplete(retry.TransientError):
    """An answer that ended where the server said it would, short of the whole file or without saying how large
    the file is: the next attempt asks for the rest. A server that never sends it (or never says where the file
    ends) is a FetchError once the retries are spent."""

    def __init__(self, answer: _Answer, have: int) -> None:
        end = answer.start + (answer.length or 0) - 1
        if answer.total is None:
            super().__init__(f"the server sent bytes {answer.start}-{end} without saying how large the file is; "
                             "asking for what follows")
            self.final = (f"the server never said where the file ends: {have} bytes arrived in answers without a "
                          f"total (its last answer: bytes {answer.start}-{end}/*), and no answer named its size")
            return
        super().__init__(f"the server sent bytes {answer.start}-{end} of {answer.total}, not the whole file; "
                         f"asking for the rest")
        self.final = (f"the server never sent the whole file: {have} of its {answer.total} bytes arrived "
                      f"(its last answer: bytes {answer.start}-{end})")


class _HttpDownload:
    """One file over http(s): attempts with retries, each appending to the partial where the last one stopped."""

    def __init__(self, url: str, partial: _Partial, expected: str | None, http: requests.Session, rules: _Rules,
                 report: _Progress, abort: threading.Event | None) -> None:
        self.url = url
        self.partial = partial
        self.expected = expected
        self.http = http
        self.rules = rules
        self.report = report
        self.abort = abort

    def run(self) -> Transfer:
        partial, url = self.partial, self.url
        stale = partial.not_from(url)
        if partial.size and stale:
            log.info("discarding %s: %s", partial.path, stale)
            partial.restart()
        if self.rules.bound.exceeded(partial.size):
            log.info("discarding %s: it is larger than the %d bytes this file may have", partial.path,
                     self.rules.bound.limit)
            partial.restart()
        made = self._attempts()
        if self.expected is not None and partial.resumed_from and partial.hasher.hexdigest() != self.expected:
            # Without a validator the kept bytes may come from another version of the file: one clean restart.
            log.warning("%s: resumed file does not match its sha256; downloading it again from the start",
                        redact.url(url))
            partial.restart()
            made += self._attempts()
        return partial.finish(url, self.expected, made)

    def _attempts(self) -> int:
        def once(attempt: int) -> int:
            _check_abort(self.url, self.abort)
            self._attempt()
            return attempt

        return retry.call(once, backoff=retry.Backoff(retries=self.rules.retries, base=self.rules.backoff),
                          describe=redact.url(self.url), give_up=self._give_up, log=log, wait=_pause(self.abort))

    def _give_up(self, attempts: int, failure: retry.TransientError) -> FetchError:
        return FetchError(f"download failed after {attempts} attempts: {redact.url(self.url)}: {failure.final}")

    def _attempt(self) -> None:
        """One request, appending to the partial. Raises retry.TransientError or FetchError."""
        offset = self.partial.size
        response = request(self.url, self.http, offset, self.partial.validator(self.url), self.rules.timeouts)
        if response.status_code == 416 and offset:
            with response:
                total = _unsatisfied_total(response)
            if self._already_whole(total):
                return
            # The partial is longer than the remote file, or not its start: neither can be trusted, start over.
            log.info("%s: server refused to resume at byte %d; starting over", redact.url(self.url), offset)
            self.partial.restart()
            response = request(self.url, self.http, 0, None, self.rules.timeouts)
        with response:
            check_status(self.url, response)
            answer = self._answer(response)
            self._stream(response, answer)
        if answer.total is not None and self.partial.size < answer.total:
            raise _Incomplete(answer, self.partial.size)
        if answer.total is None and response.status_code == 206 and self.partial.hasher.hexdigest() != self.expected:
            # 'bytes 0-499/*': the server chose where this answer ends, which says nothing of where the file does
            # (only a pinned file's sha256 proves it). Asking from here ends in a 416 that names the size, or in
            # more bytes; never in a partial file pinned as the whole one.
            raise _Incomplete(answer, self.partial.size)

    def _already_whole(self, total: int | None) -> bool:
        """Whether the partial refused a resume (416) because it already holds the whole file: a kill after the
        last byte, before the rename. A pinned file proves it by its sha256 (a same-sized stale partial must not
        end in a mismatch), another by having the size the 416 names."""
        partial = self.partial
        if self.expected is not None:
            whole = partial.hasher.hexdigest() == self.expected
        else:
            whole = total is not None and partial.size == total
        if whole:
            log.info("%s: %s already holds all %d bytes; finishing it", redact.url(self.url), partial.path,
                     partial.size)
        return whole

    def _answer(self, response: requests.Response) -> _Answer:
        """What the response carries; a 200 restarts the partial, a 206 must continue it exactly where it ends."""
        partial, url = self.partial, self.url
        offset = partial.size
        if response.status_code == 206:
            answer = _range_answer(response, offset)
            if answer is None:
                partial.restart()
                raise retry.TransientError(
                    f"server sent a range other than bytes={offset}-: {response.headers.get('Content-Range')}")
            if offset:
                log.info("resuming %s at byte %d", redact.url(url), offset)
            else:  # a 206 to a plain GET: this partial starts here, so record which version it is
                partial.restart(url, _validator(response))
        else:
            if offset:
                log.info("%s: server sent the whole file (Range ignored or remote changed); starting over",
                         redact.url(url))
            partial.restart(url, _validator(response))
            length = content_length(response)
            answer = _Answer(start=0, length=length, total=length)
        if self.rules.bound.exceeded(answer.announced):
            partial.discard()  # a bound is a fact about the file: no later attempt will fit under it
            raise self.rules.bound.error(url, f"the server announces {answer.announced} bytes")
        return answer

    def _stream(self, response: requests.Response, answer: _Answer) -> None:
        """Append the body to the partial; a stall, a cut, a trickle or a body shorter than announced raises
        retry.TransientError, a body growing past the bound FetchError.

        `abort` is checked after every read: a read returns whatever has arrived, so a set event takes effect
        within moments on a live transfer (within the read timeout on a stalled one).
        """
        partial, bound = self.partial, self.rules.bound
        body = Body(response, self.rules.timeouts[1], where=lambda: _of(partial.size, answer.total))
        speed = self.rules.speed()
        received = 0
        with _open(partial.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fh:
            while answer.length is None or received < answer.length:
                # Never more than the answer's own length (a 206 says where its range ends), and one byte past the
                # bound at most, to see an endless body cross it.
                rest = answer.length - received if answer.length is not None else self.rules.chunk_size
                chunk = body.read(min(self.rules.chunk_size, rest, bound.limit + 1 - partial.size))
                if not chunk:
                    break
                partial.append(fh, chunk)  # kept: what arrived before an abort, a cut or a trickle serves the resume
                received += len(chunk)
                if bound.exceeded(partial.size):
                    partial.discard()
                    raise bound.error(self.url, "the server kept sending past it")
                self.report(partial.size, answer.total)
                speed.add(len(chunk))
                _check_abort(self.url, self.abort)
        if answer.length is not None and received < answer.length:
            raise retry.TransientError(f"connection cut after {_of(partial.size, answer.total)}")
        self.report(partial.size, answer.total, final=True)


def _range_answer(response: requests.Response, offset: int) -> _Answer | None:
    """A 206's Content-Range when it starts at `offset` and is a possible range; None otherwise.

    Its length comes from the range, not Content-Length: a body shorter than the range is a cut (resumed), and
    bytes past the range's end are never read.
    """
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if start != offset or end < start or (total is not None and end >= total):
        return None
    return _Answer(start=start, length=end - start + 1, total=total)


def _unsatisfied_total(response: requests.Response) -> int | None:
    """The file's size from a 416's 'Content-Range: bytes */N'."""
    match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return None if match is None else int(match[1])


def _validator(response: requests.Response) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags are not allowed there)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _of(done: int, total: int | None) -> str:
    return f"{done} of {total} bytes" if total is not None else f"{done} bytes"



