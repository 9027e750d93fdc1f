"""registry.py against a small but real v2 registry on loopback (Basic and Bearer auth, faults), and the push
stream reader of engine/push.py fed with the events the engine sends."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from modelarts_images.engine import push as engine_push
from modelarts_images.errors import RegistryError
from modelarts_images.http import registry
from modelarts_images.publish.swr import Credentials, Reference

USER, PASSWORD = "tester", "s3cret-Passw0rd"
TOKEN = "token-abc"
CONFIG_DIGEST = "sha256:" + "c" * 64


def manifest_body(media_type: str = registry.DOCKER_MANIFEST) -> bytes:
    if media_type in registry.INDEX_TYPES:
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": [
            {"mediaType": registry.DOCKER_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 500}]}
    else:
        document = {"schemaVersion": 2, "mediaType": media_type,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1000,
                               "digest": CONFIG_DIGEST},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2000,
                                "digest": "sha256:" + "e" * 64},
                               {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 30,
                                "digest": "sha256:" + "f" * 64}]}
    return json.dumps(document, indent=3).encode()


@dataclass
class State:
    auth: str = "basic"  # "basic", "bearer" or "none"
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # "name:tag" -> (media type, body)
    fail_times: int = 0  # the first requests get 503
    wrong_digest: bool = False
    omit_digest_on_head: bool = False
    realm: str | None = None  # the Bearer challenge's realm; None: this server's /token
    redirect_loop: bool = False  # every request is redirected to itself
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    state: State

    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(head=True)

    def do_GET(self) -> None:
        self.answer(head=False)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def answer(self, head: bool) -> None:
        state = self.state
        parts = urlsplit(self.path)
        state.requests.append((self.command, self.path, dict(self.headers.items())))
        if state.redirect_loop:
            self.send(302, headers={"Location": self.path}, head=head)
            return
        if state.fail_times > 0:
            state.fail_times -= 1
            self.send(503, b"busy", head=head)
            return
        if parts.path == "/token":
            query = parse_qs(parts.query)
            if self.headers.get("Authorization") != basic(USER, PASSWORD) or query.get("service") != ["test"]:
                self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad token request"}]}')
                return
            self.send(200, json.dumps({"token": TOKEN}).encode(), {"Content-Type": "application/json"})
            return
        expected = {"basic": basic(USER, PASSWORD), "bearer": f"Bearer {TOKEN}", "none": None}[state.auth]
        if expected is not None and self.headers.get("Authorization") != expected:
            challenge = ('Basic realm="test"' if state.auth == "basic"
                         else f'Bearer realm="{state.realm or state.url + "/token"}",service="test",'
                              'scope="repository:x:pull"')
            self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                      {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, head=head)
            return
        name, _, tag = parts.path.removeprefix("/v2/").partition("/manifests/")
        found = state.manifests.get(f"{name}:{tag}")
        if found is None:
            self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', head=head)
            return
        media_type, body = found
        digest = "sha256:" + hashlib.sha256(b"other" if state.wrong_digest else body).hexdigest()
        headers = {"Content-Type": media_type}
        if not (head and state.omit_digest_on_head):
            headers["Docker-Content-Digest"] = digest
        self.send(200, body, headers, head=head)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def serve(state: State) -> Iterator[str]:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    host = f"127.0.0.1:{server.server_address[1]}"
    state.url = f"http://{host}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


def creds(host: str, password: str = PASSWORD) -> Credentials:
    return Credentials(registry=host, username=USER, password=password, source="MODELARTS_REGISTRY_USER/PASSWORD")


# --------------------------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("127.1.2.3", "http://127.1.2.3"),
    ("localhost:5000", "http://localhost:5000"),
    ("[::1]:5000", "http://[::1]:5000"),
    ("swr.cn-north-4.myhuaweicloud.com", "https://swr.cn-north-4.myhuaweicloud.com"),
    ("10.0.0.1:5000", "https://10.0.0.1:5000"),
    ("localhost.example.com", "https://localhost.example.com"),
])
def test_base_url_is_plain_http_only_for_loopback(host: str, url: str) -> None:
    assert registry.base_url(host) == url


def test_parse_challenge() -> None:
    assert registry.parse_challenge('Bearer realm="https://a/token",service="svc",scope="repository:o/r:pull"') == (
        "bearer", {"realm": "https://a/token", "service": "svc", "scope": "repository:o/r:pull"})
    assert registry.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


# --------------------------------------------------------------------------------------------------------------
# Against the loopback registry


@pytest.mark.parametrize("auth", ["basic", "bearer", "none"])
def test_manifest_digest_and_media_type(auth: str) -> None:
    body = manifest_body()
    state = State(auth=auth, manifests={"org/repo:t": (registry.DOCKER_MANIFEST, body)})
    with serve(state) as host, registry.Registry(host, creds(host)) as api:
        found = api.manifest("org/repo", "t")
        assert found is not None
        assert found.digest == "sha256:" + hashlib.sha256(body).hexdigest()
        assert found.media_type == registry.DOCKER_MANIFEST and found.is_docker_v2
        assert found.config_digest == CONFIG_DIGEST
        assert found.content_size == 3030
        assert found.size == len(body)
        assert api.head_manifest("org/repo", "t") == (found.digest, registry.DOCKER_MANIFEST)
    accepts = [headers.get("Accept", "") for method, path, headers in state.requests if "/manifests/" in path]
    assert all(registry.DOCKER_MANIFEST in a and registry.OCI_INDEX in a for a in accepts)
    # The token or the Basic header is reused: one 401 per scope, not one per request.
    assert sum(1 for _, path, headers in state.requests if "/manifests/" in path and "Authorization" not in headers) \
        == (2 if auth == "none" else 1)


def test_absent_tag_is_none() -> None:
    with serve(State()) as host, registry.Registry(host, creds(host)) as api:
        assert api.manifest("org/repo", "missing") is None
        assert api.head_manifest("org/repo", "missing") is None


def test_head_without_digest_header_reads_the_body() -> None:
    body = manifest_body()
    state = State(manifests={"o/r:t": (registry.DOCKER_MANIFEST, body)}, omit_digest_on_head=True)
    with serve(state) as host, registry.Registry(host, creds(host)) as api:
        assert api.head_manifest("o/r", "t") == ("sha256:" + hashlib.sha256(body).hexdigest(), registry.DOCKER_MANIFEST)


@pytest.mark.parametrize("media_type", [registry.OCI_INDEX, registry.DOCKER_MANIFEST_LIST, registry.OCI_MANIFEST])
def test_other_media_types_are_reported(media_type: str) -> None:
    state = State(manifests={"o/r:t": (media_type, manifest_body(media_type))})
    with serve(state) as host, registry.Registry(host, creds(host)) as api:
        found = api.manifest("o/r", "t")
    assert found is not None and found.media_type == media_type and not found.is_docker_v2
    assert (found.config_digest is None) == (media_type in registry.INDEX_TYPES)


def test_no_credentials_names_the_variables() -> None:
    with serve(State()) as host, registry.Registry(host, None) as api, \
            pytest.raises(RegistryError, match=r"requires a login and no credentials.*MODELARTS_REGISTRY_USER") as e:
        api.manifest("o/r", "t")
    assert e.value.exit_code == 6


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_wrong_password_is_rejected_without_showing_it(auth: str) -> None:
    with serve(State(auth=auth)) as host, registry.Registry(host, creds(host, "wrong-pw-123")) as api, \
            pytest.raises(RegistryError, match=r"rejected the login of tester .*wrong user name or password") as e:
        api.manifest("o/r", "t")
    assert "wrong-pw-123" not in str(e.value)


def test_5xx_is_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    state = State(manifests={"o/r:t": (registry.DOCKER_MANIFEST, manifest_body())}, fail_times=2)
    with caplog.at_level(logging.WARNING, logger="modelarts_images.http.registry"), serve(state) as host, \
            registry.Registry(host, creds(host), retries=3, backoff=0.01) as api:
        assert api.manifest("o/r", "t") is not None
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 503" in retries[0]


def test_5xx_for_too_long_fails() -> None:
    state = State(fail_times=100)
    with serve(state) as host, registry.Registry(host, creds(host), retries=2, backoff=0.01) as api, \
            pytest.raises(RegistryError, match=r"cannot reach the registry .* after 3 attempts: HTTP 503"):
        api.manifest("o/r", "t")
    assert len(state.requests) == 3


def test_registry_down_is_retried_then_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"127.0.0.1:{port}"
    with registry.Registry(host, creds(host), retries=2, backoff=0.01) as api, \
            pytest.raises(RegistryError, match=rf"cannot reach the registry {host} .* after 3 attempts") as e:
        api.manifest("o/r", "t")
    assert e.value.exit_code == 6


@pytest.mark.parametrize("realm", ["not-a-url", "http://", "ftp://127.0.0.1/token", "http://[::1/token"])
def test_malformed_token_realm_is_a_registry_error(realm: str) -> None:
    state = State(auth="bearer", realm=realm)
    with serve(state) as host, registry.Registry(host, None, retries=1, backoff=0.01) as api, \
            pytest.raises(RegistryError, match=rf"^{host}: GET .* failed: ") as caught:
        api.manifest("o/r", "t")
    assert caught.value.exit_code == 6
    assert len(state.requests) == 1  # not retried: a malformed URL does not heal


def test_redirect_loop_is_a_registry_error() -> None:
    state = State(redirect_loop=True)
    with serve(state) as host, registry.Registry(host, creds(host), retries=1, backoff=0.01) as api, \
            pytest.raises(RegistryError, match=r"GET http://.*/v2/o/r/manifests/t failed: Exceeded 30 redirects"):
        api.manifest("o/r", "t")
    assert len(state.requests) == 31


def test_digest_that_does_not_match_the_bytes_is_an_error() -> None:
    state = State(manifests={"o/r:t": (registry.DOCKER_MANIFEST, manifest_body())}, wrong_digest=True)
    with serve(state) as host, registry.Registry(host, creds(host)) as api, \
            pytest.raises(RegistryError, match=r"but its bytes hash to"):
        api.manifest("o/r", "t")


# --------------------------------------------------------------------------------------------------------------
# engine_push: the push stream as the engine sends it

REFERENCE = Reference(registry="127.0.0.1:5000", organization="org", repository="repo", tag="t1")
DIGEST = "sha256:0700907bf0fab058a40e3b5c38deb6b84a803904085504a968aef7c11de1c8b4"
GOOD_STREAM: list[dict[str, Any]] = [
    {"status": "The push refers to repository [127.0.0.1:5000/org/repo]"},
    {"status": "Preparing", "progressDetail": {}, "id": "6cea3e0e94d7"},
    {"status": "Pushing", "progressDetail": {"current": 542208, "total": 169149896}, "progress": "[>  ]",
     "id": "6cea3e0e94d7"},
    {"status": "Pushed", "progressDetail": {}, "id": "6cea3e0e94d7"},
    {"status": f"t1: digest: {DIGEST} size: 528"},
    {"progressDetail": {}, "aux": {"Tag": "t1", "Digest": DIGEST, "Size": 528}},
]


def test_stream_gives_digest_and_progress(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, int, int | None]] = []
    with caplog.at_level(logging.INFO, logger="modelarts_images.engine.push"):
        digest, size = engine_push.read_push_stream(
            GOOD_STREAM, reference=REFERENCE, authenticated=True, progress=lambda *a: seen.append(a))
    assert (digest, size) == (DIGEST, 528)
    assert seen == [(f"{REFERENCE} 6cea3e0e94d7", 542208, 169149896),
                    (f"{REFERENCE} 6cea3e0e94d7", 169149896, 169149896)]
    messages = [r.getMessage() for r in caplog.records]
    assert f"{REFERENCE}: 6cea3e0e94d7: Pushed" in messages


def test_digest_from_status_line_alone() -> None:
    assert engine_push.read_push_stream(GOOD_STREAM[:-1], reference=REFERENCE, authenticated=True) == (DIGEST, 528)


def test_stream_without_digest_is_an_error() -> None:
    with pytest.raises(RegistryError, match=r"ended without the registry's digest"):
        engine_push.read_push_stream(GOOD_STREAM[:4], reference=REFERENCE, authenticated=True)


def test_in_band_auth_error_without_login() -> None:
    events = [*GOOD_STREAM[:2], {"errorDetail": {"message": "no basic auth credentials"},
                                 "error": "no basic auth credentials"}]
    with pytest.raises(RegistryError, match=r"requires a login \(no basic auth credentials\); set "
                                            "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD") as e:
        engine_push.read_push_stream(events, reference=REFERENCE, authenticated=False)
    assert e.value.exit_code == 6


def test_in_band_denied_with_login_points_at_the_organization() -> None:
    events = [{"error": "denied: requested access to the resource is denied"}]
    with pytest.raises(RegistryError, match=r"may not push to org/repo .*organization 'org' exist"):
        engine_push.read_push_stream(events, reference=REFERENCE, authenticated=True)


def test_in_band_errors_are_masked() -> None:
    events = [{"errorDetail": {"message": "something odd with pw-xyz-123"}, "error": "x"}]
    with pytest.raises(RegistryError) as e:
        engine_push.read_push_stream(events, reference=REFERENCE, authenticated=True, secrets=["pw-xyz-123"])
    assert "pw-xyz-123" not in str(e.value) and "***" in str(e.value)


@pytest.mark.parametrize(("message", "kind"), [
    ('Get "http://127.0.0.1:5742/v2/": dial tcp 127.0.0.1:5742: connect: connection refused', "transient"),
    ("received unexpected HTTP status: 500 Internal Server Error", "transient"),
    ("received unexpected HTTP status: 503 Service Unavailable", "transient"),
    ("net/http: TLS handshake timeout", "transient"),
    ("toomanyrequests: rate limit", "transient"),
    ("login attempt to http://127.0.0.1:5741/v2/ failed with status: 401 Unauthorized", "auth"),
    ("no basic auth credentials", "auth"),
    ("denied: requested access to the resource is denied", "auth"),
    ("manifest invalid: manifest invalid", "other"),
    ("blob upload unknown sha256:ab401c5001234", "other"),
    ("tag does not exist: 127.0.0.1:5000/org/repo:t1", "other"),
])
def test_kind_of(message: str, kind: str) -> None:
    assert engine_push.kind_of(message) == kind


def test_transient_in_band_error_is_retryable() -> None:
    events = [{"error": 'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'}]
    with pytest.raises(engine_push._TransientError):
        engine_push.read_push_stream(events, reference=REFERENCE, authenticated=True)


def test_progress_never_passes_the_total() -> None:
    seen: list[tuple[str, int, int | None]] = []
    events = [{"status": "Pushing", "progressDetail": {"current": 170_000_000, "total": 169_149_896}, "id": "l1"},
              *GOOD_STREAM[4:]]
    engine_push.read_push_stream(events, reference=REFERENCE, authenticated=True,
                                 progress=lambda *a: seen.append(a))
    assert seen == [(f"{REFERENCE} l1", 169_149_896, 169_149_896)]
