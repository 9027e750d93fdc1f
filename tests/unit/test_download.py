"""download() against a real HTTP server on loopback, with injected faults; nothing of requests is mocked."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict, TypeVar

import pytest

from modelarts_images.errors import FetchError
from modelarts_images.http.download import AbortedError, Transfer, download
from modelarts_images.shared import retry
from tests.support.http_server import FileServer

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


class Timing(TypedDict):
    backoff: float
    connect_timeout: float
    read_timeout: float


class Bounds(TypedDict, total=False):
    expected_size: int
    max_size: int


FAST: Timing = {"backoff": 0.01, "connect_timeout": 2.0, "read_timeout": 2.0}  # a failing test fails fast


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Files beside the target other than the lock file, which is kept on purpose."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def write_partial(target: Path, data: bytes, *, url: str | None = None, validator: str | None = None) -> None:
    """What an earlier, killed run leaves: the partial and (when it saw one) the sidecar with the validator."""
    target.with_name(target.name + ".part").write_bytes(data)
    if url is not None:
        meta = {"url": url, "validator": validator}
        target.with_name(target.name + ".part.meta").write_text(json.dumps(meta), encoding="utf-8")


def test_download_with_expected_hash(server: FileServer, tmp_path: Path) -> None:
    data = blob(3 * MB)
    url = server.add("/torch.whl", data)
    target = tmp_path / "torch.whl"

    result = download(url, target, expected_sha256=sha(data).upper(), **FAST)

    assert result == Transfer(
        url=url, path=target, sha256=sha(data), size=len(data), bytes_transferred=len(data), resumed_from=0, attempts=1
    )
    assert target.read_bytes() == data
    assert leftovers(tmp_path) == ["torch.whl"]
    [request] = server.requests("/torch.whl")
    assert "range" not in request.headers
    assert request.headers["accept-encoding"] == "identity"


def test_download_without_expected_hash_returns_the_computed_one(server: FileServer, tmp_path: Path) -> None:
    data = blob(100_000)
    url = server.add("/a.sh", data)

    result = download(url, tmp_path / "sub" / "a.sh", expected_sha256=None, **FAST)

    assert result.sha256 == sha(data)
    assert (tmp_path / "sub" / "a.sh").read_bytes() == data


def test_cut_mid_body_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    data = blob(3 * MB)
    url = server.add("/w.whl", data, cut_after=MB + 12345)

    result = download(url, tmp_path / "w.whl", expected_sha256=sha(data), **FAST)

    assert result.attempts == 2
    assert (tmp_path / "w.whl").read_bytes() == data
    first, second = server.requests("/w.whl")
    assert first.bytes_sent == MB + 12345
    assert second.headers["range"] == f"bytes={MB + 12345}-"
    assert second.headers["if-range"] == server.routes["/w.whl"].etag
    assert second.status == 206
    assert result.bytes_transferred + result.resumed_from == len(data)
    assert server.bytes_sent("/w.whl") == len(data)  # the resumed part only, not the file twice


def test_server_errors_are_retried(server: FileServer, tmp_path: Path) -> None:
    data = blob(10_000)
    url = server.add("/a", data, fail_times=2, fail_status=500)

    result = download(url, tmp_path / "a", expected_sha256=sha(data), **FAST)

    assert result.attempts == 3
    assert [r.status for r in server.requests("/a")] == [500, 500, 200]


def test_not_found_fails_at_once(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/missing.whl")

    with pytest.raises(FetchError, match="HTTP 404 Not Found for") as caught:
        download(url, tmp_path / "missing.whl", expected_sha256=None, **FAST)

    assert url in str(caught.value)
    assert caught.value.exit_code == 3
    assert len(server.requests()) == 1
    assert leftovers(tmp_path) == []


def test_wrong_bytes_leave_nothing_behind(server: FileServer, tmp_path: Path) -> None:
    data = blob(200_000)
    url = server.add("/a.whl", data, wrong_bytes=True)
    served = server.routes["/a.whl"].served_body()

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "a.whl", expected_sha256=sha(data), **FAST)

    assert str(caught.value) == f"sha256 mismatch for {url}: expected {sha(data)}, got {sha(served)}"
    assert leftovers(tmp_path) == []


def test_stalled_transfer_times_out_and_resumes(server: FileServer, tmp_path: Path) -> None:
    data = blob(MB)
    url = server.add("/s", data, stall_after=300_000)

    result = download(url, tmp_path / "s", expected_sha256=sha(data), backoff=0.01, read_timeout=0.5)

    assert result.attempts == 2
    assert (tmp_path / "s").read_bytes() == data
    assert server.requests("/s")[1].headers["range"] == "bytes=300000-"


def test_stalling_every_time_fails_after_the_retries(server: FileServer, tmp_path: Path) -> None:
    data = blob(100_000)
    url = server.add("/s", data, stall_after=1000, stall_times=None)

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "s", expected_sha256=sha(data), retries=1, backoff=0.01, read_timeout=0.3)

    assert str(caught.value).startswith(f"download failed after 2 attempts: {url}: stalled: no data for 0.3s")
    assert leftovers(tmp_path) == ["s.part", "s.part.meta"]  # kept for the next run to resume


def test_server_ignoring_range_starts_over(server: FileServer, tmp_path: Path) -> None:
    data = blob(500_000)
    url = server.add("/r", data, ignore_range=True)
    write_partial(tmp_path / "r", data[:100_000], url=url, validator=server.routes["/r"].etag)

    result = download(url, tmp_path / "r", expected_sha256=sha(data), **FAST)

    assert (tmp_path / "r").read_bytes() == data
    assert result.resumed_from == 0
    assert result.bytes_transferred == len(data)
    [request] = server.requests("/r")
    assert request.headers["range"] == "bytes=100000-"
    assert request.status == 200


def test_partial_from_a_killed_run_is_resumed(server: FileServer, tmp_path: Path) -> None:
    data = blob(MB)
    url = server.add("/k", data)
    write_partial(tmp_path / "k", data[:400_000], url=url, validator=server.routes["/k"].etag)

    result = download(url, tmp_path / "k", expected_sha256=sha(data), **FAST)

    assert (result.resumed_from, result.bytes_transferred, result.attempts) == (400_000, len(data) - 400_000, 1)
    assert server.bytes_sent("/k") == len(data) - 400_000
    assert leftovers(tmp_path) == ["k"]


def test_partial_of_another_remote_version_is_not_spliced(server: FileServer, tmp_path: Path) -> None:
    old, new = blob(300_000, seed=1), blob(300_000, seed=2)
    url = server.add("/v", new, etag='"v2"')
    write_partial(tmp_path / "v", old[:100_000], url=url, validator='"v1"')

    result = download(url, tmp_path / "v", expected_sha256=sha(new), **FAST)

    assert (tmp_path / "v").read_bytes() == new
    assert result.resumed_from == 0
    [request] = server.requests("/v")
    assert request.headers["if-range"] == '"v1"'
    assert request.status == 200


def test_partial_without_validator_that_fails_the_hash_is_downloaded_again(server: FileServer, tmp_path: Path) -> None:
    old, new = blob(300_000, seed=1), blob(300_000, seed=2)
    url = server.add("/n", new, validators=False)
    write_partial(tmp_path / "n", old[:100_000])  # no sidecar: nothing to guard the resume

    result = download(url, tmp_path / "n", expected_sha256=sha(new), **FAST)

    assert (tmp_path / "n").read_bytes() == new
    assert result.resumed_from == 0
    first, second = server.requests("/n")
    assert (first.status, second.status) == (206, 200)
    assert "range" not in second.headers


def test_partial_longer_than_the_file_starts_over(server: FileServer, tmp_path: Path) -> None:
    data = blob(50_000)
    url = server.add("/l", data)
    write_partial(tmp_path / "l", blob(60_000, seed=3), url=url, validator=server.routes["/l"].etag)

    result = download(url, tmp_path / "l", expected_sha256=sha(data), **FAST)

    assert (tmp_path / "l").read_bytes() == data
    assert result.attempts == 1
    assert [r.status for r in server.requests("/l")] == [416, 200]


def test_retries_exhausted_names_url_and_last_cause(server: FileServer, tmp_path: Path) -> None:
    data = blob(65_536)
    url = server.add("/c", data, cut_after=1024, cut_times=None)

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "c", expected_sha256=sha(data), retries=2, **FAST)

    assert str(caught.value) == f"download failed after 3 attempts: {url}: connection cut after 3072 of 65536 bytes"
    assert not (tmp_path / "c").exists()


def test_connection_refused_is_retried_once_then_reported(tmp_path: Path, waits: list[float]) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"

    with pytest.raises(FetchError) as caught:  # four retries allowed; a refusal is worth one (http/failures.py)
        download(url, tmp_path / "x", expected_sha256=None, retries=4, **FAST)

    assert str(caught.value).startswith(f"download failed after 2 attempts: {url}: 127.0.0.1:{port} refused the "
                                        "connection (nothing listens on that port, or a firewall rejects it): ")
    assert waits == [FAST["backoff"]]


def test_existing_final_file_is_reused_when_its_hash_matches(server: FileServer, tmp_path: Path) -> None:
    data = blob(10_000)
    url = server.add("/e", data)
    (tmp_path / "e").write_bytes(data)

    result = download(url, tmp_path / "e", expected_sha256=sha(data), **FAST)

    assert (result.bytes_transferred, result.attempts, result.sha256) == (0, 0, sha(data))
    assert server.requests() == []


def test_existing_final_file_with_another_hash_is_replaced(server: FileServer, tmp_path: Path) -> None:
    data = blob(10_000)
    url = server.add("/e", data)
    (tmp_path / "e").write_bytes(b"stale")

    result = download(url, tmp_path / "e", expected_sha256=sha(data), **FAST)

    assert result.bytes_transferred == len(data)
    assert (tmp_path / "e").read_bytes() == data


def test_proxy_from_the_environment_is_used(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(10_000)
    server.add("/via-proxy.whl", data)
    monkeypatch.setenv("http_proxy", server.url(""))  # the test server answers proxy requests too
    url = "http://files.example.invalid/via-proxy.whl"

    download(url, tmp_path / "p.whl", expected_sha256=sha(data), **FAST)

    [request] = server.requests("/via-proxy.whl")
    assert request.target == url  # a proxy request carries the absolute URL


def test_progress_is_throttled_and_ends_complete(server: FileServer, tmp_path: Path) -> None:
    data = blob(MB)
    url = server.add("/p", data)
    calls: list[tuple[str, int, int | None]] = []

    download(url, tmp_path / "p", expected_sha256=None, chunk_size=1024, progress=lambda *c: calls.append(c), **FAST)

    assert calls[-1] == (url, len(data), len(data))
    assert len(calls) < 50  # 1024 chunks, far fewer callbacks
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_file_url_with_percent_escapes(tmp_path: Path) -> None:
    data = blob(70_000)
    source = tmp_path / "src" / "torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl"
    source.parent.mkdir()
    source.write_bytes(data)
    url = source.as_uri()
    assert "%2B" in url

    result = download(url, tmp_path / "out" / source.name, expected_sha256=sha(data))

    assert (result.sha256, result.size, result.attempts) == (sha(data), len(data), 1)
    assert (tmp_path / "out" / source.name).read_bytes() == data


def test_file_url_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sh"

    with pytest.raises(FetchError, match=f"local file not found: {missing}"):
        download(missing.as_uri(), tmp_path / "out.sh", expected_sha256=None)

    assert leftovers(tmp_path) == []


def test_file_url_with_wrong_hash(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"hello")

    with pytest.raises(FetchError, match=f"expected {'0' * 64}, got {sha(b'hello')}"):
        download((tmp_path / "src").as_uri(), tmp_path / "dst", expected_sha256="0" * 64)

    assert leftovers(tmp_path) == ["src"]


def test_two_threads_downloading_one_target(server: FileServer, tmp_path: Path) -> None:
    data = blob(300_000)
    url = server.add("/t", data, throttle=1_000_000)
    target = tmp_path / "t"

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: download(url, target, expected_sha256=sha(data), **FAST), range(2)))

    assert target.read_bytes() == data
    assert sorted(r.bytes_transferred for r in results) == [0, len(data)]
    assert server.bytes_sent("/t") == len(data)


CHILD = """
import json, sys
from pathlib import Path
from modelarts_images.http.download import download
t = download(sys.argv[1], Path(sys.argv[2]), expected_sha256=sys.argv[3], backoff=0.01, read_timeout=5)
print(json.dumps({"bytes_transferred": t.bytes_transferred, "sha256": t.sha256}))
"""


def child(url: str, target: Path, expected: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(target), expected], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_downloading_one_target(server: FileServer, tmp_path: Path) -> None:
    data = blob(400_000)
    url = server.add("/proc", data, throttle=800_000)  # ~0.5 s: long enough for the two to overlap
    target = tmp_path / "proc"

    children = [child(url, target, sha(data)) for _ in range(2)]
    outputs = [json.loads(c.communicate(timeout=20)[0]) for c in children]

    assert [c.returncode for c in children] == [0, 0]
    assert target.read_bytes() == data
    assert sorted(o["bytes_transferred"] for o in outputs) == [0, len(data)]
    assert server.bytes_sent("/proc") == len(data)


def test_killed_download_leaves_a_partial_that_the_next_run_resumes(server: FileServer, tmp_path: Path) -> None:
    data = blob(400_000)
    url = server.add("/kill", data, throttle=200_000)  # 2 s in full: the kill lands mid-transfer
    target = tmp_path / "kill"
    part = tmp_path / "kill.part"

    process = child(url, target, sha(data))
    deadline = time.monotonic() + 10
    while (not part.exists() or part.stat().st_size < 50_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)  # reaps it and closes its stdout pipe

    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert not target.exists()
    assert leftovers(tmp_path) == ["kill.part", "kill.part.meta"]

    server.routes["/kill"].throttle = None
    result = download(url, target, expected_sha256=sha(data), **FAST)

    assert target.read_bytes() == data
    assert (result.resumed_from, result.bytes_transferred) == (kept, len(data) - kept)
    [resumed] = [r for r in server.requests("/kill") if r.status == 206]
    assert resumed.headers["range"] == f"bytes={kept}-"


# --------------------------------------------------------------------------------------------------------------
# Credentials in URLs, bodies cut while read as text, aborts


def with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@", 1)


@pytest.mark.parametrize(("userinfo", "masked"), [("mirror-user:s3cret-pw", "mirror-user:***@"), ("s3cret-pw", "***@")])
def test_credentials_in_the_url_reach_no_message_or_log(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, userinfo: str, masked: str
) -> None:
    url = with_userinfo(server.add("/busy.whl", b"x", fail_times=100, fail_status=503), userinfo)

    with caplog.at_level("INFO", logger="modelarts_images.http.download"), pytest.raises(FetchError) as caught:
        download(url, tmp_path / "busy.whl", expected_sha256=None, retries=1, **FAST)

    assert f"http://{masked}127.0.0.1:{server.port}/busy.whl" in str(caught.value)
    assert "retrying" in caplog.text and masked in caplog.text
    assert "s3cret" not in str(caught.value) + caplog.text


def test_credentials_are_masked_in_every_kind_of_failure(server: FileServer, tmp_path: Path) -> None:
    missing = with_userinfo(server.url("/missing.whl"), "u:s3cret-pw")
    data = blob(1000)
    wrong = with_userinfo(server.add("/wrong.whl", data), "u:s3cret-pw")
    messages = []
    for url, expected in ((missing, None), (wrong, "0" * 64), ("u:s3cret-pw@127.0.0.1/no-scheme.whl", None)):
        with pytest.raises(FetchError) as caught:
            download(url, tmp_path / "f.whl", expected_sha256=expected, **FAST)
        messages.append(str(caught.value))

    assert ["HTTP 404" in messages[0], "sha256 mismatch" in messages[1], "cannot download" in messages[2]] == [True] * 3
    assert all("u:***@" in message and "s3cret" not in message for message in messages), messages


def test_abort_stops_a_running_download_and_keeps_its_partial(server: FileServer, tmp_path: Path) -> None:
    data = blob(2 * MB)
    url = server.add("/slow.whl", data, throttle=500_000)  # 4 s in full
    part = tmp_path / "slow.whl.part"
    abort = threading.Event()

    def stop_when_started() -> None:
        deadline = time.monotonic() + 10
        while (not part.exists() or part.stat().st_size < 50_000) and time.monotonic() < deadline:
            time.sleep(0.02)
        abort.set()

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(AbortedError, match="stopped before the end"):
        download(url, tmp_path / "slow.whl", expected_sha256=sha(data), abort=abort, **FAST)
    stopper.join()

    assert time.monotonic() - started < 2.5
    assert 0 < part.stat().st_size < len(data)  # kept for the next run to resume
    assert not (tmp_path / "slow.whl").exists()


# --------------------------------------------------------------------------------------------------------------
# Hostile servers: partial answers, trickles, endless bodies, rate limits; files the kernel makes up


def test_a_206_with_part_of_the_file_to_a_plain_get_is_continued(server: FileServer, tmp_path: Path) -> None:
    data = blob(1200)
    url = server.add("/half.sh", data, piece=500)

    # No sha256 (trust on first use): only a complete file may be pinned.
    result = download(url, tmp_path / "half.sh", expected_sha256=None, **FAST)

    assert (tmp_path / "half.sh").read_bytes() == data
    assert (result.size, result.sha256, result.attempts, result.bytes_transferred) == (1200, sha(data), 3, 1200)
    requests_made = server.requests("/half.sh")
    assert [r.headers.get("range") for r in requests_made] == [None, "bytes=500-", "bytes=1000-"]
    assert [r.status for r in requests_made] == [206, 206, 206]
    assert server.bytes_sent("/half.sh") == len(data)


def test_a_206_carrying_less_than_its_content_range_says_is_resumed(server: FileServer, tmp_path: Path) -> None:
    data = blob(1200)
    url = server.add("/liar.sh", data, piece=500, lie_range=True)  # 'bytes 0-1199/1200' with 500 bytes in it

    result = download(url, tmp_path / "liar.sh", expected_sha256=None, **FAST)

    assert (tmp_path / "liar.sh").read_bytes() == data
    assert (result.size, result.attempts) == (1200, 3)


def test_a_server_that_never_sends_the_whole_file_is_a_fetch_error(server: FileServer, tmp_path: Path) -> None:
    data = blob(5000)
    url = server.add("/never.sh", data, piece=500)

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "never.sh", expected_sha256=None, retries=1, **FAST)

    assert str(caught.value) == (f"download failed after 2 attempts: {url}: the server never sent the whole file: "
                                 "1000 of its 5000 bytes arrived (its last answer: bytes 500-999)")
    assert caught.value.exit_code == 3
    assert leftovers(tmp_path) == ["never.sh.part", "never.sh.part.meta"]  # no final file; kept for a resume


def test_a_trickle_is_cut_for_being_too_slow_then_resumed(server: FileServer, tmp_path: Path) -> None:
    data = blob(60)
    url = server.add("/trickle.whl", data, throttle=10)  # a byte every 0.1 s: no read ever times out

    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "trickle.whl", expected_sha256=sha(data), retries=1, min_speed=100,
                 speed_window=0.3, **FAST)

    assert time.monotonic() - started < 3
    assert re.fullmatch(rf"download failed after 2 attempts: {re.escape(url)}: too slow: \d+ bytes in 0.3 s, below "
                        r"the minimum of 100 bytes/s \(min_speed in invoke.yaml\)", str(caught.value))
    first, second = server.requests("/trickle.whl")
    assert "range" not in first.headers
    assert int(second.headers["range"].removeprefix("bytes=").removesuffix("-")) > 0  # resumed, not restarted
    assert 0 < (tmp_path / "trickle.whl.part").stat().st_size < len(data)


def test_a_transfer_above_the_minimum_speed_is_not_cut(server: FileServer, tmp_path: Path) -> None:
    data = blob(40_000)
    url = server.add("/steady.whl", data, throttle=40_000)  # 1 s in full, 2000 bytes every 0.05 s

    result = download(url, tmp_path / "steady.whl", expected_sha256=sha(data), min_speed=2_000, speed_window=0.5,
                      **FAST)

    assert result.attempts == 1 and (tmp_path / "steady.whl").read_bytes() == data


@pytest.mark.parametrize(("bounds", "message"), [
    ({"max_size": 50_000}, "is larger than max_file_size in invoke.yaml (50000 bytes, 50.0 KB; the server announces "
                           "100000 bytes): if the file really is that large, raise max_file_size"),
    ({"expected_size": 50_000}, "is larger than the 50000 bytes versions.lock records (the server announces 100000 "
                                "bytes)"),
], ids=["max_file_size", "versions.lock"])
def test_an_announced_size_above_the_bound_is_refused_at_once(
    server: FileServer, tmp_path: Path, bounds: Bounds, message: str
) -> None:
    data = blob(100_000)
    url = server.add("/big.whl", data, throttle=100_000)  # 1 s in full: refusing must not wait for the body

    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "big.whl", expected_sha256=None, **bounds, **FAST)

    assert time.monotonic() - started < 0.8
    assert str(caught.value).startswith(f"{url} {message}")
    assert caught.value.exit_code == 3
    assert len(server.requests("/big.whl")) == 1  # not retried: the file will not shrink
    assert leftovers(tmp_path) == []


def test_a_resumed_range_whose_total_is_above_the_bound_is_refused(server: FileServer, tmp_path: Path) -> None:
    data = blob(100_000)
    url = server.add("/grown.whl", data)
    write_partial(tmp_path / "grown.whl", data[:10_000], url=url, validator=server.routes["/grown.whl"].etag)

    with pytest.raises(FetchError, match=r"larger than the 60000 bytes versions.lock records \(the server announces "
                                         r"100000 bytes\)"):
        download(url, tmp_path / "grown.whl", expected_sha256=None, expected_size=60_000, **FAST)

    assert [r.status for r in server.requests("/grown.whl")] == [206]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bounds", [{"max_size": 300_000}, {"expected_size": 300_000}],
                         ids=["max_file_size", "versions.lock"])
def test_an_endless_body_stops_at_the_bound(server: FileServer, tmp_path: Path, bounds: Bounds) -> None:
    url = server.add("/endless.whl", blob(64 * 1024), endless=True)  # no Content-Length, never ends

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "endless.whl", expected_sha256=None, **bounds, **FAST)

    assert str(caught.value).startswith(f"{url} is larger than ")
    assert "300000 bytes" in str(caught.value) and "the server kept sending past it" in str(caught.value)
    assert leftovers(tmp_path) == []  # nothing of it stays on disk


def test_file_url_larger_than_the_recorded_size_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src.whl"
    source.write_bytes(blob(10_000))

    with pytest.raises(FetchError, match=r"is larger than the 9999 bytes versions.lock records \(the file has 10000 "
                                         r"bytes\)"):
        download(source.as_uri(), tmp_path / "out" / "dst.whl", expected_sha256=None, expected_size=9999)

    assert leftovers(tmp_path / "out") == []


def finishes_within(seconds: float, action: Callable[[], object], release: Callable[[], None]) -> BaseException | None:
    """Run `action` in a thread; what it raised (None: returned). If it is still running after `seconds`, call
    `release` to unblock it and fail: a hang must fail the test, not hold the suite."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as error:  # handed to the test, which asserts on it
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        release()
        worker.join(5)
        pytest.fail(f"still running after {seconds}s")
    return outcome[0]


def release_fifo(path: Path) -> None:
    """Open the FIFO for writing and close it: a reader blocked in open() then reads its end."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("kind", ["/proc/self/environ", "a link to /proc/self/environ", "/dev/null", "a directory",
                                  "a named pipe"])
def test_file_url_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("SOME_TOKEN", "s3cret-in-the-environment")
    path = {"/proc/self/environ": Path("/proc/self/environ"), "/dev/null": Path("/dev/null")}.get(kind)
    if path is None:
        path = tmp_path / "innocent.whl"
        if kind == "a directory":
            path.mkdir()
        elif kind == "a named pipe":
            os.mkfifo(path)
        else:
            path.symlink_to("/proc/self/environ")
    out = tmp_path / "out"

    error = finishes_within(5, lambda: download(path.as_uri(), out / "f.whl", expected_sha256=None),
                            release=lambda: release_fifo(path))

    assert isinstance(error, FetchError), error
    assert str(error).startswith(f"file URL {path.as_uri()} is not a regular file: ")
    assert error.exit_code == 3
    assert leftovers(out) == []
    assert not any(b"s3cret" in p.read_bytes() for p in out.iterdir() if p.is_file())


def test_file_url_into_proc_names_the_danger(tmp_path: Path) -> None:
    link = tmp_path / "innocent.whl"
    link.symlink_to("/proc/self/environ")

    with pytest.raises(FetchError) as caught:
        download(link.as_uri(), tmp_path / "out" / "f.whl", expected_sha256=None)

    assert f"{link} (a link to /proc/" in str(caught.value)
    assert "is under /proc" in str(caught.value) and "secrets" in str(caught.value)


def test_file_url_with_a_link_loop_says_so_and_not_that_the_cache_failed(tmp_path: Path) -> None:
    (tmp_path / "a.whl").symlink_to(tmp_path / "b.whl")
    (tmp_path / "b.whl").symlink_to(tmp_path / "a.whl")
    url = (tmp_path / "a.whl").as_uri()

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "out" / "f.whl", expected_sha256=None)

    assert str(caught.value) == f"cannot read {tmp_path / 'a.whl'} for {url}: Too many levels of symbolic links"


def test_429_is_retried_after_the_pause_the_server_asks_for(
    server: FileServer, tmp_path: Path, waits: list[float]
) -> None:
    data = blob(1000)
    url = server.add("/limited.whl", data, fail_times=2, fail_status=429, retry_after="7")

    result = download(url, tmp_path / "limited.whl", expected_sha256=sha(data), **FAST)

    assert result.attempts == 3 and (tmp_path / "limited.whl").read_bytes() == data
    assert waits == [7.0, 7.0]  # not the backoff's 0.01 and 0.02: asking sooner only earns another 429


def test_429_for_too_long_is_a_fetch_error_naming_the_url(
    server: FileServer, tmp_path: Path, waits: list[float]
) -> None:
    url = with_userinfo(server.add("/limited.whl", b"x", fail_times=100, fail_status=429, retry_after="2"), "u:s3cret")

    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "limited.whl", expected_sha256=None, retries=1, **FAST)

    assert str(caught.value) == (f"download failed after 2 attempts: http://u:***@127.0.0.1:{server.port}/limited.whl: "
                                 "HTTP 429 Too Many Requests (Retry-After: 2s)")
    assert waits == [2.0]


def test_a_retry_after_date_hours_away_is_capped(server: FileServer, tmp_path: Path, waits: list[float]) -> None:
    data = blob(1000)
    later = email.utils.formatdate(time.time() + 3 * 3600, usegmt=True)
    url = server.add("/busy.whl", data, fail_times=1, fail_status=503, retry_after=later)

    download(url, tmp_path / "busy.whl", expected_sha256=sha(data), **FAST)

    assert waits == [retry.MAX_RETRY_AFTER] and retry.MAX_RETRY_AFTER == 60.0


def test_a_pinned_partial_holding_every_byte_is_finished_without_a_download(
    server: FileServer, tmp_path: Path
) -> None:
    data = blob(200_000)
    url = server.add("/done.whl", data)
    etag = server.routes["/done.whl"].etag
    write_partial(tmp_path / "done.whl", data, url=url, validator=etag)  # killed after the last byte, before rename

    result = download(url, tmp_path / "done.whl", expected_sha256=sha(data), **FAST)

    assert (tmp_path / "done.whl").read_bytes() == data
    assert (result.size, result.sha256, result.bytes_transferred, result.resumed_from, result.attempts) == (
        len(data), sha(data), 0, len(data), 1)
    assert [r.status for r in server.requests("/done.whl")] == [416]
    assert server.bytes_sent("/done.whl") == 0
    assert leftovers(tmp_path) == ["done.whl"]

    # A partial of the same size with other bytes fails its sha256: downloaded again, not a mismatch error.
    write_partial(tmp_path / "again.whl", blob(len(data), seed=9), url=url, validator=etag)
    download(url, tmp_path / "again.whl", expected_sha256=sha(data), **FAST)
    assert (tmp_path / "again.whl").read_bytes() == data
    assert [r.status for r in server.requests("/done.whl")][1:] == [416, 200]


def test_an_unpinned_partial_with_the_size_a_416_names_is_finished(server: FileServer, tmp_path: Path) -> None:
    data = blob(200_000)
    url = server.add("/done.sh", data)
    write_partial(tmp_path / "done.sh", data, url=url, validator=server.routes["/done.sh"].etag)

    result = download(url, tmp_path / "done.sh", expected_sha256=None, **FAST)

    assert (result.size, result.sha256, result.bytes_transferred) == (len(data), sha(data), 0)
    assert [r.status for r in server.requests("/done.sh")] == [416]
    assert server.bytes_sent("/done.sh") == 0


