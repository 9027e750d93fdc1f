"""The Docker Engine side of publishing: login, tag and push through the docker SDK (self-contained; it is meant
to be merged into engine.py).

- `login()`: the engine's /auth endpoint (`client.login(..., reauth=True)`): the password travels in the API
  request body, never in a process argument list, and nothing is written to a docker config file.
- `push()`: `client.api.push(stream=True, decode=True, auth_config=...)`, reading every event: layer progress to
  the `modelarts_images.engine.push` logger (and an optional progress callback), in-band ``error`` /
  ``errorDetail`` (the engine reports a failed push with HTTP 200) to RegistryError, and the pushed digest from
  the ``aux`` event or the ``<tag>: digest: sha256:… size: N`` status line. Connection errors and 5xx-looking
  errors are retried with exponential backoff; a refused login or push is not.
- Every log line and message is masked with the credentials' secrets.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker.auth
import docker.errors
import requests

from ..errors import RegistryError
from ..swr import Credentials, Reference, mask, missing_login_hint

log = logging.getLogger("modelarts_images.engine.push")

MAX_BACKOFF = 30.0
PROGRESS_LOG_INTERVAL = 5.0  # seconds between 'Pushing' lines for one layer in the log

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as (label, bytes_done, total_or_None) for each layer, like fetch's progress callback."""

_DIGEST_LINE = re.compile(r"^(?P<tag>\S+): digest: (?P<digest>sha256:[0-9a-f]{64}) size: (?P<size>[0-9]+)$")
_AUTH_TROUBLE = re.compile(r"no basic auth credentials|unauthorized|authentication required|denied|forbidden|"
                           r"incorrect username or password|\b40[13]\b", re.IGNORECASE)
_TRANSIENT_TROUBLE = re.compile(
    r"connection refused|connection reset|dial tcp|i/o timeout|timeout|timed out|\beof\b|no such host|"
    r"tls handshake|network is unreachable|broken pipe|toomanyrequests|too many requests|\b429\b|"
    r"(?:status|http|code)[ :]*5[0-9]{2}\b|\b5[0-9]{2} (?:internal|bad|service|gateway|http)|"
    r"internal server error|bad gateway|service unavailable|gateway timeout",
    re.IGNORECASE,
)


@dataclass(frozen=True, kw_only=True)
class Pushed:
    """A push the registry acknowledged."""

    reference: str
    digest: str  # sha256:<hex> of the manifest the registry stored
    manifest_size: int | None  # bytes of that manifest, when the stream said
    attempts: int


@dataclass(frozen=True, kw_only=True)
class LocalImage:
    reference: str
    image_id: str  # sha256:<hex> of the image config; a registry manifest's config.digest for the same image
    size: int  # uncompressed bytes, as `docker images` shows


class _TransientError(Exception):
    """A push or login failure worth another attempt."""


def kind_of(message: str) -> str:
    """'auth', 'transient' or 'other': what an engine error message means for retrying."""
    if _AUTH_TROUBLE.search(message):
        return "auth"
    if _TRANSIENT_TROUBLE.search(message):
        return "transient"
    return "other"


def _say(level: int, text: str, secrets: Sequence[str]) -> None:
    log.log(level, "%s", mask(text, secrets))


def _delay(backoff: float, attempt: int) -> float:
    return float(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF))


# --------------------------------------------------------------------------------------------------------------
# Login


def auth_config(credentials: Credentials, identity_token: str | None = None) -> dict[str, str]:
    """The auth_config the SDK sends to the engine (in the X-Registry-Auth header, never on a command line)."""
    if identity_token:
        return {"identitytoken": identity_token, "serveraddress": credentials.registry}
    return {"username": credentials.username, "password": credentials.password,
            "serveraddress": credentials.registry}


def login(client: Any, credentials: Credentials, *, retries: int = 3, backoff: float = 1.0) -> dict[str, str]:
    """Log in through the engine; returns the auth_config for push. RegistryError when refused or unreachable."""
    secrets = credentials.secrets
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = client.login(credentials.username, credentials.password, registry=credentials.registry,
                                  reauth=True)
            break
        except docker.errors.APIError as error:
            text = mask(str(error.explanation or error), secrets)
            kind = kind_of(text)
            if kind == "auth":
                raise RegistryError(f"{credentials.registry} rejected the login of {credentials.shown_user} (from "
                                    f"{credentials.source}): wrong user name or password ({_short(text)})") from None
            if kind != "transient" or attempt > retries:
                raise RegistryError(f"login to {credentials.registry} failed after {attempt} attempt(s): "
                                    f"{_short(text)}") from None
            failure = text
        except (requests.ConnectionError, requests.Timeout) as error:
            if attempt > retries:
                raise RegistryError(f"login to {credentials.registry}: the Docker Engine does not answer: "
                                    f"{_short(mask(str(error), secrets))}") from None
            failure = str(error)
        delay = _delay(backoff, attempt)
        _say(logging.WARNING, f"login to {credentials.registry}: {_short(failure)}; retrying in {delay:.2f}s "
                              f"(attempt {attempt + 1} of {retries + 1})", secrets)
        time.sleep(delay)
    token = answer.get("IdentityToken") if isinstance(answer, Mapping) else None
    _say(logging.INFO, f"logged in to {credentials.registry} as {credentials.shown_user} ({credentials.source})",
         secrets)
    return auth_config(credentials, token if isinstance(token, str) else None)


def stored_credentials(registry: str) -> Credentials | None:
    """A user and password `docker login` stored for `registry` (docker config file or credential helper)."""
    try:
        found = docker.auth.resolve_authconfig(docker.auth.load_config(), registry)
    except Exception:  # an unreadable config or a broken credential helper means: nothing stored
        return None
    if not isinstance(found, Mapping) or not found.get("username") or not found.get("password"):
        return None
    return Credentials(registry=registry, username=str(found["username"]), password=str(found["password"]),
                       source="docker config (docker login)")


# --------------------------------------------------------------------------------------------------------------
# Local images and tags


def local_image(client: Any, reference: str, *, hint: str = "") -> LocalImage:
    """The local image `reference` names; RegistryError when the engine has none."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        raise RegistryError(f"no local image {reference}: build it first{hint}") from None
    except docker.errors.APIError as error:
        raise RegistryError(f"cannot inspect {reference}: {error.explanation or error}") from None
    return LocalImage(reference=reference, image_id=str(image.id), size=int(image.attrs.get("Size") or 0))


def tag(client: Any, source: str, target: Reference) -> None:
    """Give the local image `source` the name `target` (the engine's tag API)."""
    try:
        ok = client.api.tag(source, target.repository_reference, target.tag, force=True)
    except docker.errors.APIError as error:
        raise RegistryError(f"cannot tag {source} as {target}: {error.explanation or error}") from None
    if ok is False:
        raise RegistryError(f"the engine did not tag {source} as {target}")
    log.info("tagged %s as %s", source, target)


def remove_tag(client: Any, reference: str) -> None:
    """Untag `reference` locally (the image stays while another name refers to it)."""
    try:
        client.api.remove_image(reference, noprune=True)
    except docker.errors.APIError as error:
        log.warning("could not remove the local tag %s: %s", reference, error.explanation or error)


# --------------------------------------------------------------------------------------------------------------
# Push


class _Layers:
    """Progress per layer: status changes at INFO, 'Pushing' at most every PROGRESS_LOG_INTERVAL seconds."""

    def __init__(self, reference: str, secrets: Sequence[str], progress: ProgressCallback | None) -> None:
        self.reference = reference
        self.secrets = secrets
        self.progress = progress
        self.status: dict[str, str] = {}
        self.total: dict[str, int] = {}
        self.logged_at: dict[str, float] = {}

    def __call__(self, event: Mapping[str, Any]) -> None:
        layer, status = str(event.get("id", "")), str(event.get("status", ""))
        if not layer:
            if status:
                _say(logging.INFO, f"{self.reference}: {status}", self.secrets)
            return
        detail = event.get("progressDetail")
        current = detail.get("current") if isinstance(detail, Mapping) else None
        total = detail.get("total") if isinstance(detail, Mapping) else None
        if isinstance(total, int):
            self.total[layer] = total
        if self.progress is not None:
            if isinstance(current, int):
                # The engine counts compressed bytes sent against the layer's uncompressed size: clamp.
                known = total if isinstance(total, int) and total > 0 else None
                self.progress(f"{self.reference} {layer}", min(current, known) if known else current, known)
            elif status == "Pushed" and layer in self.total:
                self.progress(f"{self.reference} {layer}", self.total[layer], self.total[layer])
        now = time.monotonic()
        if status != self.status.get(layer):
            self.status[layer] = status
            self.logged_at[layer] = now
            _say(logging.INFO, f"{self.reference}: {layer}: {status}", self.secrets)
        elif now - self.logged_at.get(layer, 0.0) >= PROGRESS_LOG_INTERVAL:
            self.logged_at[layer] = now
            _say(logging.INFO, f"{self.reference}: {layer}: {status} {event.get('progress', '')}".rstrip(),
                 self.secrets)


def read_push_stream(
    events: Iterable[Mapping[str, Any]],
    *,
    reference: Reference,
    authenticated: bool,
    secrets: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    region: str | None = None,
) -> tuple[str, int | None]:
    """(digest, manifest size) from the push's event stream; RegistryError for an in-band error.

    Raises _TransientError for an error worth retrying (connection trouble, 5xx).
    """
    layers = _Layers(str(reference), secrets, progress)
    digest: str | None = None
    size: int | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail")
            message = str((detail.get("message") if isinstance(detail, Mapping) else None) or event.get("error"))
            raise _failure(reference, mask(message, secrets), authenticated=authenticated, region=region)
        aux = event.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("Digest"), str):
            digest = str(aux["Digest"])
            size = int(aux["Size"]) if isinstance(aux.get("Size"), int) else size
            continue
        match = _DIGEST_LINE.match(str(event.get("status", "")).strip())
        if match is not None:
            digest = digest or match.group("digest")
            size = size if size is not None else int(match.group("size"))
        layers(event)
    if digest is None:
        raise RegistryError(f"push of {reference} ended without the registry's digest: the engine's stream "
                            "stopped early (see the log above)")
    return digest, size


def _failure(reference: Reference, message: str, *, authenticated: bool, region: str | None) -> Exception:
    kind = kind_of(message)
    if kind == "transient":
        return _TransientError(message)
    if kind == "auth":
        if not authenticated:
            return RegistryError(f"push of {reference} refused: {reference.registry} requires a login ({message}); "
                                 f"{missing_login_hint(reference.registry, region=region)}, then run `invoke login`")
        return RegistryError(f"push of {reference} refused by {reference.registry}: {message}. The login works, "
                             f"but may not push to {reference.name} (on SWR: does the organization "
                             f"'{reference.organization}' exist, and may this user push to it?)")
    if "does not exist locally" in message or "no such image" in message.lower():
        return RegistryError(f"push of {reference} failed: no local image with that name ({message})")
    return RegistryError(f"push of {reference} failed: {message}")


def push(
    client: Any,
    reference: Reference,
    *,
    auth: Mapping[str, str] | None,
    secrets: Sequence[str] = (),
    retries: int = 3,
    backoff: float = 1.0,
    progress: ProgressCallback | None = None,
    region: str | None = None,
) -> Pushed:
    """Push the local image named `reference`; the digest the registry stored. RegistryError on failure.

    `auth` is the auth_config from login(); None pushes with whatever the engine's client already holds.
    """
    secrets = tuple(secrets) or ((auth["password"],) if auth and auth.get("password") else ())
    attempt = 0
    while True:
        attempt += 1
        try:
            _say(logging.INFO, f"pushing {reference}" + (f" (attempt {attempt})" if attempt > 1 else ""), secrets)
            events = client.api.push(reference.repository_reference, reference.tag, stream=True, decode=True,
                                     auth_config=dict(auth) if auth else None)
            digest, size = read_push_stream(events, reference=reference, authenticated=auth is not None,
                                            secrets=secrets, progress=progress, region=region)
            _say(logging.INFO, f"pushed {reference}: {digest}", secrets)
            return Pushed(reference=str(reference), digest=digest, manifest_size=size, attempts=attempt)
        except docker.errors.APIError as error:
            text = mask(str(error.explanation or error), secrets)
            failure: Exception = _failure(reference, text, authenticated=auth is not None, region=region)
        except (requests.ConnectionError, requests.Timeout) as error:
            failure = _TransientError(f"the Docker Engine connection failed: {mask(str(error), secrets)}")
        except _TransientError as error:
            failure = error
        if not isinstance(failure, _TransientError):
            raise failure
        if attempt > retries:
            raise RegistryError(f"push of {reference} failed after {attempt} attempts: {_short(str(failure))}")
        delay = _delay(backoff, attempt)
        _say(logging.WARNING, f"push of {reference}: {_short(str(failure))}; retrying in {delay:.2f}s "
                              f"(attempt {attempt + 1} of {retries + 1})", secrets)
        time.sleep(delay)


def _short(text: str, width: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
