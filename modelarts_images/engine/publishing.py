"""Registries through the engine: log in, tag and push with the docker SDK, reading every event of the push.

- `login()`: the engine's /auth endpoint (`client.login(..., reauth=True)`): the password travels in the API
  request body, never in a process argument list, and nothing is written to a docker config file.
- `push()`: `client.api.push(stream=True, decode=True, auth_config=...)`: layer progress to the
  `modelarts_images.engine.push` logger (and an optional progress callback), in-band ``error`` /
  ``errorDetail`` (the engine reports a failed push with HTTP 200) as RegistryRefusedError, and the pushed digest
  from the ``aux`` event or the ``<tag>: digest: sha256:… size: N`` status line.
- Connection trouble and 5xx-looking errors are retried (shared.retry), as often as their kind deserves
  (http/failures.py: a name that does not resolve, TLS and a proxy's refusal never, a refused connection once);
  a refused login or push is not.
- Every log line and message is masked with the login's secrets.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import docker
import docker.auth
import docker.errors
import requests

from modelarts_images.engine.api import Pushed, Refusal, RegistryAuth, RegistryLogin, RegistryRefusedError
from modelarts_images.errors import EngineError
from modelarts_images.http import failures
from modelarts_images.shared import redact, retry
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.shared.text import one_line

log = logging.getLogger("modelarts_images.engine.push")

PROGRESS_LOG_INTERVAL = 5.0  # seconds between 'Pushing' lines for one layer in the log

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




def trouble(message: str) -> Refusal | None:
    """What an engine error message means: a refusal of some kind, or None when another attempt may work."""
    if _AUTH_TROUBLE.search(message):
        return Refusal.AUTH
    if _TRANSIENT_TROUBLE.search(message):
        return None
    if "does not exist locally" in message or "no such image" in message.lower():
        return Refusal.NOT_LOCAL
    return Refusal.OTHER


def _say(level: int, text: str, secrets: Sequence[str]) -> None:
    log.log(level, "%s", redact.text(text, secrets))


# --------------------------------------------------------------------------------------------------------------
# Login and stored logins


def auth_config(login: RegistryLogin, identity_token: str | None = None) -> dict[str, str]:
    """The auth_config the SDK sends to the engine (in the X-Registry-Auth header, never on a command line)."""
    if identity_token:
        return {"identitytoken": identity_token, "serveraddress": login.registry}
    return {"username": login.username, "password": login.password, "serveraddress": login.registry}


def login(client: docker.DockerClient, credentials: RegistryLogin, *, backoff: retry.Backoff) -> RegistryAuth:
    """Log in through the engine; the auth for push. RegistryRefusedError when refused, EngineError when unreachable."""
    # The engine's errors may quote the user name, and SWR's long-term one carries the AK ('cn-north-4@<AK>'):
    # every message and retry warning shows it as swr does everywhere else (cut), the password masked.
    hide = Credentials(registry=credentials.registry, username=credentials.username, password=credentials.password,
                       source="the engine's login").hide

    def once(attempt: int) -> Any:
        try:
            return client.login(credentials.username, credentials.password, registry=credentials.registry,
                                reauth=True)
        except docker.errors.APIError as error:
            detail = hide(str(error.explanation or error))
            kind = trouble(detail)
            if kind is None:
                raise _unreachable(f"login to {credentials.registry} failed", detail) from None
            raise RegistryRefusedError(f"login to {credentials.registry} failed: {one_line(detail, 400)}", kind=kind,
                                  detail=detail) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise retry.TransientError(f"the Docker Engine does not answer: {hide(str(error))}") from None

    def give_up(attempts: int, failure: retry.TransientError) -> EngineError:
        return EngineError(f"login to {credentials.registry} failed after {attempts} attempt(s): "
                           f"{hide(one_line(failure.final, 600))}")

    answer = retry.call(once, backoff=backoff, describe=f"login to {credentials.registry}", give_up=give_up,
                        log=log, mask=lambda text: hide(one_line(text, 400)))
    token = answer.get("IdentityToken") if isinstance(answer, Mapping) else None
    return RegistryAuth(config=auth_config(credentials, token if isinstance(token, str) else None))


def stored_login(registry: str) -> RegistryLogin | None:
    """A user and password `docker login` stored for `registry` (docker config file or credential helper)."""
    try:
        found = docker.auth.resolve_authconfig(docker.auth.load_config(), registry)
    except Exception:  # an unreadable config or a broken credential helper means: nothing stored
        return None
    if not isinstance(found, Mapping) or not found.get("username") or not found.get("password"):
        return None
    return RegistryLogin(registry=registry, username=str(found["username"]), password=str(found["password"]))


def tag(client: docker.DockerClient, source: str, repository: str, tag: str) -> None:
    """Give the local image `source` the name repository:tag (the engine's tag API)."""
    try:
        ok = client.api.tag(source, repository, tag, force=True)
    except docker.errors.APIError as error:
        raise EngineError(f"cannot tag {source} as {repository}:{tag}: {error.explanation or error}") from None
    if ok is False:
        raise EngineError(f"the engine did not tag {source} as {repository}:{tag}")
    log.info("tagged %s as %s:%s", source, repository, tag)


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
        self.sent: dict[str, int] = {}  # the most bytes the engine said it had sent of each layer
        self.logged_at: dict[str, float] = {}

    def counts(self) -> tuple[int, int, int]:
        """(layers sent, layers the registry had, bytes sent) once the push is over."""
        sent = [layer for layer, status in self.status.items() if status == "Pushed"]
        there = [layer for layer, status in self.status.items()
                 if status == "Layer already exists" or status.startswith("Mounted from")]
        return len(sent), len(there), sum(self.sent.get(layer, 0) for layer in sent)

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
        if isinstance(current, int) and status == "Pushing":
            self.sent[layer] = max(current, self.sent.get(layer, 0))
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
        elif now - self.logged_at[layer] >= PROGRESS_LOG_INTERVAL:
            self.logged_at[layer] = now
            _say(logging.INFO, f"{self.reference}: {layer}: {status} {event.get('progress', '')}".rstrip(),
                 self.secrets)


def read_push_stream(
    events: Iterable[Mapping[str, Any]],
    *,
    reference: str,
    secrets: Sequence[str] = (),
    progress: ProgressCallback | None = None,
) -> tuple[str, int | None, tuple[int, int, int]]:
    """(digest, manifest size, (layers sent, layers the registry had, bytes sent)) from the push's event stream.

    An in-band error raises retry.TransientError when another attempt may work (connection trouble, 5xx),
    RegistryRefusedError otherwise; a stream without a digest raises EngineError.
    """
    layers = _Layers(reference, secrets, progress)
    digest: str | None = None
    size: int | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail")
            message = str((detail.get("message") if isinstance(detail, Mapping) else None) or event.get("error"))
            raise _failure(reference, redact.text(message, secrets))
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
        raise EngineError(f"push of {reference} ended without the registry's digest: the engine's stream "
                          "stopped early (see the log above)")
    return digest, size, layers.counts()


def _failure(reference: str, message: str) -> Exception:
    kind = trouble(message)
    if kind is None:
        return _unreachable(f"push of {reference} failed", message)
    return RegistryRefusedError(f"push of {reference} failed: {message}", kind=kind, detail=message)


def _unreachable(doing: str, detail: str) -> Exception:
    """An engine error that is no refusal: the registry out of reach, said in one line with what to do. A name
    that does not resolve, TLS and a proxy's refusal are not retried (the engine's settings decide them), a
    refused connection once, the rest (timeouts, resets, 5xx) as the backoff allows (http/failures.py)."""
    failure = failures.classify_text(detail, failures.ENGINE)
    if failure is None:
        return retry.TransientError(detail)
    if not failure.transient:
        return RegistryRefusedError(f"{doing}: {failure.text}", kind=Refusal.OTHER, detail=failure.text)
    return failure.retry()


def push(client: docker.DockerClient, repository: str, tag: str, *, auth: RegistryAuth | None,
         secrets: Sequence[str] = (), backoff: retry.Backoff, progress: ProgressCallback | None = None) -> Pushed:
    """Push the local image repository:tag; the digest the registry stored.

    `auth` is what login() returned; None pushes with whatever the engine's client already holds.
    """
    reference = f"{repository}:{tag}"
    secrets = (*secrets, *(auth.secrets if auth else ()))

    def once(attempt: int) -> Pushed:
        _say(logging.INFO, f"pushing {reference}" + (f" (attempt {attempt})" if attempt > 1 else ""), secrets)
        try:
            events = client.api.push(repository, tag, stream=True, decode=True,
                                     auth_config=dict(auth.config) if auth else None)
            digest, size, (sent, there, sent_bytes) = read_push_stream(events, reference=reference, secrets=secrets,
                                                                       progress=progress)
        except docker.errors.APIError as error:
            raise _failure(reference, redact.text(str(error.explanation or error), secrets)) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise retry.TransientError(f"the Docker Engine connection failed: {redact.text(str(error), secrets)}"
                                       ) from None
        _say(logging.INFO, f"pushed {reference}: {digest}", secrets)
        return Pushed(reference=reference, digest=digest, manifest_size=size, attempts=attempt, layers_sent=sent,
                      layers_there=there, bytes_sent=sent_bytes)

    def give_up(attempts: int, failure: retry.TransientError) -> EngineError:
        return EngineError(f"push of {reference} failed after {attempts} attempts: {one_line(failure.final, 600)}")

    return retry.call(once, backoff=backoff, describe=f"push of {reference}", give_up=give_up, log=log,
                      mask=lambda text: redact.text(one_line(text, 400), secrets))
