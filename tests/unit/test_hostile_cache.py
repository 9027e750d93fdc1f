"""A hostile review of the cache and of downloads: links planted at the cache's directories and locks, notes
nested past the JSON parser's depth, mirror passwords on disk, 206 answers without a total, headers sent a byte at
a time. Real files in tmp_path, real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from modelarts_images.errors import FetchError
from modelarts_images.fetch.cache import Cache
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.http.download import download
from modelarts_images.http.pages import get_text
from modelarts_images.http.session import new_session
from tests.support.http_server import FileServer, serve
from tests.unit.test_download import FAST
from tests.unit.test_hostile_input import entry, options

INSTALLER = b"#!/bin/bash\necho stand-in installer\n"
SHA = hashlib.sha256(INSTALLER).hexdigest()
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than json.loads goes: RecursionError, not ValueError


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # download() keeps requests' trust_env; a proxy set in the environment must not capture loopback.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve() as running:
        yield running


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


@contextmanager
def loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on 127.0.0.1 answering with `handler`; its base URL. Every handler thread is joined on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = False
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# --------------------------------------------------------------------------------------------------------------
# 1. Every directory of the cache is a real one


def plant_directory_link(cache: Cache, where: str, outside: Path) -> Path:
    """Replace the cache's `where` by a link to `outside`, which holds what a fetch would then find through it."""
    cache.prepare()
    planted = cache.root / where
    blobs = outside / "sha256" if where == "blobs" else outside
    blobs.mkdir(parents=True)
    (blobs / SHA).write_bytes(b"a file outside the cache, named like the blob")  # has() would delete it
    for path in sorted(planted.rglob("*"), reverse=True):
        path.rmdir()
    planted.rmdir()
    planted.symlink_to(outside, target_is_directory=True)
    return planted


@pytest.mark.parametrize(("where", "pinned"), [("blobs/sha256", True), ("blobs", True), ("incoming", False)])
def test_a_cache_directory_replaced_by_a_link_is_refused_and_nothing_outside_changes(
    tmp_path: Path, server: FileServer, where: str, pinned: bool
) -> None:
    outside = tmp_path / "outside"
    planted = plant_directory_link(Cache(tmp_path / "cache"), where, outside)
    before = snapshot(outside)
    url = server.add("/files/a.sh", INSTALLER)

    with pytest.raises(FetchError) as caught:
        fetch_images([entry(url, sha256=SHA if pinned else None)], options(tmp_path))

    assert str(caught.value).startswith(f"cache: {planted} is a symbolic link (to {outside}), where the cache "
                                        "keeps a directory of its own")
    assert caught.value.exit_code == 3
    assert snapshot(outside) == before
    assert server.requests() == []


def test_has_never_deletes_through_a_linked_blob_directory(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    outside = tmp_path / "outside"
    plant_directory_link(cache, "blobs/sha256", outside)
    with pytest.raises(FetchError, match="is a symbolic link"):
        cache.has(SHA)
    assert (outside / SHA).exists()


def test_a_file_where_the_cache_keeps_a_directory_is_a_clear_fetch_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.root.mkdir()
    (cache.root / "incoming").write_text("not a directory")
    with pytest.raises(FetchError, match=rf"^cache: {re.escape(str(cache.incoming))} is not a directory, where the "
                                         r"cache keeps one; remove it"):
        fetch_images([entry("https://h.example/a.sh")], options(tmp_path))


def test_a_cache_root_that_is_a_link_is_the_users_choice_and_works(tmp_path: Path, server: FileServer) -> None:
    (tmp_path / "big-disk").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "big-disk", target_is_directory=True)
    url = server.add("/files/a.sh", INSTALLER)
    fetched, _ = fetch_images([entry(url, sha256=SHA)], options(tmp_path))
    assert fetched[0].installer.path.read_bytes() == INSTALLER
    assert (tmp_path / "big-disk" / "blobs" / "sha256" / SHA).read_bytes() == INSTALLER


# --------------------------------------------------------------------------------------------------------------
# 2. Locks that are not the cache's own files are clear fetch errors


def test_a_link_at_the_record_lock_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.blobs / SHA).write_bytes(INSTALLER)
    lock = cache.root / "verified.lock"
    lock.symlink_to(victim)
    with pytest.raises(FetchError) as caught:
        cache.has(SHA)
    assert str(caught.value) == (f"cache: {lock} is a symbolic link where the cache keeps a lock file: a link "
                                 "planted in the cache is never followed; remove it")
    assert caught.value.exit_code == 3
    assert victim.read_text() == "keep me"


def test_a_link_at_an_adopting_lock_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    lock = cache.incoming / "a.sh.adopting"
    lock.symlink_to(victim)
    with pytest.raises(FetchError, match=rf"^cache: {re.escape(str(lock))} is a symbolic link"), \
            cache.exclusive("a.sh"):
        pass
    assert victim.read_text() == "keep me"


def test_a_link_at_the_versions_lock_guard_is_a_fetch_error_naming_it(tmp_path: Path, server: FileServer) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    guard = tmp_path / "cache" / "versions-lock.flock"
    guard.parent.mkdir()
    guard.symlink_to(victim)
    url = server.add("/files/a.sh", INSTALLER)
    with pytest.raises(FetchError, match=rf"^cache: {re.escape(str(guard))} is a symbolic link where the cache "
                                         r"keeps a lock file"):
        fetch_images([entry(url)], options(tmp_path))
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "versions.lock").exists()


@pytest.mark.parametrize("kind", ["pipe", "directory"])
def test_a_lock_that_is_not_a_regular_file_is_a_fetch_error_naming_it(tmp_path: Path, kind: str) -> None:
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.blobs / SHA).write_bytes(INSTALLER)
    lock = cache.root / "verified.lock"
    if kind == "pipe":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(FetchError, match=rf"^cache: {re.escape(str(lock))} is not a regular file, where the cache "
                                         r"keeps a lock file"):
        cache.has(SHA)


# --------------------------------------------------------------------------------------------------------------
# 3. Notes nested past the parser's depth are corrupt notes


def test_a_record_nested_too_deep_is_read_as_corrupt_and_the_blob_hashed_again(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.prepare()
    (cache.blobs / SHA).write_bytes(INSTALLER)
    (cache.root / "verified.json").write_text(DEEP)
    assert cache.has(SHA)
    assert json.loads((cache.root / "verified.json").read_text())[SHA][0] == len(INSTALLER)


def test_a_part_meta_nested_too_deep_drops_the_partial(tmp_path: Path, server: FileServer) -> None:
    data = os.urandom(3000)
    url = server.add("/files/deep.whl", data)
    target = tmp_path / "deep.whl"
    target.with_name("deep.whl.part").write_bytes(os.urandom(1000))  # of no known version: must not be continued
    target.with_name("deep.whl.part.meta").write_text(DEEP)

    result = download(url, target, expected_sha256=None, **FAST)

    assert target.read_bytes() == data and (result.resumed_from, result.size) == (0, len(data))
    assert [r.headers.get("range") for r in server.requests("/files/deep.whl")] == [None]


# --------------------------------------------------------------------------------------------------------------
# 4. A mirror's password never reaches the disk


def test_a_mirror_password_is_not_written_to_disk_and_the_resume_still_works(tmp_path: Path,
                                                                             server: FileServer) -> None:
    data = os.urandom(4000)
    plain = server.add("/files/m.whl", data, cut_after=1000)
    mirror = plain.replace("http://", "http://mirror-user:s3cret-pw@")
    target = tmp_path / "m.whl"

    with pytest.raises(FetchError):  # cut, no retry: the partial stays for the next run
        download(mirror, target, expected_sha256=None, retries=0, **FAST)
    on_disk = snapshot(tmp_path)
    assert not any(b"s3cret-pw" in content for content in on_disk.values())
    assert json.loads(on_disk["m.whl.part.meta"])["url"] == plain

    result = download(mirror, target, expected_sha256=hashlib.sha256(data).hexdigest(), **FAST)

    assert target.read_bytes() == data and result.resumed_from == 1000
    resumed = server.requests("/files/m.whl")[1]
    assert resumed.headers["range"] == "bytes=1000-"
    assert resumed.headers["if-range"] == server.routes["/files/m.whl"].etag
    assert resumed.headers["authorization"].startswith("Basic ")  # the credentials were still used


# --------------------------------------------------------------------------------------------------------------
# 5. A 206 without a total is not the whole file


def unknown_total(body: bytes, *, piece: int, names_size: bool) -> tuple[type[BaseHTTPRequestHandler], list[str]]:
    """Answers every GET with a 206 of at most `piece` bytes from where it asks, as 'bytes a-b/*'; past the end a
    416, naming the size when `names_size`. Returns the handler and the Range headers it saw ('' for none)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            asked = self.headers.get("Range", "")
            seen.append(asked)
            start = int(asked.removeprefix("bytes=").removesuffix("-") or 0)
            if start >= len(body):
                self.send_response(416)
                if names_size:
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            chunk = body[start:start + piece]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/*")
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(chunk)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    return Handler, seen


def test_a_206_of_unknown_total_to_a_plain_get_is_continued_until_a_416_names_the_size(tmp_path: Path) -> None:
    data = os.urandom(1000)
    handler, seen = unknown_total(data, piece=500, names_size=True)
    with loopback(handler) as base:
        result = download(f"{base}/u.sh", tmp_path / "u.sh", expected_sha256=None, **FAST)
    assert (tmp_path / "u.sh").read_bytes() == data  # not the first 500 bytes, which would be pinned
    assert (result.size, result.sha256) == (1000, hashlib.sha256(data).hexdigest())
    assert seen == ["", "bytes=500-", "bytes=1000-"]


def test_a_server_that_never_names_the_size_is_refused_and_nothing_is_pinned(tmp_path: Path) -> None:
    handler, _ = unknown_total(os.urandom(1000), piece=500, names_size=False)
    with loopback(handler) as base, pytest.raises(FetchError) as caught:
        download(f"{base}/u.sh", tmp_path / "u.sh", expected_sha256=None, retries=3, **FAST)
    assert "the server never said where the file ends" in str(caught.value)
    assert caught.value.exit_code == 3
    assert not (tmp_path / "u.sh").exists()


def test_a_pinned_206_of_unknown_total_ends_when_its_sha256_matches(tmp_path: Path) -> None:
    data = os.urandom(1000)
    handler, seen = unknown_total(data, piece=500, names_size=False)
    with loopback(handler) as base:
        download(f"{base}/p.sh", tmp_path / "p.sh", expected_sha256=hashlib.sha256(data).hexdigest(),
                 **FAST)
    assert (tmp_path / "p.sh").read_bytes() == data
    assert seen == ["", "bytes=500-"]  # no request past the end: the sha256 proved it whole


def test_fetch_pins_the_whole_file_from_a_server_of_unknown_totals(tmp_path: Path) -> None:
    data = os.urandom(1000)
    handler, _ = unknown_total(data, piece=500, names_size=True)
    with loopback(handler) as base:
        fetched, _ = fetch_images([entry(f"{base}/files/a.sh")], options(tmp_path))
    assert fetched[0].installer.sha256 == hashlib.sha256(data).hexdigest()
    locked = yaml.safe_load((tmp_path / "versions.lock").read_text())["images"]["cell"]["installer"]
    assert (locked["sha256"], locked["size"]) == (hashlib.sha256(data).hexdigest(), 1000)


# --------------------------------------------------------------------------------------------------------------
# 6. Response headers have a deadline


def dribbling(stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    """Sends a status line, then a header a byte every 0.3 s (far inside any read timeout), for 6 s at most."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            ends = time.monotonic() + 6  # a bound on the test even where the client never gives up
            try:
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                while not stop.wait(0.3) and time.monotonic() < ends:
                    self.wfile.write(b"x")
            except OSError:  # the client gave up: what the test wants
                pass

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    return Handler


@contextmanager
def dribbling_server() -> Iterator[str]:
    stop = threading.Event()
    with loopback(dribbling(stop)) as base:
        try:
            yield base
        finally:
            stop.set()


def timed(action: Callable[[], object]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        action()
    return caught.value, time.monotonic() - started


def test_a_download_whose_headers_dribble_in_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    with dribbling_server() as base:
        url = f"{base}/slow.whl"
        error, seconds = timed(lambda: download(url, tmp_path / "slow.whl", expected_sha256=None, retries=1,
                                                backoff=0.01, connect_timeout=1, read_timeout=1))
    assert str(error) == f"download failed after 2 attempts: {url}: no complete response headers within 1s"
    assert seconds < 4
    assert not (tmp_path / "slow.whl").exists()


def test_an_index_page_whose_headers_dribble_in_is_cut_at_the_read_timeout() -> None:
    with dribbling_server() as base, new_session() as session:
        url = f"{base}/simple/torch/"
        error, seconds = timed(lambda: get_text(url, session=session, retries=0, timeouts=(1, 1)))
    assert str(error) == f"cannot read {url} after 1 attempts: no complete response headers within 1s"
    assert seconds < 3


def test_the_header_deadline_leaves_a_slow_body_alone(tmp_path: Path, server: FileServer) -> None:
    data = os.urandom(3000)
    url = server.add("/files/slow-body.whl", data, throttle=2000)  # 1.5 s of body, past the 1 s read timeout
    with new_session() as session:
        for name in ("a", "b"):  # one session, as fetch uses it: each request's deadline is its own
            result = download(url, tmp_path / name, expected_sha256=None, session=session, retries=0, backoff=0.01,
                              connect_timeout=1, read_timeout=1, min_speed=1)
            assert (result.attempts, result.size) == (1, len(data))
