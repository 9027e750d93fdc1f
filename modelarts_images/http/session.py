"""HTTP sessions for fetching, and what a file download and an index page share: the request with its failures
sorted into transient (retried) and permanent, the answer's status, its body read raw, and the minimum speed.

Hostile or broken servers are bounded here for both:

- the status line and headers must all arrive within the read timeout (on sessions from `new_session`): a
  header sent a byte at a time never trips the read timeout, and the minimum speed only watches bodies;
- a body slower than ``min_speed`` bytes/s over any ``speed_window`` seconds is cut (`Speed`): a byte every few
  seconds never trips the read timeout either.

URLs appear in messages only through ``redact``: a mirror URL from invoke.yaml may carry ``user:password@``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import requests
import requests.adapters

# requests streams through urllib3: reading the raw body (to keep Content-Encoding untouched) raises urllib3's
# own exceptions, which must be caught to retry; its connections are where a deadline on the response headers can
# reach the socket. urllib3 is requests' transport, not a second HTTP client.
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.response

from modelarts_images import declared
from modelarts_images.errors import FetchError
from modelarts_images.http import failures
from modelarts_images.shared import redact, retry

DEFAULT_MIN_SPEED: int = declared.default("min_speed")  # bytes/s
DEFAULT_SPEED_WINDOW = 60.0  # seconds over which min_speed is measured


class Speed:
    """Cuts a transfer that trickles: fewer than min_speed * window bytes over any full window is too slow.

    A server sending a byte every few seconds never trips the read timeout (every read gets something), so
    without this a broken or hostile mirror holds a fetch for days. A min_speed or window of 0 turns it off.
    """

    def __init__(self, min_speed: int, window: float) -> None:
        self.min_speed = min_speed
        self.window = window
        self.count = 0
        # (time, bytes so far), thinned to about 32 a window so a fast transfer does not pile up samples
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def add(self, received: int) -> None:
        """Count `received` more bytes; retry.TransientError when the last full window brought too few."""
        if self.min_speed <= 0 or self.window <= 0:
            return
        now = time.monotonic()
        self.count += received
        if now - self.samples[-1][0] >= self.window / 32:
            self.samples.append((now, self.count))
        # Keep the newest sample at or before the window's start: the bytes since it span at least one window.
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        since, before = self.samples[0]
        got = self.count - before
        if now - since >= self.window and got < self.min_speed * self.window:
            raise retry.TransientError(
                f"too slow: {got} bytes in {self.window:g} s, below the minimum of {self.min_speed} bytes/s "
                "(min_speed in invoke.yaml)")


def new_session() -> requests.Session:
    """One connection pool for a run's downloads; proxies from the environment (HTTPS_PROXY, ...) are used.

    Its connections want every response header within the read timeout (see _HeaderDeadline): pass `download`
    and `get_text` a session from here."""
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _Adapter())
    return session


def request(
    url: str, http: requests.Session, offset: int, validator: str | None, timeouts: tuple[float, float],
    *, accept_encoding: str = "identity",
) -> requests.Response:
    """GET `url` streamed, from byte `offset` on (If-Range `validator` guards a resume). A failure that may heal
    (a refused or timed-out connection, a reset, late headers) is a retry.TransientError, as often as its kind
    deserves (failures.RETRIES); one that will not (a name that does not resolve, TLS, a proxy's refusal, an
    invalid URL) a FetchError, whose message names the cause and the next step in one line."""
    # identity for files: Range offsets and Content-Length then count the bytes we store (pip does the same).
    headers = {"Accept-Encoding": accept_encoding}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # a changed remote file answers 200 with the whole new body
    try:
        return http.get(url, headers=headers, stream=True, timeout=timeouts)
    except requests.exceptions.ReadTimeout:  # the first byte, or the last header, came too late (_HeaderDeadline)
        raise retry.TransientError(f"no complete response headers within {timeouts[1]:g}s") from None
    except requests.RequestException as exc:
        failure = failures.classify(exc, url, failures.FETCH, connect_timeout=timeouts[0])
        if failure is None:  # invalid URL, too many redirects: permanent
            raise FetchError(f"cannot download {redact.url(url)}: {redact.about(url, str(exc))}") from None
        if failure.transient:
            raise failure.retry() from None
        # A name that does not resolve, TLS, a proxy's refusal: this machine's settings, which no retry changes.
        raise FetchError(f"{redact.url(url)}: {failure.text}") from None


def check_status(url: str, response: requests.Response) -> None:
    """200 and 206 pass; 429 and 5xx are transient (with the Retry-After the server asks for); the rest fail."""
    status = response.status_code
    if status in (200, 206):
        return
    if status == 429 or status >= 500:
        # Rate limits and overloads pass; the server may say when (retry.call caps how long it may ask for).
        retry_after = retry.parse_retry_after(response.headers.get("Retry-After"))
        asked = f" (Retry-After: {retry_after:g}s)" if retry_after is not None else ""
        raise retry.TransientError(f"HTTP {status} {response.reason}{asked}", retry_after=retry_after)
    raise FetchError(f"HTTP {status} {response.reason} for {redact.url(url)}")


def content_length(response: requests.Response) -> int | None:
    try:
        length = int(response.headers["Content-Length"])
    except (KeyError, ValueError):  # absent, or not a number (int() also refuses a monstrously long one)
        return None
    return length if length >= 0 else None


class Body:
    """The raw bytes of a streamed response as they arrive; a stall or a cut raises retry.TransientError.

    Raw, without decoding: a file is stored exactly as served, as pip does, and a page is decoded with a bound.
    read1 (urllib3 2) returns whatever has arrived, so a cut loses nothing already received and every limit is
    checked after each read; read() would wait for a full chunk.
    """

    def __init__(self, response: requests.Response, read_timeout: float, *, where: Callable[[], str]) -> None:
        self._read = getattr(response.raw, "read1", response.raw.read)
        self.read_timeout = read_timeout
        self.where = where  # how far the transfer got, for messages

    def read(self, amount: int) -> bytes:
        try:
            chunk: bytes = self._read(amount, decode_content=False)
        except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout):
            raise retry.TransientError(f"stalled: no data for {self.read_timeout:g}s after {self.where()}") from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            raise retry.TransientError(f"connection cut after {self.where()}") from None
        return chunk


class _HeaderDeadline:
    """Shuts a socket down unless stopped within `seconds`: the bound on receiving a response's headers.

    The read timeout bounds each read, not the headers: a server that sends its status line, then a byte of a
    header every few seconds, would hold a fetch forever (the minimum speed watches only bodies, which come after).
    Shutting the socket down from this timer's thread ends the read waiting in the other one.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.late = False
        self._stopped = False
        self._lock = threading.Lock()  # a stop and a cut never cross: after stop(), `late` stays what it is
        self._timer = threading.Timer(seconds, self._cut, args=(sock,))
        self._timer.daemon = True
        self._timer.start()

    def _cut(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopped:
                return
            self.late = True
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> bool:
        """Disarm the timer; returns whether it fired."""
        with self._lock:
            self._stopped = True
        self._timer.cancel()
        return self.late


def _headers_in_time(
    connection: urllib3.connection.HTTPConnection, receive: Callable[[], urllib3.response.HTTPResponse]
) -> urllib3.response.HTTPResponse:
    """`receive()`, the connection's getresponse, with every header due within the read timeout (urllib3 sets
    the connection's timeout to it just before). Late headers raise TimeoutError, which urllib3 and requests
    report as a read timeout (requests.exceptions.ReadTimeout)."""
    seconds, sock = connection.timeout, connection.sock
    if not isinstance(seconds, (int, float)) or seconds <= 0 or sock is None:
        return receive()  # no read timeout: nothing to bound the headers by
    late = TimeoutError(f"the response headers did not all arrive within {seconds:g}s")
    deadline = _HeaderDeadline(sock, seconds)
    try:
        response = receive()
    except Exception:
        if deadline.stop():  # the cut is why the read failed
            raise late from None
        raise
    finally:
        deadline.stop()
    if deadline.late:  # the cut ended the headers (an end of stream ends them too): they may be missing some
        response.close()
        raise late
    return response


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]  # as urllib3's own
        return _headers_in_time(self, super().getresponse)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]  # as urllib3's own
        return _headers_in_time(self, super().getresponse)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter on connections whose response headers are bounded in time (_HeaderDeadline), through a
    proxy too; a SOCKS proxy keeps its own connections, bounded by the read timeout alone."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # pools are made as requests go: this is before the first
            manager.pool_classes_by_scheme = _POOLS
        return manager
