"""The HTTP edge of `fetch`: download one file the way a package manager does.

The bytes stream into ``<target>.part`` while being hashed; the final file appears only through ``os.replace``
once its sha256 matched, so no file at ``target`` ever has the wrong hash. An interrupted transfer resumes with
an HTTP Range request (guarded by If-Range, so a changed remote file is never spliced onto an old partial);
connection errors, stalls, short bodies and 5xx answers are retried with exponential backoff, 4xx answers are
not. An flock on ``<target>.lock`` keeps two processes from writing the same cache entry.

URLs appear in messages and logs only through ``redact``: a mirror URL from invoke.yaml may carry
``user:password@``, which must never reach a terminal or a CI log.

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests

# requests streams through urllib3: reading the raw body (to keep Content-Encoding untouched) raises urllib3's
# own exceptions, which must be caught to retry. urllib3 is requests' transport, not a second HTTP client.
import urllib3.exceptions

from modelarts_images.errors import FetchError
from modelarts_images.shared import redact, retry

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as (url, bytes_done, total_or_None), at most every PROGRESS_INTERVAL seconds and once at the end."""

PROGRESS_INTERVAL = 0.1
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """The outcome of one download."""

    url: str
    path: Path  # the final file
    sha256: str
    size: int
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


def new_session() -> requests.Session:
    """One connection pool for a run's downloads; proxies from the environment (HTTPS_PROXY, ...) are used."""
    return requests.Session()


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
) -> Transfer:
    """Download `url` (http, https or file) to `target`, verified against `expected_sha256` when given.

    Raises FetchError for every expected failure: 4xx answers, retries exhausted, a hash mismatch, a missing
    local file, an unwritable cache. Setting `abort` (from another thread) makes it raise AbortedError at the next
    chunk or retry, keeping the partial for a later resume.
    """
    expected = expected_sha256.lower() if expected_sha256 else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            reused = _reuse(url, target, expected)
            if reused is not None:
                return reused
            report = _Progress(url, progress)
            if urlsplit(url).scheme == "file":
                return _copy_local(url, target, expected, chunk_size, report, abort)
            http = session if session is not None else new_session()
            try:
                return _download_http(
                    url,
                    target,
                    expected,
                    http,
                    retries=retries,
                    backoff=backoff,
                    timeouts=(connect_timeout, read_timeout),
                    chunk_size=chunk_size,
                    report=report,
                    abort=abort,
                )
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
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download of %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


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
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
            size += len(block)
    return size


class _Partial:
    """<target>.part with the running sha256 of its bytes, and <target>.part.meta naming its remote version."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(target.name + ".part")
        self.meta = target.with_name(target.name + ".part.meta")
        self.hasher = hashlib.sha256()
        # Hash what an earlier run left so the running hash continues from the resume offset.
        self.size = _hash_into(self.path, self.hasher) if self.path.is_file() else 0
        self.resumed_from = self.size  # bytes from an earlier run still in the file; 0 after a restart
        self.received = 0  # bytes appended by this call, over all attempts and restarts

    def validator(self, url: str) -> str | None:
        """The ETag or Last-Modified recorded when this partial started, if it was for the same URL."""
        meta = self._meta()
        validator = meta.get("validator")
        return validator if meta.get("url") == url and isinstance(validator, str) else None

    def meta_url(self) -> str | None:
        url = self._meta().get("url")
        return url if isinstance(url, str) else None

    def _meta(self) -> dict[str, object]:
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent or torn by a kill: resume without If-Range
            return {}
        return meta if isinstance(meta, dict) else {}

    def restart(self, url: str | None = None, validator: str | None = None) -> None:
        """Truncate to zero, recording which remote version the new bytes come from."""
        self.path.write_bytes(b"")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.resumed_from = 0
        if url is None:
            self.meta.unlink(missing_ok=True)
        else:
            self.meta.write_text(json.dumps({"url": url, "validator": validator}), encoding="utf-8")

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
        with self.path.open("rb+") as fh:
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
        self.last = 0.0

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.callback(self.url, done, total)


def _copy_local(
    url: str, target: Path, expected: str | None, chunk_size: int, report: _Progress, abort: threading.Event | None
) -> Transfer:
    """file:// URLs: same hashing, atomic rename and mismatch rules, without HTTP."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file URL with a remote host is not supported: {redact.url(url)}")
    source = Path(url2pathname(parts.path))  # percent-decodes ('%2B' -> '+')
    partial = _Partial(target)
    try:
        with source.open("rb") as src:
            total = os.fstat(src.fileno()).st_size
            partial.restart()  # a local copy is cheap: no resume
            with partial.path.open("ab") as fh:
                while chunk := src.read(chunk_size):
                    _check_abort(url, abort)
                    partial.append(fh, chunk)
                    report(partial.size, total)
    except FileNotFoundError:
        partial.discard()
        raise FetchError(f"local file not found: {source} ({redact.url(url)})") from None
    except IsADirectoryError:
        partial.discard()
        raise FetchError(f"local path is a directory: {source} ({redact.url(url)})") from None
    report(partial.size, total, final=True)
    return partial.finish(url, expected, attempts=1)


def _download_http(
    url: str,
    target: Path,
    expected: str | None,
    http: requests.Session,
    *,
    retries: int,
    backoff: float,
    timeouts: tuple[float, float],
    chunk_size: int,
    report: _Progress,
    abort: threading.Event | None,
) -> Transfer:
    partial = _Partial(target)
    earlier = partial.meta_url()
    if partial.size and earlier not in (None, url):
        log.info("discarding %s: it was started from %s", partial.path, redact.url(earlier or ""))
        partial.restart()

    def once(attempt: int) -> int:
        _check_abort(url, abort)
        _attempt(url, partial, http, timeouts=timeouts, chunk_size=chunk_size, report=report, abort=abort)
        return attempt

    def give_up(attempts: int, failure: retry.TransientError) -> FetchError:
        return FetchError(f"download failed after {attempts} attempts: {redact.url(url)}: {failure}")

    def attempts() -> int:
        return retry.call(once, backoff=retry.Backoff(retries=retries, base=backoff), describe=redact.url(url),
                          give_up=give_up, log=log, wait=_pause(abort))

    made = attempts()
    if expected is not None and partial.resumed_from and partial.hasher.hexdigest() != expected:
        # Without a validator the kept bytes may come from another version of the file: one clean restart.
        log.warning("%s: resumed file does not match its sha256; downloading it again from the start", redact.url(url))
        partial.restart()
        made += attempts()
    return partial.finish(url, expected, made)


def _attempt(
    url: str,
    partial: _Partial,
    http: requests.Session,
    *,
    timeouts: tuple[float, float],
    chunk_size: int,
    report: _Progress,
    abort: threading.Event | None,
) -> None:
    """One request, appending to the partial. Raises retry.TransientError or FetchError."""
    offset = partial.size
    response = _request(url, http, offset, partial.validator(url), timeouts)
    if response.status_code == 416:
        # The partial is complete or longer than the remote file: neither can be trusted, start over.
        response.close()
        log.info("%s: server refused to resume at byte %d; starting over", redact.url(url), offset)
        partial.restart()
        offset = 0
        response = _request(url, http, 0, None, timeouts)
    with response:
        _check_status(url, response)
        length = _content_length(response)
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                partial.restart()
                raise retry.TransientError(
                    f"server sent a range other than bytes={offset}-: {response.headers.get('Content-Range')}"
                )
            total = None if match.group(3) == "*" else int(match.group(3))
            log.info("resuming %s at byte %d", redact.url(url), offset)
        else:
            if offset:
                log.info("%s: server sent the whole file (Range ignored or remote changed); starting over",
                         redact.url(url))
            partial.restart(url, _validator(response))
            offset = 0
            total = length
        _stream(
            url, response, partial, offset, length, total,
            read_timeout=timeouts[1], chunk_size=chunk_size, report=report, abort=abort,
        )


def _request(
    url: str, http: requests.Session, offset: int, validator: str | None, timeouts: tuple[float, float]
) -> requests.Response:
    # identity: Range offsets and Content-Length then count the bytes we store (pip does the same).
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # a changed remote file answers 200 with the whole new body
    try:
        return http.get(url, headers=headers, stream=True, timeout=timeouts)
    except requests.exceptions.SSLError as exc:  # a certificate problem does not heal by retrying
        raise FetchError(f"TLS error for {redact.url(url)}: {redact.about(url, str(exc))}") from None
    except requests.exceptions.ConnectTimeout:
        raise retry.TransientError(f"no connection within {timeouts[0]:g}s") from None
    except requests.exceptions.ReadTimeout:
        raise retry.TransientError(f"no response within {timeouts[1]:g}s") from None
    except requests.exceptions.ConnectionError as exc:
        raise retry.TransientError(f"connection failed: {redact.about(url, str(exc))}") from None
    except requests.RequestException as exc:  # invalid URL, too many redirects: permanent
        raise FetchError(f"cannot download {redact.url(url)}: {redact.about(url, str(exc))}") from None


def _check_status(url: str, response: requests.Response) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    if status >= 500:
        raise retry.TransientError(f"HTTP {status} {response.reason}")
    raise FetchError(f"HTTP {status} {response.reason} for {redact.url(url)}")


def _content_length(response: requests.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _validator(response: requests.Response) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (weak ETags are not allowed there)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _stream(
    url: str,
    response: requests.Response,
    partial: _Partial,
    offset: int,
    length: int | None,
    total: int | None,
    *,
    read_timeout: float,
    chunk_size: int,
    report: _Progress,
    abort: threading.Event | None,
) -> None:
    """Append the body to the partial; a stall, a cut or a body shorter than announced raises retry.TransientError.

    `abort` is checked after every read: a read returns whatever has arrived, so a set event takes effect within
    moments on a live transfer (within the read timeout on a stalled one).
    """
    # The raw body without decoding: the file is stored exactly as served, as pip does. read1 (urllib3 2)
    # returns whatever has arrived, so a cut loses nothing already received; read() would wait for a full chunk.
    read = getattr(response.raw, "read1", response.raw.read)
    with partial.path.open("ab") as fh:
        while True:
            try:
                chunk = read(chunk_size, decode_content=False)
            except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout):
                raise retry.TransientError(
                    f"stalled: no data for {read_timeout:g}s after {_of(partial.size, total)}"
                ) from None
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
                raise retry.TransientError(f"connection cut after {_of(partial.size, total)}") from None
            if not chunk:
                break
            partial.append(fh, chunk)  # kept: what arrived before an abort serves the resume
            report(partial.size, total)
            _check_abort(url, abort)
    if length is not None and partial.size - offset < length:
        raise retry.TransientError(f"connection cut after {_of(partial.size, total)}")
    report(partial.size, total, final=True)


def _of(done: int, total: int | None) -> str:
    return f"{done} of {total} bytes" if total is not None else f"{done} bytes"


def get_text(
    url: str, *, session: requests.Session, retries: int = 4, backoff: float = 0.5,
    timeouts: tuple[float, float] = (10, 30),
) -> str:
    """An index page, with the same retry rules as a download (5xx and connection errors retried, 4xx not)."""

    def once(attempt: int) -> str:
        with _request(url, session, 0, None, timeouts) as response:
            _check_status(url, response)
            return _body_text(url, response)

    def give_up(attempts: int, failure: retry.TransientError) -> FetchError:
        return FetchError(f"cannot read {redact.url(url)} after {attempts} attempts: {failure}")

    return retry.call(once, backoff=retry.Backoff(retries=retries, base=backoff), describe=redact.url(url),
                      give_up=give_up, log=log)


def _body_text(url: str, response: requests.Response) -> str:
    """The body of a streamed response; a cut or a stall while reading it is transient like one before it."""
    try:
        return response.text
    except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:  # ReadTimeout included
        raise retry.TransientError(f"connection cut while reading the page: {redact.about(url, str(exc))}") from None
    except requests.RequestException as exc:  # a body that cannot be decoded does not heal by retrying
        raise FetchError(f"cannot read {redact.url(url)}: {redact.about(url, str(exc))}") from None
