"""A real HTTP file server on 127.0.0.1 for download tests, with faults settable per path.

    with serve() as server:
        url = server.add("/a.whl", blob, cut_after=1000)
        download(url, ...)
        assert server.requests("/a.whl")[1].headers["range"] == "bytes=1000-"

Blobs live in memory. Range (206 + Content-Range, 416), ETag / Last-Modified and If-Range are supported, and
every request is recorded with its headers, status and the body bytes actually sent. Each response closes its
connection (HTTP/1.0), so no idle keep-alive thread outlives a test.

Hostile servers too: answers of only part of the file (`piece`, with an honest or a lying Content-Range), 429/503
with Retry-After, bodies that never end (`endless`), trickles (`throttle`), and bodies sent with a
Content-Encoding (the blob is served as given: pass it compressed).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

STALL_SECONDS = 5.0  # longer than any read timeout a test uses; cut short when the server stops
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Route:
    """A blob served at a path, with its faults. Counters make 'once' faults happen only once."""

    body: bytes
    etag: str | None
    status: int = 200  # anything else (404, 403, ...) is answered on every request
    fail_times: int = 0  # the first `fail_times` requests get `fail_status`
    fail_status: int = 500
    retry_after: str | None = None  # a Retry-After header on the `fail_status` answers
    cut_after: int | None = None  # send this many body bytes, then close the connection
    cut_times: int | None = 1  # how many responses are cut; None: every one
    stall_after: int | None = None  # send this many body bytes, then go silent for STALL_SECONDS
    stall_times: int | None = 1
    wrong_bytes: bool = False  # serve other content (same length) than `body`
    ignore_range: bool = False  # always answer 200 with the whole body
    throttle: int | None = None  # bytes per second
    piece: int | None = None  # every answer, even to a plain GET, is a 206 with at most this many bytes
    lie_range: bool = False  # with `piece`: Content-Range claims up to the end, but only `piece` bytes follow
    endless: bool = False  # no Content-Length, and the body repeated until the client leaves
    content_type: str = "application/octet-stream"
    content_encoding: str | None = None  # sent as Content-Encoding; the body is served as given
    last_modified: str | None = LAST_MODIFIED
    hits: int = 0
    cuts: int = 0
    stalls: int = 0

    def served_body(self) -> bytes:
        if not self.wrong_bytes:
            return self.body
        return bytes(b ^ 0xFF for b in self.body[:16]) + self.body[16:]


@dataclass(frozen=True, kw_only=True)
class Record:
    """One request as the server saw it."""

    path: str
    target: str  # the request-target as sent: the absolute URL when the client went through a proxy
    headers: dict[str, str]  # names lower-cased
    status: int
    bytes_sent: int  # body bytes written before the response ended or the connection broke


class FileServer:
    """The server, its thread and its records; use through `serve()`."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.stop = threading.Event()
        self._records: list[Record] = []
        self._active = 0
        self._idle = threading.Condition()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        # A short poll interval: shutdown() waits for the next poll, and every test stops a server.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="test-http-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, *, etag: str | None = None, validators: bool = True, **faults: Any) -> str:
        """Serve `body` at `path` (replacing what was there) and return its URL.

        `etag` defaults to a hash of the body; `validators=False` sends neither ETag nor Last-Modified.
        `faults` are Route fields: status, fail_times, fail_status, retry_after, cut_after, cut_times,
        stall_after, stall_times, wrong_bytes, ignore_range, throttle, piece, lie_range, endless, content_type,
        content_encoding.
        """
        if validators and etag is None:
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        route = Route(body=body, etag=etag if validators else None, **faults)
        if not validators:
            route.last_modified = None
        self.routes[path] = route
        return self.url(path)

    def requests(self, path: str | None = None) -> list[Record]:
        """The requests so far (for `path`, or all), once no request is being answered."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=STALL_SECONDS + 1)
            return [record for record in self._records if path is None or record.path == path]

    def bytes_sent(self, path: str) -> int:
        return sum(record.bytes_sent for record in self.requests(path))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()  # wakes stalled and throttled handlers
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads (daemon_threads is off)
        self._thread.join()

    @contextmanager
    def _answering(self) -> Iterator[None]:
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _record(self, record: Record) -> None:
        with self._idle:
            self._records.append(record)


@contextmanager
def serve() -> Iterator[FileServer]:
    """Start a FileServer in a thread; stop it and join its threads on exit."""
    server = FileServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins every handler: nothing outlives the test
    owner: FileServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = STALL_SECONDS  # a client that connects and never asks cannot hold the server

    def send_response(self, code: int, message: str | None = None) -> None:
        self.status_sent = code  # recorded even when the client goes away while the body is sent
        super().send_response(code, message)

    def do_GET(self) -> None:
        owner = cast(_Server, self.server).owner
        stall = False
        self.status_sent = 0
        with owner._answering():
            status, sent, stall = 0, 0, False
            try:
                status, sent, stall = self._respond(owner)
            except ConnectionError:  # the client went away (killed, timed out, or refusing what it read)
                self.close_connection = True
                status = self.status_sent
            finally:
                headers = {name.lower(): value for name, value in self.headers.items()}
                owner._record(
                    Record(
                        path=urlsplit(self.path).path, target=self.path, headers=headers, status=status, bytes_sent=sent
                    )
                )
        if stall:
            owner.stop.wait(STALL_SECONDS)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output stays about the tests."""

    def _respond(self, owner: FileServer) -> tuple[int, int, bool]:
        """Answer one GET; returns (status, body bytes sent, whether to stall before closing)."""
        route = owner.routes.get(urlsplit(self.path).path)
        if route is None:
            return self._simple(404), 0, False
        with owner._idle:  # counters change under the server's lock: handlers run in parallel
            route.hits += 1
            if route.hits <= route.fail_times:
                retry_after = {"Retry-After": route.retry_after} if route.retry_after is not None else {}
                return self._simple(route.fail_status, retry_after), 0, False
        if route.status != 200:
            return self._simple(route.status), 0, False
        if route.endless:
            return self._endless(owner, route)

        body = route.served_body()
        status, start, end = 200, 0, len(body)
        requested = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if_range = self.headers.get("If-Range")
        fresh = if_range is None or if_range in (route.etag, route.last_modified)
        if requested and fresh and not route.ignore_range:
            start = int(requested.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416, 0, False
            if requested.group(2):
                end = min(int(requested.group(2)) + 1, len(body))
            status = 206
        claimed_end = end
        if route.piece is not None:  # part of the file, whatever was asked
            status, end = 206, min(end, start + route.piece)
            claimed_end = claimed_end if route.lie_range else end
        piece = body[start:end]

        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.content_encoding:
            self.send_header("Content-Encoding", route.content_encoding)
        self.send_header("Content-Length", str(len(piece)))
        self.send_header("Accept-Ranges", "bytes")
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{claimed_end - 1}/{len(body)}")
        self.end_headers()

        limit, stall = len(piece), False
        with owner._idle:
            if route.cut_after is not None and route.cut_after < limit and _more(route.cuts, route.cut_times):
                route.cuts += 1
                limit = route.cut_after
            elif route.stall_after is not None and route.stall_after < limit and _more(route.stalls, route.stall_times):
                route.stalls += 1
                limit, stall = route.stall_after, True
        sent = 0
        step = max(1, route.throttle // 20) if route.throttle else 1 << 16
        while sent < limit and not owner.stop.is_set():
            chunk = piece[sent : min(sent + step, limit)]
            self.wfile.write(chunk)
            sent += len(chunk)
            if route.throttle:
                owner.stop.wait(len(chunk) / route.throttle)
        if limit < len(piece):
            self.close_connection = True
        return status, sent, stall

    def _endless(self, owner: FileServer, route: Route) -> tuple[int, int, bool]:
        """200 without Content-Length, the body over and over until the client hangs up or the server stops."""
        self.send_response(200)
        self.send_header("Content-Type", route.content_type)
        if route.content_encoding:
            self.send_header("Content-Encoding", route.content_encoding)
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            while not owner.stop.is_set():
                self.wfile.write(route.body)
                sent += len(route.body)
        except ConnectionError:  # the client gave up: what this fault is for
            pass
        return 200, sent, False

    def _simple(self, status: int, headers: dict[str, str] | None = None) -> int:
        text = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(text)
        return status


def _more(done: int, allowed: int | None) -> bool:
    return allowed is None or done < allowed
