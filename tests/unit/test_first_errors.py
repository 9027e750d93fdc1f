"""The errors a new user meets first, each in one line that names the cause and the next step: no network (a name
that does not resolve, a refused connection, TLS, a timeout, a proxy), no engine, the engine's disk full, a base on
Docker Hub out of reach, a refused registry login. Real parts wherever they can be had: sockets on loopback, the
reserved `.invalid` top-level domain, pip itself, the `inv` command in a subprocess; the engine's own words, which
need an engine in trouble, are quoted as the docker SDK and CLI give them (see each test)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import docker
import pytest
import requests
import urllib3
import urllib3.connection
import urllib3.exceptions

from modelarts_images.build import builder
from modelarts_images.engine import failures as engine_failures
from modelarts_images.engine.adapter import DockerEngine, connect
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BaseImageSource,
    BuildRequest,
    Refusal,
    RegistryLogin,
    RegistryRefusedError,
)
from modelarts_images.errors import BuildError, EngineError, FetchError, RegistryError
from modelarts_images.http import failures, pip_resolver
from modelarts_images.http import registry as registry_api
from modelarts_images.http.download import download
from modelarts_images.http.pages import get_text
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import BuildOptions
from modelarts_images.publish import publisher, swr
from tests.conftest import ROOT
from tests.support.fake_engine import FakeEngine
from tests.support.http_server import FileServer
from tests.unit.test_download import FAST
from tests.unit.test_registry import State
from tests.unit.test_registry import serve as serve_registry

NOWHERE = "files.example.invalid"  # RFC 2606: .invalid never resolves
DNS_TEXT = (f"cannot resolve {NOWHERE} (DNS lookup failed: no network, or the name is wrong): check the network, "
            "set a proxy (HTTPS_PROXY) or a mirror (modelarts.mirrors in invoke.yaml)")


def closed_port() -> int:
    """A loopback port nobody listens on once the probe is closed: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name the process resolves, in order (the real resolver answers)."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def counted(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    return seen


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment in the way of loopback or of the names that must fail to resolve here."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "retrying in" in record.getMessage()]


def assert_one_short_line(text: str) -> None:
    """One line, in the tool's words: none of urllib3's or requests' raw reprs."""
    assert "\n" not in text, text
    for raw in ("HTTPConnectionPool", "HTTPSConnectionPool", "Max retries exceeded", "object at 0x", "Caused by",
                "NewConnectionError", "NameResolutionError", "[Errno"):
        assert raw not in text, text


# --------------------------------------------------------------------------------------------------------------
# No network: downloads, index pages and the registry's API


def test_a_name_that_does_not_resolve_is_tried_once(tmp_path: Path, waits: list[float], lookups: list[str],
                                                    no_proxy: None, caplog: pytest.LogCaptureFixture) -> None:
    url = f"https://{NOWHERE}/whl/torch-2.13.0-cp311-cp311-linux_x86_64.whl"
    with caplog.at_level(logging.WARNING), pytest.raises(FetchError) as caught:
        download(url, tmp_path / "t.whl", expected_sha256=None, retries=4, **FAST)

    assert str(caught.value) == f"{url}: {DNS_TEXT}"
    assert waits == [] and retry_lines(caplog) == []  # no retry: the resolver would answer the same
    assert lookups.count(NOWHERE) == 1
    assert caught.value.exit_code == 3


def test_an_index_page_on_a_name_that_does_not_resolve_is_read_once(waits: list[float], lookups: list[str],
                                                                    no_proxy: None) -> None:
    url = f"https://{NOWHERE}/whl/torch/"
    with requests.Session() as session, pytest.raises(FetchError) as caught:
        get_text(url, session=session, backoff=0.01)
    assert str(caught.value) == f"{url}: {DNS_TEXT}"
    assert waits == [] and lookups.count(NOWHERE) == 1


def test_a_refused_connection_is_retried_once_with_one_short_line(tmp_path: Path, waits: list[float],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/Miniconda3.sh"
    with caplog.at_level(logging.WARNING), pytest.raises(FetchError) as caught:
        download(url, tmp_path / "m.sh", expected_sha256=None, retries=4, **FAST)

    assert str(caught.value) == (
        f"download failed after 2 attempts: {url}: 127.0.0.1:{port} refused the connection (nothing listens on that "
        "port, or a firewall rejects it): check the host and port, set a proxy (HTTP_PROXY) or a mirror "
        "(modelarts.mirrors in invoke.yaml)")
    assert waits == [0.01]  # one retry, however many the backoff allows: a server that restarts comes back
    [line] = retry_lines(caplog)
    assert line == f"{url}: 127.0.0.1:{port} refused the connection; retrying in 0.01s (attempt 2 of 2)"


def test_https_to_a_plain_http_port_is_a_tls_failure_not_retried(server: FileServer, tmp_path: Path,
                                                                 waits: list[float]) -> None:
    url = server.add("/x.whl", b"data").replace("http://", "https://")
    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "x.whl", expected_sha256=None, retries=4, **FAST)

    message = str(caught.value)
    assert message.startswith(f"{url}: TLS with 127.0.0.1:{server.port} failed (")
    assert "the port does not speak TLS): an https:// address on a plain-HTTP port, or a proxy in the way" in message
    assert_one_short_line(message)
    assert waits == []  # the handshake fails the same every time


@contextlib.contextmanager
def self_signed_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on loopback with a certificate of its own CA (openssl makes it): (port, the certificate)."""
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                           str(cert), "-days", "1", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                          capture_output=True, check=False, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate here: {made.stderr.decode(errors='replace')[-200:]}")

    class Hello(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1]), cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_certificate_from_a_private_ca_names_requests_ca_bundle_which_then_works(
        tmp_path: Path, waits: list[float], monkeypatch: pytest.MonkeyPatch, no_proxy: None) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with self_signed_server(tmp_path) as (port, ca):
        url = f"https://127.0.0.1:{port}/hello.whl"
        with pytest.raises(FetchError) as caught:
            download(url, tmp_path / "h.whl", expected_sha256=None, retries=4, **FAST)
        assert str(caught.value) == (
            f"{url}: TLS with 127.0.0.1:{port} failed (certificate verify failed: self-signed certificate): a proxy "
            "that inspects HTTPS, or a server with a certificate from a private CA, needs that CA's certificate in "
            "REQUESTS_CA_BUNDLE")
        assert waits == []
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # the advice, followed
        assert download(url, tmp_path / "h.whl", expected_sha256=None, **FAST).size == 5


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose socket accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield int(listening.getsockname()[1])


def test_a_server_that_accepts_and_never_answers_is_retried_and_said_in_one_line(
        tmp_path: Path, silent_port: int, waits: list[float], caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{silent_port}/slow.whl"
    with caplog.at_level(logging.WARNING), pytest.raises(FetchError) as caught:
        download(url, tmp_path / "s.whl", expected_sha256=None, retries=2, backoff=0.01, connect_timeout=2.0,
                 read_timeout=0.3)
    assert str(caught.value) == f"download failed after 3 attempts: {url}: no complete response headers within 0.3s"
    assert waits == [0.01, 0.02]  # a slow server heals: every retry the backoff allows
    assert all(line.startswith(f"{url}: no complete response headers within 0.3s; retrying") for line in
               retry_lines(caplog))


def test_a_registry_that_accepts_and_never_answers_is_retried(silent_port: int, waits: list[float]) -> None:
    host = f"127.0.0.1:{silent_port}"
    with registry_api.Registry(host, None, retries=1, backoff=0.01, timeout=(2.0, 0.3)) as api, \
            pytest.raises(RegistryError) as caught:
        api.manifest("o/r", "t")
    assert str(caught.value) == (f"cannot reach the registry {host} (GET http://{host}/v2/o/r/manifests/t) after 2 "
                                 "attempts: no answer within 0.3s")
    assert waits == [0.01]


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listening socket's queue is full and never accepted: the kernel drops further SYNs, so a
    connection attempt times out (the way a firewall that drops packets behaves)."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(0)
    port = int(listening.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        timed_out = False
    except TimeoutError:
        timed_out = True
    except OSError:
        timed_out = False
    finally:
        probe.close()
    try:
        if not timed_out:
            pytest.skip("this kernel does not drop connections to a full listen queue (tcp_abort_on_overflow?)")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listening.close()


def test_no_connection_within_the_timeout_names_the_host_port_and_the_seconds(
        tmp_path: Path, full_backlog: int, waits: list[float]) -> None:
    url = f"http://127.0.0.1:{full_backlog}/torch.whl"
    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "t.whl", expected_sha256=None, retries=1, backoff=0.01, connect_timeout=0.3,
                 read_timeout=2.0)
    assert str(caught.value) == (
        f"download failed after 2 attempts: {url}: no connection to 127.0.0.1:{full_backlog} within 0.3s (a firewall "
        "drops the packets, or the network is down or slow): check the network, set a proxy (HTTP_PROXY) or a "
        "mirror (modelarts.mirrors in invoke.yaml)")
    assert waits == [0.01]  # a timeout may be congestion: retried as the backoff allows


def test_a_proxy_that_refuses_is_named_without_its_password_and_not_retried(
        tmp_path: Path, waits: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://robot:pr0xy-pw@127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = f"https://{NOWHERE}/torch.whl"
    with pytest.raises(FetchError) as caught:
        download(url, tmp_path / "t.whl", expected_sha256=None, retries=4, **FAST)
    assert str(caught.value) == (
        f"{url}: the proxy http://robot:***@127.0.0.1:{port} failed the connection to {NOWHERE} (it refused the "
        "connection: nothing listens there): check HTTPS_PROXY/HTTP_PROXY (and NO_PROXY)")
    assert waits == []


def test_the_registry_api_on_a_name_that_does_not_resolve_is_asked_once(waits: list[float], lookups: list[str],
                                                                        no_proxy: None) -> None:
    host = f"swr.{NOWHERE}"
    with registry_api.Registry(host, None, retries=3, backoff=0.01) as api, pytest.raises(RegistryError) as caught:
        api.manifest("o/r", "t")
    assert str(caught.value) == (
        f"cannot reach the registry {host} (GET https://{host}/v2/o/r/manifests/t): cannot resolve {host} (DNS "
        "lookup failed: no network, or the name is wrong): check the network and the name, or set a proxy "
        "(HTTPS_PROXY)")
    assert waits == [] and lookups.count(host) == 1 and caught.value.exit_code == 6


def test_the_classification_reads_requests_exception_chain() -> None:
    """What requests raises, built as urllib3 2 builds it (the live cases are above): the kinds and their retries."""
    connection = urllib3.connection.HTTPSConnection("mirror.example.com", 8443)
    refused = urllib3.exceptions.NewConnectionError(connection, "Failed to establish a new connection: [Errno 111]")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    pool = urllib3.HTTPSConnectionPool("mirror.example.com", 8443)
    error = requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(pool, "/x", refused))
    found = failures.classify(error, "https://mirror.example.com:8443/x")
    assert found is not None and (found.kind, found.host, found.port, found.retries) == (
        failures.Kind.REFUSED, "mirror.example.com", 8443, 1)
    assert found.cause == "mirror.example.com:8443 refused the connection"
    assert failures.classify(requests.exceptions.InvalidURL("no host"), "https:///x") is None
    assert [kind for kind in failures.Kind if failures.RETRIES[kind] == 0] == [
        failures.Kind.DNS, failures.Kind.TLS, failures.Kind.PROXY]


# --------------------------------------------------------------------------------------------------------------
# The one line through the real `inv` command


def versions_at(tmp_path: Path, base: str) -> Path:
    """A versions.yaml whose installer and wheel are at `base`, both pinned (no trust-on-first-use warning)."""
    versions = tmp_path / "versions.yaml"
    versions.write_text(f"""images:
  - id: first-run
    python: "3.11"
    cuda: cpu
    torch: "2.13.0"
    base_image: modelarts-test-base:bookworm
    installer:
      url: {base}/miniconda/Miniconda3-py311_24.1.2-0-Linux-x86_64.sh
      sha256: {hashlib.sha256(b"installer").hexdigest()}
    wheels:
      - url: {base}/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl
        sha256: {hashlib.sha256(b"torch").hexdigest()}
""", "utf-8")
    return versions


def inv_fetch(tmp_path: Path, versions: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "INVOKE_MODELARTS_CACHE_DIR": str(tmp_path / "cache"),
                   "NO_PROXY": "127.0.0.1,localhost", **env}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "invoke", "fetch", "--no-closure", "--jobs", "1", "--versions",
                           str(versions)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env=environment)


def test_inv_fetch_without_dns_ends_in_one_line_and_exit_3(tmp_path: Path) -> None:
    result = inv_fetch(tmp_path, versions_at(tmp_path, f"https://{NOWHERE}"))
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        f"error: first-run: https://{NOWHERE}/miniconda/Miniconda3-py311_24.1.2-0-Linux-x86_64.sh: {DNS_TEXT}"]


def test_inv_fetch_from_a_refused_port_logs_one_short_line_per_retry(tmp_path: Path) -> None:
    port = closed_port()
    result = inv_fetch(tmp_path, versions_at(tmp_path, f"http://127.0.0.1:{port}"))
    assert result.returncode == 3, result.stderr
    retried, error = result.stderr.splitlines()
    assert retried.endswith("refused the connection; retrying in 0.50s (attempt 2 of 2)")
    assert error.startswith("error: first-run: download failed after 2 attempts: http://127.0.0.1:") and \
        error.endswith("refused the connection (nothing listens on that port, or a firewall rejects it): check the "
                       "host and port, set a proxy (HTTP_PROXY) or a mirror (modelarts.mirrors in invoke.yaml)")
    assert_one_short_line(retried)
    assert "Traceback" not in result.stderr


def test_inv_fetch_over_https_from_a_plain_port_is_one_tls_line(server: FileServer, tmp_path: Path) -> None:
    result = inv_fetch(tmp_path, versions_at(tmp_path, f"https://127.0.0.1:{server.port}"))
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: first-run: https://127.0.0.1:{server.port}/miniconda/") and \
        f": TLS with 127.0.0.1:{server.port} failed (" in line
    assert_one_short_line(line)


# --------------------------------------------------------------------------------------------------------------
# pip's index


def entry() -> ImageSpec:
    return ImageSpec(id="first-run", default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None,
                     torchaudio=None, tag="t", registry="localhost:5999", organization="tests", repository="x",
                     base_image="debian:bookworm", pip_index="", apt_mirror="http://repo.example",
                     installer=Artifact(url="file:///i.sh", sha256=None), wheels=())


def test_pip_on_an_index_that_does_not_resolve_is_a_fetch_error_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proxy: None) -> None:
    # pip itself, with an index on a name that never resolves: its output says why, and so does the message,
    # instead of pip's "No matching distribution" (which would read as a configuration error, exit 2).
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's pip.conf (local indexes) stays out
    monkeypatch.setenv("PIP_INDEX_URL", f"https://pypi.{NOWHERE}/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip's own retries, which print what failed; one keeps the test short
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FetchError) as caught:
        pip_resolver.resolve_wheel(entry(), "torch_npu==2.6.0", scratch_parent=tmp_path)
    assert str(caught.value) == (
        f"first-run: the torch_npu==2.6.0 wheel cannot be looked up on pip's index: cannot resolve pypi.{NOWHERE} "
        "(DNS lookup failed: no network, or the name is wrong): check the network, set a proxy (HTTPS_PROXY, or "
        "proxy in pip.conf) or another index (PIP_INDEX_URL, or index-url in pip.conf)")


def test_a_conflict_beside_an_unreachable_index_stays_a_conflict() -> None:
    output = ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
              "connection broken by 'NameResolutionError(\"HTTPSConnection(host='extra.example.invalid', port=443): "
              "Failed to resolve 'extra.example.invalid' ([Errno -2] Name or service not known)\")': /simple/a/\n"
              "ERROR: Cannot install a==1 and b==2 because these package versions have conflicting dependencies.\n"
              "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/")
    assert pip_resolver.unreachable_index(output) is None
    assert pip_resolver.PipFailed(output.splitlines(), None).unsatisfiable


# --------------------------------------------------------------------------------------------------------------
# No engine


def test_no_engine_at_a_socket_that_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    with pytest.raises(EngineError) as caught:
        connect()
    assert str(caught.value) == (
        "no Docker Engine answers at DOCKER_HOST=unix:///nonexistent.sock: there is no socket at /nonexistent.sock, "
        "so no engine runs there: start it (scripts/engine-up.sh here, or `sudo systemctl start docker`), or point "
        "DOCKER_HOST (or `docker context use`) at one that runs")


def test_no_engine_through_inv_is_one_line_with_the_stages_exit_code() -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": "unix:///nonexistent.sock"}
    result = subprocess.run([sys.executable, "-m", "invoke", "verify"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False, env=environment)
    assert result.returncode == 5, result.stderr
    assert result.stderr.splitlines() == [
        "error: no Docker Engine answers at DOCKER_HOST=unix:///nonexistent.sock: there is no socket at "
        "/nonexistent.sock, so no engine runs there: start it (scripts/engine-up.sh here, or `sudo systemctl start "
        "docker`), or point DOCKER_HOST (or `docker context use`) at one that runs"]


def test_no_engine_at_a_socket_that_nobody_listens_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as left:  # an engine that stopped leaves its socket file behind
        left.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    with pytest.raises(EngineError, match=rf": nothing listens on {path} \(connection refused: the engine stopped "
                                          r"and left its socket\): start it \(scripts/engine-up.sh"):
        connect()


def test_no_permission_on_the_socket_names_the_docker_group() -> None:
    # What the docker SDK raises for a socket this user may not open (as root, the test cannot meet one itself).
    denied = requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", PermissionError(13, "Permission denied")))
    assert engine_failures.no_engine_line("unix:///var/run/docker.sock (the default)", "/var/run/docker.sock",
                                          denied) == (
        "no Docker Engine answers at unix:///var/run/docker.sock (the default): permission denied on "
        "/var/run/docker.sock, which only root and the docker group may use: add this user to the group (`sudo "
        "usermod -aG docker $USER`, then log in again) or run the task as a user who may")


# --------------------------------------------------------------------------------------------------------------
# The engine's disk full, and Docker Hub out of reach: the engine's words as the docker SDK and CLI give them

# moby/moby#32811, NVIDIA/nvidia-docker#792: a pull (or a classic build pulling its base) with the disk full
PULL_DISK_FULL = ("failed to register layer: Error processing tar file(exit status 1): write "
                  "/usr/share/vim/vim74/syntax/sisu.vim: no space left on device")
# docker/cli#4844: BuildKit with the disk full
BUILDKIT_DISK_FULL = ("ERROR: failed to solve: failed to compute cache key: mount callback failed on "
                      "/tmp/containerd-mount1749269262: write /tmp/containerd-mount1749269262/usr/bin/cksum: no "
                      "space left on device")
# This machine's engine (20.10) without network, get_registry_data and pull of ubuntu:99.04
HUB_NO_DNS = ('Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: '
              "no such host")
# docker/for-win#5983 and many others: the engine's wait for Docker Hub timing out
HUB_TIMEOUT = ('Get "https://registry-1.docker.io/v2/": net/http: request canceled while waiting for connection '
               "(Client.Timeout exceeded while awaiting headers)")
# DrewThomasson/ebook2audiobook#1605: BuildKit loading a base's metadata
BUILDKIT_HUB = ("failed to solve: DeadlineExceeded: python:3.12-slim-bookworm: failed to resolve source metadata for "
                "docker.io/library/python:3.12-slim-bookworm: failed to do request: Head "
                '"https://registry-1.docker.io/v2/library/python/manifests/3.12-slim-bookworm": dial tcp: lookup '
                "registry-1.docker.io: i/o timeout")
DISK_LINE = ("the engine's disk is full (no space left on device, errno 28, under its data root, /var/lib/docker): "
             "free space there, or remove what the engine no longer needs: `docker system prune` (stopped "
             "containers, dangling images, build cache), `docker system prune -a` for every unused image too")


@pytest.mark.parametrize("words", [PULL_DISK_FULL, BUILDKIT_DISK_FULL])
def test_a_full_disk_names_the_data_root_and_docker_system_prune(words: str) -> None:
    assert engine_failures.explain(words, data_root="/var/lib/docker") == DISK_LINE
    assert "docker info" in str(engine_failures.explain(words))  # where the root is, when the engine did not say


def test_a_full_disk_inside_a_run_step_is_found_in_its_log() -> None:
    error = ('process "/bin/sh -c pip install --no-index /wheels/*.whl" did not complete successfully: exit '
             "code: 1")
    tail = ["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"]
    assert engine_failures.explain(error, tail=tail, data_root="/var/lib/docker") == DISK_LINE
    assert engine_failures.explain(error, tail=["ERROR: No matching distribution found for x"]) is None


@pytest.mark.parametrize(("words", "reason"), [
    (HUB_NO_DNS, "cannot resolve registry-1.docker.io: DNS lookup failed"),
    (HUB_TIMEOUT, "no connection to registry-1.docker.io:443: a firewall drops the packets, or the network is down "
                  "or slow"),
])
def test_a_docker_hub_base_out_of_reach_points_at_base_prefix(words: str, reason: str) -> None:
    assert engine_failures.explain(words, reference="ubuntu:18.04") == (
        f"base image ubuntu:18.04: the engine cannot reach Docker Hub ({reason}); set base_prefix "
        "(modelarts.base_prefix in invoke.yaml, or --base-prefix) to a mirror of Docker Hub that this engine can "
        "reach (e.g. base_prefix: mirror.example.com/library/ pulls mirror.example.com/library/ubuntu:18.04), or load "
        "the image into the engine (docker load)")


def test_a_buildkit_base_named_with_docker_io_is_told_to_drop_it() -> None:
    line = engine_failures.explain(BUILDKIT_HUB)
    assert line is not None and line.startswith(
        "base image docker.io/library/python:3.12-slim-bookworm: the engine cannot reach Docker Hub (cannot resolve "
        "registry-1.docker.io: DNS lookup failed); write it as python:3.12-slim-bookworm so that base_prefix")
    assert "pulls mirror.example.com/library/python:3.12-slim-bookworm" in line


def test_a_base_in_another_registry_is_not_sent_to_base_prefix() -> None:
    words = ('Get "https://mirror.example.invalid/v2/": dial tcp: lookup mirror.example.invalid on '
             "10.255.255.53:53: no such host")
    assert engine_failures.explain(words, reference="mirror.example.invalid/library/ubuntu:20.04") is None
    problem = builder.base_image_problem(BaseImage(reference="mirror.example.invalid/library/ubuntu:20.04",
                                                   source=BaseImageSource.UNREACHABLE, reason=words))
    assert isinstance(problem, BuildError) and (
        "its registry cannot be reached (cannot resolve mirror.example.invalid: DNS lookup failed: no network, or "
        "the name is wrong)") in str(problem)


class Bases(FakeEngine):
    def base_image(self, reference: str) -> BaseImage:
        return BaseImage(reference=reference, source=BaseImageSource.UNREACHABLE, reason=HUB_NO_DNS)


def test_checking_the_bases_on_a_host_without_docker_hub_is_one_line() -> None:
    image = entry()
    with pytest.raises(BuildError) as caught:
        builder.check_bases([image], BuildOptions(backend=Backend.DOCKER, work_dir=Path("/build")), Bases())
    assert str(caught.value).startswith("base image debian:bookworm: the engine cannot reach Docker Hub (cannot "
                                        "resolve registry-1.docker.io: DNS lookup failed); set base_prefix")
    assert caught.value.exit_code == 4 and "\n" not in str(caught.value)


class FullDiskClient:
    """The docker SDK's client where the classic builder's stream ends in the engine's 'no space left' error."""

    class api:  # noqa: N801 - the SDK's attribute
        base_url = "http+docker://localhost"

        @staticmethod
        def build(**_: Any) -> Iterator[dict[str, Any]]:
            yield {"stream": "Step 1/2 : FROM modelarts-test-base:bookworm\n"}
            yield {"stream": "Step 2/2 : RUN pip install /wheels/*.whl\n"}
            yield {"errorDetail": {"message": PULL_DISK_FULL}, "error": PULL_DISK_FULL}

    @staticmethod
    def info() -> dict[str, Any]:
        return {"DockerRootDir": "/srv/docker"}


def test_a_build_on_a_full_disk_is_one_line_naming_the_engines_data_root(tmp_path: Path) -> None:
    engine = DockerEngine(cast(docker.DockerClient, FullDiskClient()), endpoint="a stub", local=True)
    request = BuildRequest(backend=Backend.DOCKER, context_dir=tmp_path, target="image", tag="x:1",
                           build_args=(("BASE_IMAGE", "modelarts-test-base:bookworm"),), labels=())
    with pytest.raises(EngineError) as caught:
        engine.build(request)
    assert str(caught.value) == ("build of x:1 failed at Step 2/2 : RUN pip install /wheels/*.whl: "
                                 + DISK_LINE.replace("/var/lib/docker", "/srv/docker"))


# --------------------------------------------------------------------------------------------------------------
# A registry login refused

AK, SK = "HPUAEXAMPLEACCESSKEY", "exampleSecretKey0123456789exampleSecret0"


def test_a_refused_login_names_the_registry_the_variables_and_what_to_check() -> None:
    with serve_registry(State(auth="basic")) as host:
        credentials = swr.resolve_credentials(host, {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK},
                                              region="cn-north-4")
        assert credentials is not None
        with registry_api.Registry(host, credentials, retries=0) as api, pytest.raises(RegistryError) as caught:
            api.manifest("o/r", "t")
    message = str(caught.value)
    assert message == (
        f"{host} rejected the login of cn-north-4@HPUA… (from HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (long-term "
        "login)): wrong user name or password (authentication required); check that HUAWEICLOUD_SDK_AK/"
        "HUAWEICLOUD_SDK_SK are a current, permanent AK/SK pair of an IAM user who may use SWR, and that the "
        "login's project (cn-north-4) is the AK's: a sub-project goes in --project or swr_project in invoke.yaml")
    assert AK not in message and SK not in message and swr.login_key(AK, SK) not in message


class RefusingLogin(FakeEngine):
    def login(self, login: RegistryLogin) -> Any:
        raise RegistryRefusedError("login refused", kind=Refusal.AUTH,
                                   detail="Error response from daemon: Get \"https://swr.cn-north-4.myhuaweicloud.com"
                                          "/v2/\": denied: authenticate failed")


@pytest.mark.parametrize(("env", "source", "check"), [
    ({"MODELARTS_SWR_LOGIN_USER": "cn-north-4@" + AK, "MODELARTS_SWR_LOGIN_PASSWORD": "temp-login-password"},
     "MODELARTS_SWR_LOGIN_USER/MODELARTS_SWR_LOGIN_PASSWORD (temporary login)",
     "a login command from SWR's console expires: generate a new one and set MODELARTS_SWR_LOGIN_USER and "
     "MODELARTS_SWR_LOGIN_PASSWORD from its -u and -p, or use a permanent AK/SK (HUAWEICLOUD_SDK_AK/"
     "HUAWEICLOUD_SDK_SK)"),
    ({"MODELARTS_REGISTRY_USER": "robot", "MODELARTS_REGISTRY_PASSWORD": "plain-password"},
     "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD",
     "check MODELARTS_REGISTRY_USER and MODELARTS_REGISTRY_PASSWORD: they must be a user and password that "
     "swr.cn-north-4.myhuaweicloud.com knows"),
])
def test_inv_login_refused_through_the_engine_is_one_line(env: dict[str, str], source: str, check: str) -> None:
    registry = "swr.cn-north-4.myhuaweicloud.com"
    with pytest.raises(RegistryError) as caught:
        publisher.login(registry, engine=RefusingLogin(), env=env)
    message = str(caught.value)
    assert message.startswith(f"{registry} rejected the login of ") and f"(from {source}): " in message
    assert "wrong user name or password (Error response from daemon: " in message and message.endswith(check)
    assert "\n" not in message and caught.value.exit_code == 6
    assert not any(value in message for value in env.values() if "password" in value)
