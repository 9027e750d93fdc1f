"""The HTTP edge of publishing: read manifests through a registry's v2 API (requests only).

- Plain http for loopback registries (127.0.0.0/8, localhost, ::1; the engine allows those without TLS too),
  https for every other host.
- Authentication as registries ask for it: a 401 with ``WWW-Authenticate: Basic`` is answered with the user and
  password; ``Bearer realm=...,service=...,scope=...`` is answered by fetching a token from the realm (with the
  user and password when there are some) and sending it. Credentials never travel over plain http to a host
  that is not loopback.
- ``HEAD``/``GET /v2/<name>/manifests/<tag>`` with Accept for docker v2 schema 2, docker manifest lists, OCI
  manifests and OCI indexes: the digest (Docker-Content-Digest, checked against the body's sha256 on GET) and
  the media type; 404 means the tag is absent.
- Connection timeouts and resets, bodies cut short, 429 and 5xx answers are retried with exponential backoff,
  waiting at least what a Retry-After header asks for (up to retry.MAX_RETRY_AFTER); a refused connection is
  retried once (http/failures.py says why); everything else (a name that does not resolve, TLS, a proxy's
  refusal, a malformed token realm, a redirect loop, ...) fails at once with RegistryError (exit 6), in one line
  that names the cause and the next step.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests

from modelarts_images.errors import RegistryError
from modelarts_images.http import failures
from modelarts_images.shared import redact, retry
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.text import one_line

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX))
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
# What the API answers here is manifests, image configs, tokens and error documents: kilobytes, a few MB for an
# image config with a long history. A registry that sends more, or keeps sending, is cut off, not read whole.
MAX_REPLY_BYTES = 64 * 1024 * 1024
REPLY_DEADLINE_S = 120.0

_CHALLENGE = re.compile(r"^\s*(?P<scheme>[A-Za-z]+)\s*(?P<params>.*)$")
_PARAM = re.compile(r'(?P<key>[A-Za-z_]+)\s*=\s*"(?P<value>[^"]*)"')


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a tag resolves to in the registry."""

    digest: str  # sha256:<hex> of the manifest bytes
    media_type: str
    size: int  # bytes of the manifest itself
    config_digest: str | None  # the image config (= the local image id) of a single manifest; None for an index
    content_size: int | None  # compressed bytes of config + layers of a single manifest; None for an index

    @property
    def is_docker_v2(self) -> bool:
        """A single docker v2 schema 2 manifest: what SWR accepts."""
        return self.media_type == DOCKER_MANIFEST


def _host(registry: str) -> str:
    """'127.0.0.1:5000' -> '127.0.0.1'; '[::1]:5000' -> '::1'."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.rpartition(":")[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    host = _host(registry).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(registry: str) -> str:
    """Where the v2 API answers: plain http for loopback registries, https otherwise."""
    return f"{'http' if is_loopback(registry) else 'https'}://{registry}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://a/token",service="r"' -> ('bearer', {'realm': ..., 'service': ...})."""
    match = _CHALLENGE.match(header)
    if match is None:
        return "", {}
    params = {m.group("key").lower(): m.group("value") for m in _PARAM.finditer(match.group("params"))}
    return match.group("scheme").lower(), params


class LoginRejectedError(RegistryError):
    """The registry refused the credentials that were sent (401 to them); `answer` is its status line."""

    def __init__(self, message: str, *, answer: str) -> None:
        super().__init__(message)
        self.answer = answer


class Registry:
    """A registry's v2 API for one host, with its login. Use as a context manager, or call close()."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials | None = None,
        *,
        session: requests.Session | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: tuple[float, float] = (10.0, 30.0),
        login_hint: str = "",
    ) -> None:
        self.registry = registry
        self.url = base_url(registry)
        self.credentials = credentials
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.login_hint = login_hint  # what the caller's user sets for a login, for the message when none is found
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        self._authorization: dict[str, str] = {}  # scope -> Authorization header value

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    # ----------------------------------------------------------------------------------------------------------
    # Manifests

    def head_manifest(self, name: str, tag: str) -> tuple[str, str] | None:
        """(digest, media type) of name:tag, or None when the tag is absent."""
        response = self._get_or_head("HEAD", name, tag)
        if response is None:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            manifest = self.manifest(name, tag)  # a registry that omits the header on HEAD: read the body
            return None if manifest is None else (manifest.digest, manifest.media_type)
        return digest, _media_type(response)

    def manifest(self, name: str, tag: str) -> Manifest | None:
        """The manifest name:tag resolves to, or None when the tag is absent."""
        response = self._get_or_head("GET", name, tag)
        if response is None:
            return None
        body = response.content
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        digest = response.headers.get("Docker-Content-Digest") or computed
        if digest.startswith("sha256:") and digest != computed:
            raise RegistryError(f"{self.registry}/{name}:{tag}: the registry says the manifest digest is {digest}, "
                                f"but its bytes hash to {computed}")
        media_type = _media_type(response)
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply for json
            raise RegistryError(f"{self.registry}/{name}:{tag}: the manifest is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise RegistryError(f"{self.registry}/{name}:{tag}: the manifest is not a JSON object")
        media_type = media_type or str(document.get("mediaType", ""))
        config_digest: str | None = None
        content_size: int | None = None
        config_entry = document.get("config")
        if media_type not in INDEX_TYPES and isinstance(config_entry, dict):
            config_digest = str(config_entry.get("digest")) if config_entry.get("digest") else None
            listed = document.get("layers")
            layers: list[Any] = listed if isinstance(listed, list) else []
            sizes = [config_entry.get("size", 0), *(item.get("size", 0) for item in layers if isinstance(item, dict))]
            content_size = sum(int(size) for size in sizes if isinstance(size, int))
        return Manifest(digest=digest, media_type=media_type, size=len(body), config_digest=config_digest,
                        content_size=content_size)

    def image_labels(self, name: str, manifest: Manifest) -> dict[str, str]:
        """The labels in the image config a single manifest names (its blob, checked against its digest)."""
        digest = manifest.config_digest
        if digest is None:
            raise RegistryError(f"{self.registry}/{name}@{manifest.digest}: a {manifest.media_type} names no image "
                                "config")
        response = self.request("GET", f"/v2/{name}/blobs/{digest}", scope=f"repository:{name}:pull")
        if response.status_code != 200:
            raise RegistryError(self._explain(response, f"reading the image config {digest} of {name}"))
        computed = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if digest.startswith("sha256:") and computed != digest:
            raise RegistryError(f"{self.registry}/{name}: the image config {digest} hashes to {computed}")
        try:
            document: Any = json.loads(response.content)
            labels = (document.get("config") or {}).get("Labels") or {}
        except (ValueError, AttributeError, RecursionError) as error:
            raise RegistryError(f"{self.registry}/{name}: the image config {digest} is not an image config: "
                                f"{error}") from None
        return {str(key): str(value) for key, value in labels.items()} if isinstance(labels, dict) else {}

    def retag(self, name: str, tag: str, new_tag: str) -> str:
        """Put name:tag's manifest, byte for byte, under new_tag (no layer is sent again); the digest the
        registry gives it, which must be the source's."""
        source = self._get_or_head("GET", name, tag)
        if source is None:
            raise RegistryError(f"{self.registry}/{name}:{tag} is not in the registry: nothing to tag {new_tag}")
        body = source.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = self.request("PUT", f"/v2/{name}/manifests/{new_tag}", scope=f"repository:{name}:pull,push",
                                headers={"Content-Type": _media_type(source) or DOCKER_MANIFEST}, body=body)
        if response.status_code not in (200, 201):
            raise RegistryError(self._explain(response, f"tagging {name}:{tag} as {new_tag}"))
        given = response.headers.get("Docker-Content-Digest") or digest
        if given != digest:
            raise RegistryError(f"{self.registry}/{name}:{new_tag}: the registry stored {given}, but the manifest of "
                                f"{tag} is {digest}")
        return digest

    def _get_or_head(self, method: str, name: str, tag: str) -> requests.Response | None:
        response = self.request(method, f"/v2/{name}/manifests/{tag}", scope=f"repository:{name}:pull",
                                headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(self._explain(response, f"reading {name}:{tag}"))
        return response

    def version_check(self) -> tuple[requests.Response, bool]:
        """GET /v2/, logging in as a 401 asks: the answer (any status but 401) and whether a login was sent.
        LoginRejectedError when the registry refuses the credentials."""
        response = self.request("GET", "/v2/", scope="")
        return response, bool(self._authorization)

    # ----------------------------------------------------------------------------------------------------------
    # Requests, authentication, retries

    def request(self, method: str, path: str, *, scope: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> requests.Response:
        """One API request with authentication and retries; the response of any status but 401."""
        headers = dict(headers or {})
        url = self.url + path
        if scope in self._authorization:
            headers["Authorization"] = self._authorization[scope]
        response = self._send(method, url, headers, body=body)
        if response.status_code != 401:
            return response
        header = self._authenticate(response, scope)
        headers["Authorization"] = header
        response = self._send(method, url, headers, body=body)
        if response.status_code == 401:
            raise self._rejected(response)
        self._authorization[scope] = header
        return response

    def _send(self, method: str, url: str, headers: dict[str, str], auth: tuple[str, str] | None = None,
              params: dict[str, str] | None = None, body: bytes | None = None) -> requests.Response:
        def once(attempt: int) -> requests.Response:
            try:
                response = self.session.request(method, url, headers=headers, auth=auth, params=params, data=body,
                                                timeout=self.timeout, allow_redirects=True, stream=True)
                _read_bounded(response, f"{self.registry}: {method} {redact.url(url)}")
            except requests.exceptions.ReadTimeout:
                raise retry.TransientError(f"no answer within {self.timeout[1]:g}s") from None
            except requests.exceptions.ChunkedEncodingError:
                raise retry.TransientError("the reply was cut short") from None
            except requests.RequestException as error:
                failure = failures.classify(error, url, failures.REGISTRY, connect_timeout=self.timeout[0],
                                            read_timeout=self.timeout[1])
                if failure is None:  # a malformed URL, a redirect loop: retrying cannot help
                    raise RegistryError(self._mask(
                        f"{self.registry}: {method} {redact.url(url)} failed: {one_line(str(error))}")) from None
                if failure.transient:
                    raise failure.retry() from None
                # A name that does not resolve, TLS, a proxy's refusal: no retry changes this machine's settings.
                raise RegistryError(self._mask(f"cannot reach the registry {self.registry} ({method} "
                                               f"{redact.url(url)}): {failure.text}")) from None
            if response.status_code == 429 or response.status_code >= 500:
                # A rate-limited registry says when to come back; asking sooner only earns another 429.
                raise retry.TransientError(f"HTTP {response.status_code} {response.reason}",
                                           retry_after=retry.parse_retry_after(response.headers.get("Retry-After")))
            return response

        def give_up(attempts: int, failure: retry.TransientError) -> RegistryError:
            return RegistryError(self._mask(f"cannot reach the registry {self.registry} ({method} {redact.url(url)}) "
                                            f"after {attempts} attempts: {failure.final}"))

        return retry.call(once, backoff=retry.Backoff(retries=self.retries, base=self.backoff),
                          describe=f"{method} {redact.url(url)}", give_up=give_up, log=log, mask=self._mask)

    def _authenticate(self, response: requests.Response, scope: str) -> str:
        """The Authorization header answering the 401's challenge."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryError(self._login_needed())
            if not (self.url.startswith("https://") or is_loopback(self.registry)):
                raise RegistryError(f"{self.registry} asks for a password over plain http: refusing to send it")
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if scheme == "bearer" and params.get("realm"):
            return "Bearer " + self._token(params, scope)
        raise RegistryError(f"{self.registry} wants an authentication this tool does not speak: "
                            f"{response.headers.get('WWW-Authenticate', '(no WWW-Authenticate header)')!r}")

    def _token(self, params: dict[str, str], scope: str) -> str:
        realm = params["realm"]
        query = {"scope": params.get("scope") or scope} if params.get("scope") or scope else {}
        if params.get("service"):
            query["service"] = params["service"]
        auth = None
        if self.credentials is not None:
            if not (realm.startswith("https://") or is_loopback(_host_of_url(realm))):
                raise RegistryError(f"{self.registry}: the token realm {realm} is not https: refusing to send a "
                                    "password to it")
            auth = (self.credentials.username, self.credentials.password)
        response = self._send("GET", realm, {}, auth=auth, params=query)
        if response.status_code == 401:
            raise self._rejected(response)
        if response.status_code != 200:
            raise RegistryError(self._explain(response, f"getting a token from {realm}"))
        try:
            answer = response.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deeply for json: no token either way
            answer = None
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: the token service {realm} answered without a token")
        return token

    # ----------------------------------------------------------------------------------------------------------
    # Messages

    def _mask(self, text: str) -> str:
        return self.credentials.hide(text) if self.credentials else redact.text(text)

    def _login_needed(self) -> str:
        return f"{self.registry} requires a login and no credentials were found" + (
            f": {self.login_hint}" if self.login_hint else "")

    def _rejected(self, response: requests.Response) -> RegistryError:
        if self.credentials is None:
            return RegistryError(self._login_needed())
        return LoginRejectedError(self.credentials.rejected(_said(response)),
                             answer=f"HTTP {response.status_code} {response.reason}".rstrip())

    def _explain(self, response: requests.Response, doing: str) -> str:
        if response.status_code == 403:
            who = self.credentials.shown_user if self.credentials else "anonymous"
            return self._mask(f"{self.registry} denied {who} {doing} (HTTP 403): the user lacks access to it, or "
                              f"the organization does not exist{_detail(response)}")
        return self._mask(f"{self.registry}: {doing} failed with HTTP {response.status_code} {response.reason}"
                          f"{_detail(response)}")


def _media_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip()


def _host_of_url(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _said(response: requests.Response) -> str:
    """The registry's own error message, if its body has the v2 error format; '' otherwise."""
    try:
        errors = response.json().get("errors")
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return ""
    return "; ".join(messages)


def _detail(response: requests.Response) -> str:
    """The registry's own error message in parentheses, after a space; '' when it gives none."""
    said = _said(response)
    return f" ({said})" if said else ""


def _read_bounded(response: requests.Response, what: str) -> None:
    """Read the streamed body into the response (so .content and .json() work), at most MAX_REPLY_BYTES within
    REPLY_DEADLINE_S: RegistryError beyond the size, a transient failure past the deadline."""
    started, body = time.monotonic(), bytearray()
    try:
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) > MAX_REPLY_BYTES:
                raise RegistryError(f"{what} answered more than {MAX_REPLY_BYTES} bytes: not a registry reply")
            if time.monotonic() - started > REPLY_DEADLINE_S:
                raise retry.TransientError(f"the reply took more than {REPLY_DEADLINE_S:.0f} s")
    finally:
        response.close()
    response._content = bytes(body)  # requests' own place for a body that has been read
