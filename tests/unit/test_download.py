"""download() against a real HTTP server on loopback, with injected faults; nothing of requests is mocked."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

import pytest
import requests

from modelarts_images.errors import FetchError
from modelarts_images.http.download import AbortedError, Transfer, download, get_text
from tests.support.http_server import FileServer, serve

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


class Timing(TypedDict):
    backoff: float
    connect_timeout: float
    read_timeout: float


FAST: Timing = {"backoff": 0.01, "connect_timeout": 2.0, "read_timeout": 2.0}  # a failing test fails fast


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Files beside the target other than the lock file, which is kept on purpose."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    # download() keeps requests' trust_env; a proxy set in the environment must not capture loopback.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with serve() as running:
        yield running


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


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"

    with pytest.raises(FetchError, match=r"download failed after 2 attempts: .*/x: connection failed"):
        download(url, tmp_path / "x", expected_sha256=None, retries=1, **FAST)


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


def test_page_cut_while_read_is_retried(server: FileServer) -> None:
    page = b"<a href='torch.whl'>torch</a>\n" * 4000
    url = server.add("/simple/torch/", page, cut_after=1000)

    with requests.Session() as session:
        assert get_text(url, session=session, backoff=0.01) == page.decode()

    assert [r.bytes_sent for r in server.requests("/simple/torch/")] == [1000, len(page)]


def test_page_cut_every_time_is_a_fetch_error_naming_the_url(server: FileServer) -> None:
    url = with_userinfo(server.add("/simple/torch/", b"x" * 100_000, cut_after=1000, cut_times=None), "u:s3cret-pw")

    with requests.Session() as session, pytest.raises(FetchError) as caught:
        get_text(url, session=session, retries=1, backoff=0.01)

    assert str(caught.value).startswith(
        f"cannot read http://u:***@127.0.0.1:{server.port}/simple/torch/ after 2 attempts: connection cut")
    assert "s3cret" not in str(caught.value)


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
