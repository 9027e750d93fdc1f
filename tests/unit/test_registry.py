"""http/registry.py against a small but real v2 registry on loopback (Basic and Bearer auth, faults); the push
stream reader of engine/publishing.py fed with the events the engine sends; and the publisher's messages for what
the engine refused, over the loopback registry and a fake engine that feeds such events through that reader."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from modelarts_images.engine import publishing
from modelarts_images.engine.api import ImageConfig, Pushed, Refusal, RegistryAuth, RegistryLogin, RegistryRefusedError
from modelarts_images.errors import EngineError, RegistryError, WriteError
from modelarts_images.http import registry
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import PushOptions
from modelarts_images.publish import publisher, swr
from modelarts_images.shared import retry
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.progress import ProgressCallback
from tests.support.fake_engine import FakeEngine, image_config

T = TypeVar("T")

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
    fail_times: int = 0  # the first requests get `fail_status`
    fail_status: int = 503
    retry_after: str | None = None  # a Retry-After header on those answers
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

    def do_PUT(self) -> None:
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
            wait = {"Retry-After": state.retry_after} if state.retry_after is not None else {}
            self.send(state.fail_status, b"busy", wait, head=head)
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
        if self.command == "PUT":
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.manifests[f"{name}:{tag}"] = (self.headers.get("Content-Type", ""), body)
            self.send(201, headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})
            return
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
    with serve(State()) as host, registry.Registry(host, None, login_hint=swr.missing_login_hint(host)) as api, \
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


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(waits: list[float], status: int) -> None:
    state = State(manifests={"o/r:t": (registry.DOCKER_MANIFEST, manifest_body())}, fail_times=2, fail_status=status,
                  retry_after="5")
    with serve(state) as host, registry.Registry(host, creds(host), retries=3, backoff=0.01) as api:
        assert api.manifest("o/r", "t") is not None
    assert waits == [5.0, 5.0]  # not the backoff's 0.01 and 0.02: asking sooner only earns another refusal


def test_a_retry_after_date_hours_away_is_capped(waits: list[float], caplog: pytest.LogCaptureFixture) -> None:
    later = email.utils.formatdate(time.time() + 2 * 3600, usegmt=True)
    state = State(manifests={"o/r:t": (registry.DOCKER_MANIFEST, manifest_body())}, fail_times=1, fail_status=429,
                  retry_after=later)
    with caplog.at_level(logging.WARNING, logger="modelarts_images.http.registry"), serve(state) as host, \
            registry.Registry(host, creds(host), retries=3, backoff=0.01) as api:
        assert api.manifest("o/r", "t") is not None
    assert waits == [retry.MAX_RETRY_AFTER]
    assert "HTTP 429 Too Many Requests; retrying in 60.00s (the server asked for " in caplog.text


def test_registry_down_is_retried_once_then_fails(waits: list[float]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"127.0.0.1:{port}"
    # Two retries allowed; a refused connection is worth one (a registry that restarts), not more.
    with registry.Registry(host, creds(host), retries=2, backoff=0.01) as api, \
            pytest.raises(RegistryError, match=rf"cannot reach the registry {host} .* after 2 attempts: {host} "
                                               r"refused the connection \(nothing listens on that port") as e:
        api.manifest("o/r", "t")
    assert e.value.exit_code == 6 and waits == [0.01]


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
# publishing.read_push_stream: the push stream as the engine sends it

REFERENCE = "127.0.0.1:5000/org/repo:t1"
DIGEST = "sha256:0700907bf0fab058a40e3b5c38deb6b84a803904085504a968aef7c11de1c8b4"
GOOD_STREAM: list[dict[str, Any]] = [
    {"status": "The push refers to repository [127.0.0.1:5000/org/repo]"},
    {"status": "Preparing", "progressDetail": {}, "id": "6cea3e0e94d7"},
    {"status": "Pushing", "progressDetail": {"current": 542208, "total": 169149896}, "progress": "[>  ]",
     "id": "6cea3e0e94d7"},
    {"status": "Pushed", "progressDetail": {}, "id": "6cea3e0e94d7"},
    {"status": "Layer already exists", "progressDetail": {}, "id": "5f70bf18a086"},
    {"status": "Mounted from org/other", "progressDetail": {}, "id": "0468a6bbf2dd"},
    {"status": f"t1: digest: {DIGEST} size: 528"},
    {"progressDetail": {}, "aux": {"Tag": "t1", "Digest": DIGEST, "Size": 528}},
]
NO_LOGIN = [*GOOD_STREAM[:2], {"errorDetail": {"message": "no basic auth credentials"},
                               "error": "no basic auth credentials"}]
DENIED = [{"error": "denied: requested access to the resource is denied"}]


def test_stream_gives_digest_and_progress(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, int, int | None]] = []
    with caplog.at_level(logging.INFO, logger="modelarts_images.engine.push"):
        digest, size, counts = publishing.read_push_stream(
            GOOD_STREAM, reference=REFERENCE, progress=lambda *a: seen.append(a))
    assert (digest, size) == (DIGEST, 528)
    assert counts == (1, 2, 542208)  # one layer sent (542208 bytes as the engine counted), two already there
    assert seen == [(f"{REFERENCE} 6cea3e0e94d7", 542208, 169149896),
                    (f"{REFERENCE} 6cea3e0e94d7", 169149896, 169149896)]
    messages = [r.getMessage() for r in caplog.records]
    assert f"{REFERENCE}: 6cea3e0e94d7: Pushed" in messages


def test_digest_from_status_line_alone() -> None:
    assert publishing.read_push_stream(GOOD_STREAM[:-1], reference=REFERENCE)[:2] == (DIGEST, 528)


def test_stream_without_digest_is_an_error() -> None:
    # An engine failure (EngineError): the push step raises it again as its RegistryError (pipeline.stage).
    with pytest.raises(EngineError, match=r"ended without the registry's digest"):
        publishing.read_push_stream(GOOD_STREAM[:4], reference=REFERENCE)


def test_in_band_auth_error_without_login(tmp_path: Path) -> None:
    # The engine's side: a refusal for want of a login, in the engine's own words.
    with pytest.raises(RegistryRefusedError) as refused:
        publishing.read_push_stream(NO_LOGIN, reference=REFERENCE)
    assert refused.value.kind is Refusal.AUTH and refused.value.detail == "no basic auth credentials"
    # The publisher's: an anonymous push (no credentials anywhere) that the registry refuses says what to set.
    state = State(auth="none")
    with serve(state) as host:
        engine = StreamEngine(NO_LOGIN)
        with pytest.raises(RegistryError, match=r"requires a login \(no basic auth credentials\); set "
                                                "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD .*, then run "
                                                "`inv login`") as e:
            publisher.push_images([image_at(host)], push_options(tmp_path), engine=engine, env={})
    assert e.value.exit_code == 6
    assert engine.logins == [] and [p[:2] for p in engine.pushes] == [(f"{host}/org/repo", "t1")]


def test_in_band_denied_with_login_points_at_the_organization(tmp_path: Path) -> None:
    with pytest.raises(RegistryRefusedError) as refused:
        publishing.read_push_stream(DENIED, reference=REFERENCE)
    assert refused.value.kind is Refusal.AUTH
    with serve(State()) as host:
        engine = StreamEngine(DENIED)
        with pytest.raises(RegistryError, match=r"may not push to org/repo .*organization 'org' exist") as e:
            publisher.push_images([image_at(host)], push_options(tmp_path), engine=engine, env=LOGIN_ENV)
    assert e.value.exit_code == 6
    assert [(login.registry, login.username) for login in engine.logins] == [(host, USER)]
    assert engine.pushes[0][2] is not None  # pushed with the login's auth


def test_in_band_errors_are_masked(tmp_path: Path) -> None:
    events = [{"errorDetail": {"message": "something odd with pw-xyz-123"}, "error": "x"}]
    with pytest.raises(RegistryRefusedError) as e:
        publishing.read_push_stream(events, reference=REFERENCE, secrets=["pw-xyz-123"])
    assert e.value.kind is Refusal.OTHER
    assert "pw-xyz-123" not in str(e.value) and "***" in str(e.value)
    assert "pw-xyz-123" not in e.value.detail and "***" in e.value.detail
    # The publisher hands the login's secrets to the engine, so the engine's words about them come back masked.
    with serve(State()) as host:
        engine = StreamEngine([{"error": f"something odd with {PASSWORD}"}])
        with pytest.raises(RegistryError, match=r"failed: something odd with \*\*\*$") as caught:
            publisher.push_images([image_at(host)], push_options(tmp_path), engine=engine, env=LOGIN_ENV)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD in engine.pushes[0][3]


@pytest.mark.parametrize(("message", "kind"), [
    ('Get "http://127.0.0.1:5742/v2/": dial tcp 127.0.0.1:5742: connect: connection refused', None),
    ("received unexpected HTTP status: 500 Internal Server Error", None),
    ("received unexpected HTTP status: 503 Service Unavailable", None),
    ("net/http: TLS handshake timeout", None),
    ("toomanyrequests: rate limit", None),
    ("login attempt to http://127.0.0.1:5741/v2/ failed with status: 401 Unauthorized", Refusal.AUTH),
    ("no basic auth credentials", Refusal.AUTH),
    ("denied: requested access to the resource is denied", Refusal.AUTH),
    ("manifest invalid: manifest invalid", Refusal.OTHER),
    ("blob upload unknown sha256:ab401c5001234", Refusal.OTHER),
    ("tag does not exist: 127.0.0.1:5000/org/repo:t1", Refusal.OTHER),
    ("An image does not exist locally with the tag: 127.0.0.1:5000/org/repo", Refusal.NOT_LOCAL),
    ("No such image: 127.0.0.1:5000/org/repo:t1", Refusal.NOT_LOCAL),
])
def test_trouble(message: str, kind: Refusal | None) -> None:
    """None: transient, worth another attempt; a Refusal otherwise."""
    assert publishing.trouble(message) is kind


def test_transient_in_band_error_is_retryable() -> None:
    events = [{"error": 'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'}]
    with pytest.raises(retry.TransientError):
        publishing.read_push_stream(events, reference=REFERENCE)


def test_progress_never_passes_the_total() -> None:
    seen: list[tuple[str, int, int | None]] = []
    events = [{"status": "Pushing", "progressDetail": {"current": 170_000_000, "total": 169_149_896}, "id": "l1"},
              *GOOD_STREAM[4:]]
    publishing.read_push_stream(events, reference=REFERENCE, progress=lambda *a: seen.append(a))
    assert seen == [(f"{REFERENCE} l1", 169_149_896, 169_149_896)]


# --------------------------------------------------------------------------------------------------------------
# The publisher over the loopback registry and an engine that feeds event streams through the real reader

LOGIN_ENV = {"MODELARTS_REGISTRY_USER": USER, "MODELARTS_REGISTRY_PASSWORD": PASSWORD}


class StreamEngine(FakeEngine):
    """A local image with the config digest the loopback manifests name, a login that is accepted, and a push
    whose events go through publishing.read_push_stream with the secrets the publisher handed over."""

    def __init__(self, events: Sequence[dict[str, Any]], *, on_push: Callable[[], None] | None = None) -> None:
        self.events = events
        self.on_push = on_push  # what the registry receives, for a push that goes through
        self.logins: list[RegistryLogin] = []
        self.pushes: list[tuple[str, str, RegistryAuth | None, tuple[str, ...]]] = []

    def image(self, reference: str) -> ImageConfig | None:
        return image_config(reference, image_id=CONFIG_DIGEST)

    def login(self, login: RegistryLogin) -> RegistryAuth:
        self.logins.append(login)
        return RegistryAuth(config=publishing.auth_config(login))

    def push(self, repository: str, tag: str, *, auth: RegistryAuth | None, secrets: tuple[str, ...] = (),
             progress: ProgressCallback | None = None) -> Pushed:
        self.pushes.append((repository, tag, auth, secrets))
        if self.on_push is not None:
            self.on_push()
        digest, size, (sent, there, sent_bytes) = publishing.read_push_stream(
            self.events, reference=f"{repository}:{tag}", secrets=secrets, progress=progress)
        return Pushed(reference=f"{repository}:{tag}", digest=digest, manifest_size=size, attempts=1,
                      layers_sent=sent, layers_there=there, bytes_sent=sent_bytes)


def image_at(host: str) -> ImageSpec:
    """A versions.yaml entry whose reference is host/org/repo:t1."""
    return ImageSpec(
        id="push-test", default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag="t1", registry=host, organization="org", repository="repo", base_image="base", pip_index="",
        apt_mirror="http://repo.huaweicloud.com", installer=Artifact(url="https://example.invalid/i.sh", sha256=None),
        wheels=(),
    )


def push_options(tmp_path: Path, **overrides: Any) -> PushOptions:
    values: dict[str, Any] = {"reports_dir": tmp_path / "reports", "use_docker_config": False, "retries": 0,
                              "backoff": 0.01}
    return PushOptions(**{**values, **overrides})


def test_a_record_that_cannot_be_written_says_the_push_went_through(tmp_path: Path) -> None:
    body = manifest_body()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    state = State()
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    with serve(state) as host:
        def receive() -> None:
            state.manifests["org/repo:t1"] = (registry.DOCKER_MANIFEST, body)

        engine = StreamEngine([{"status": f"t1: digest: {digest} size: {len(body)}"}], on_push=receive)
        with pytest.raises(RegistryError) as caught:
            publisher.push_images([image_at(host)], push_options(tmp_path, reports_dir=tmp_path / "blocker" / "r"),
                                  engine=engine, env=LOGIN_ENV)
    assert caught.value.exit_code == 6
    assert str(caught.value).startswith(f"push-test: pushed {host}/org/repo:t1 as {digest}, but cannot write the "
                                        f"push record {tmp_path / 'blocker' / 'r' / 'push-push-test.json'}: ")
    assert isinstance(caught.value.__cause__, WriteError)
    assert len(engine.pushes) == 1


def test_a_registry_reply_is_read_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile registry's endless manifest is cut at the bound instead of filling the memory."""

    class Endless(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", registry.DOCKER_MANIFEST)
            self.end_headers()
            try:
                for _ in range(4096):  # bounded: 256 MiB at most, far past the bound below
                    self.wfile.write(b"{" * 65536)
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    monkeypatch.setattr(registry, "MAX_REPLY_BYTES", 1 << 20)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with registry.Registry(f"127.0.0.1:{server.server_port}", None, retries=0) as api, \
                pytest.raises(RegistryError, match=r"answered more than 1048576 bytes") as caught:
            api.manifest("o/r", "t")
        assert caught.value.exit_code == 6
    finally:
        server.shutdown()
        server.server_close()


def test_retag_puts_the_same_manifest_under_the_new_tag() -> None:
    state = State(manifests={"org/repo:staged": (registry.DOCKER_MANIFEST, manifest_body())})
    with serve(state) as host, registry.Registry(host, creds(host)) as client:
        digest = client.retag("org/repo", "staged", "2.1.0")
        assert state.manifests["org/repo:2.1.0"] == state.manifests["org/repo:staged"]
        assert digest == "sha256:" + hashlib.sha256(manifest_body()).hexdigest()
        assert client.manifest("org/repo", "2.1.0") == client.manifest("org/repo", "staged")
    puts = [request for request in state.requests if request[0] == "PUT"]
    assert puts and puts[-1][2]["Content-Type"] == registry.DOCKER_MANIFEST


def test_retag_of_an_absent_tag_is_named() -> None:
    with serve(State()) as host, registry.Registry(host, creds(host)) as client, pytest.raises(
            RegistryError, match=r"org/repo:staged is not in the registry: nothing to tag 2.1.0"):
        client.retag("org/repo", "staged", "2.1.0")


def release_of(state: State, host: str, *, replace: bool = False) -> publisher.Released:
    image = ImageSpec(id="p", default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None,
                      torchaudio=None, tag="2.13.0-cpu", registry=host, organization="org", repository="repo",
                      base_image="ubuntu:22.04", pip_index="", apt_mirror="",
                      installer=Artifact(url="https://x.invalid/i.sh", sha256=None), wheels=())
    staged = dataclasses.replace(image, tag="2.13.0-cpu-staging-0123456789ab")
    options = PushOptions(reports_dir=Path("/nonexistent"), replace_tags=replace, retries=0, backoff=0.01)
    return publisher.release(image, staged, options, credentials=creds(host))


def test_a_release_gives_the_staged_image_its_own_tag() -> None:
    state = State(manifests={"org/repo:2.13.0-cpu-staging-0123456789ab": (registry.DOCKER_MANIFEST, manifest_body())})
    with serve(state) as host:
        released = release_of(state, host)
    assert state.manifests["org/repo:2.13.0-cpu"] == state.manifests["org/repo:2.13.0-cpu-staging-0123456789ab"]
    assert released.reference.endswith("/org/repo:2.13.0-cpu") and released.previous is None
    assert released.digest == "sha256:" + hashlib.sha256(manifest_body()).hexdigest()


def test_a_release_tag_naming_another_image_is_kept_unless_replace_tag() -> None:
    other = manifest_body(registry.OCI_MANIFEST)
    state = State(manifests={"org/repo:2.13.0-cpu-staging-0123456789ab": (registry.DOCKER_MANIFEST, manifest_body()),
                             "org/repo:2.13.0-cpu": (registry.OCI_MANIFEST, other)})
    with serve(state) as host:
        with pytest.raises(RegistryError, match=r"refusing to release .* the tag already names sha256:.*--replace-tag"):
            release_of(state, host)
        assert state.manifests["org/repo:2.13.0-cpu"][1] == other
        released = release_of(state, host, replace=True)
    assert released.previous == "sha256:" + hashlib.sha256(other).hexdigest()

