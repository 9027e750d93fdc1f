"""`inv login` and `inv push`: check the names, guard the tags, push, confirm, record.

For each selected image `push_images()`:

1. validates registry/organization/repository:tag and every extra tag against SWR's rules (RegistryError, exit 6);
2. finds the local image the build tagged with the reference;
3. reads every target tag from the registry first (the immutability guard): absent -> push; present with the
   same image (its config digest is the local image id) in a docker v2 manifest -> nothing to do, reported as
   "unchanged"; present with anything else -> refused unless `replace_tags` ("replaced" then). Nothing is
   pushed when any tag is refused;
4. logs in through the engine and pushes each tag, reading the digest from the push stream;
5. reads each tag back over the registry's HTTP API: it must resolve to the pushed digest, as a single docker v2
   schema 2 manifest (SWR rejects OCI indexes and attestation manifests), of the local image;
6. writes ``push-<id>.json`` under the reports directory: reference, digest, size, time and the tags.

Credentials come from the environment (see modelarts_images.publish.swr), else from what `docker login` stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelarts_images.config.tag_templates import expand_tags
from modelarts_images.engine.api import (
    Engine,
    ImageConfig,
    Refusal,
    RegistryAuth,
    RegistryLogin,
    RegistryRefusedError,
)
from modelarts_images.errors import EngineError, ModelArtsImagesError, RegistryError
from modelarts_images.http.registry import Manifest, Registry
from modelarts_images.model import ImageSpec
from modelarts_images.options import PushOptions
from modelarts_images.publish import swr
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.files import write_atomic
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.shared.text import one_line, size

log = logging.getLogger(__name__)

class Outcome(Choice):
    """What a push did to one tag (or, on a dry run, would do)."""

    PUSHED = "pushed"
    UNCHANGED = "unchanged"  # the registry holds this very image under the tag already
    REPLACED = "replaced"  # the tag named another image (--replace-tag)
    WOULD_PUSH = "would push"
    WOULD_REPLACE = "would replace"


@dataclass(frozen=True, kw_only=True)
class TagOutcome:
    reference: str
    digest: str | None  # None: a dry run that would push
    outcome: Outcome
    previous_digest: str | None  # what the tag named before ("replaced")
    layers_sent: int = 0  # layers the registry did not have yet
    layers_there: int = 0  # layers it had already: the ones this image shares with what it holds
    bytes_sent: int = 0  # compressed bytes of the layers sent


@dataclass(frozen=True, kw_only=True)
class PushRecord:
    """What was published for one image; also written to <reports_dir>/push-<id>.json (except on a dry run)."""

    id: str
    reference: str
    digest: str | None
    size: int | None  # bytes the registry holds for it: compressed layers + config (None on a dry run)
    image_id: str
    image_size: int  # uncompressed, as `docker images` shows
    media_type: str | None
    outcome: Outcome  # the main tag's outcome
    tags: tuple[TagOutcome, ...]  # the main tag first, then the extra tags
    time: str  # ISO 8601, UTC
    login: str | None  # where the credentials came from (no secret), None: anonymous
    record: Path | None


@dataclass(frozen=True, kw_only=True)
class LoginResult:
    registry: str
    user: str  # as logs show it: an AK is cut to its first characters
    source: str


# --------------------------------------------------------------------------------------------------------------
# Pure helpers


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_record(record: PushRecord, reports_dir: Path) -> Path:
    """<reports_dir>/push-<id>.json, written atomically; WriteError naming it when it cannot be."""
    path = reports_dir / f"push-{record.id}.json"
    document: dict[str, Any] = asdict(record)
    document.pop("record")
    document["tags"] = [asdict(item) for item in record.tags]
    return write_atomic(path, json.dumps(document, indent=2) + "\n", what="push record")


@dataclass(frozen=True, kw_only=True)
class Released:
    """A staged image given its release tag once it passed on the platform."""

    id: str
    reference: str  # the release tag
    staged: str  # the tag it was pushed and verified under
    digest: str
    previous: str | None  # what the release tag named before, when it was replaced


def release(image: ImageSpec, staged: ImageSpec, options: PushOptions, *, credentials: Credentials | None,
            ) -> Released:
    """Give the staged image its release tag through the registry's API (the same manifest, no layer sent); the
    tag guard holds as for a push: a release tag naming another image is replaced only with --replace-tag."""
    target, source = swr.validate(swr.Reference.of(image)), swr.validate(swr.Reference.of(staged))
    with Registry(target.registry, credentials, retries=options.retries, backoff=options.backoff,
                  login_hint=_login_hint(target.registry, options)) as registry:
        verified = registry.head_manifest(source.name, source.tag)
        current = registry.head_manifest(target.name, target.tag)
        if verified is None:
            raise RegistryError(f"{source} is gone from the registry: nothing to release as {target}")
        if current is not None and current[0] != verified[0] and not options.replace_tags:
            raise RegistryError(f"refusing to release {source} as {target}: the tag already names {current[0]}. "
                                "Tags are kept immutable: choose a new tag, or pass --replace-tag to replace it")
        digest = registry.retag(target.name, source.tag, target.tag)
    return Released(id=image.id, reference=str(target), staged=str(source), digest=digest,
                    previous=current[0] if current is not None and current[0] != digest else None)


def pushed_digest(reports_dir: Path, image: ImageSpec) -> str | None:
    """The digest the last push of `image` recorded (push-<id>.json), None without a readable record of its
    reference: what a platform job must find the tag still naming."""
    path = reports_dir / f"push-{image.id}.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("reference") != image.reference:
        return None
    digest = document.get("digest")
    return digest if isinstance(digest, str) and digest.startswith("sha256:") else None


def summary(records: Sequence[PushRecord]) -> str:
    """One line per tag: outcome, reference, digest."""
    lines = []
    for record in records:
        for item in record.tags:
            digest = item.digest or "(not pushed)"
            sent = (f"  ({item.layers_sent} layers sent, {size(item.bytes_sent)}; {item.layers_there} already there)"
                    if item.outcome in (Outcome.PUSHED, Outcome.REPLACED) else "")
            lines.append(f"{item.outcome:>13}  {item.reference}  {digest}{sent}")
        if record.record is not None:
            lines.append(f"{'':>13}  recorded in {record.record}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Login


def credentials_for(registry: str, env: Mapping[str, str], engine: Engine, *, region: str | None = None,
                    project: str | None = None, use_docker_config: bool = True) -> Credentials | None:
    """The environment's credentials for `registry` (swr.resolve_credentials), else what `docker login` stored."""
    found = swr.resolve_credentials(registry, env, region=region, project=project)
    if found is None and use_docker_config:
        stored = engine.stored_login(registry)
        if stored is not None:
            found = Credentials(registry=registry, username=stored.username, password=stored.password,
                                source="docker config (docker login)",
                                check=f"the login `docker login {registry}` stored is out of date: run it again, or "
                                      "set one of the variables in docs/guide/push.md (Credentials)")
    return found


def _login(engine: Engine, credentials: Credentials) -> RegistryAuth:
    """Log in through the engine; a refusal says whose login it was and where it came from."""
    try:
        auth = engine.login(RegistryLogin(registry=credentials.registry, username=credentials.username,
                                          password=credentials.password))
    except RegistryRefusedError as refused:
        if refused.kind is Refusal.AUTH:
            raise RegistryError(credentials.rejected(one_line(refused.detail, 400))) from None
        raise RegistryError(credentials.hide(str(refused))) from None
    except EngineError as error:  # an engine unreachable, or failing: its message may quote the user's AK
        raise EngineError(credentials.hide(str(error))) from None
    log.info("logged in to %s as %s (%s)", credentials.registry, credentials.shown_user, credentials.source)
    return auth


def login(registry: str, *, engine: Engine, env: Mapping[str, str], region: str | None = None,
          project: str | None = None) -> LoginResult:
    """Check that `registry` accepts the credentials found for it, by logging in through the engine.

    Nothing is stored: `inv push` finds the same credentials in the environment and logs in again.
    """
    swr.validate_registry(registry)
    credentials = swr.resolve_credentials(registry, env, region=region, project=project)
    if credentials is None:
        raise RegistryError(f"no credentials for {registry}: "
                            f"{swr.missing_login_hint(registry, region=region, project=project)}")
    _login(engine, credentials)
    return LoginResult(registry=registry, user=credentials.shown_user, source=credentials.source)


# --------------------------------------------------------------------------------------------------------------
# Push


def _refused(refused: RegistryRefusedError, target: swr.Reference, *, authenticated: bool,
             region: str | None, project: str | None = None) -> RegistryError:
    """A push the registry refused, with what to do about it."""
    detail = refused.detail
    if refused.kind is Refusal.AUTH and not authenticated:
        hint = swr.missing_login_hint(target.registry, region=region, project=project)
        return RegistryError(f"push of {target} refused: {target.registry} requires a login ({detail}); {hint}, "
                             "then run `inv login`")
    if refused.kind is Refusal.AUTH:
        return RegistryError(f"push of {target} refused by {target.registry}: {detail}. The login works, but may "
                             f"not push to {target.name} (on SWR: does the organization '{target.organization}' "
                             "exist, and may this user push to it?)")
    if refused.kind is Refusal.NOT_LOCAL:
        return RegistryError(f"push of {target} failed: no local image with that name ({detail})")
    return RegistryError(f"push of {target} failed: {detail}")


class _Publisher:
    """Pushes images, logging in once per registry."""

    def __init__(self, engine: Engine, options: PushOptions, env: Mapping[str, str],
                 progress: ProgressCallback | None) -> None:
        self.engine = engine
        self.options = options
        self.env = env
        self.progress = progress
        self.credentials: dict[str, Credentials | None] = {}
        self.auth: dict[str, RegistryAuth | None] = {}

    def credentials_for(self, registry: str) -> Credentials | None:
        if registry not in self.credentials:
            self.credentials[registry] = options_credentials(registry, self.options, engine=self.engine, env=self.env)
        return self.credentials[registry]

    def auth_for(self, registry: str) -> RegistryAuth | None:
        if registry not in self.auth:
            credentials = self.credentials_for(registry)
            self.auth[registry] = None if credentials is None else _login(self.engine, credentials)
        return self.auth[registry]

    def push(self, image: ImageSpec, now: dt.datetime) -> PushRecord:
        options = self.options
        reference = swr.validate(swr.Reference.of(image))
        extra = expand_tags(options.extra_tags, tag=image.tag, date=now.strftime("%Y%m%d"),
                            revision=options.revision)
        targets = [reference, *(swr.validate_tag(reference, tag) for tag in extra)]
        local = self.engine.image(str(reference))
        if local is None:
            raise RegistryError(f"no local image {reference}: build it first (inv build --only {image.id})")
        credentials = self.credentials_for(reference.registry)
        with Registry(reference.registry, credentials, retries=options.retries, backoff=options.backoff,
                      login_hint=_login_hint(reference.registry, options)) as registry:
            plans = [(target, *self._guard(registry, target, local)) for target in targets]
            if options.dry_run:
                return self._dry_run(image, local, plans, now)
            results: list[TagOutcome] = []
            final: Manifest | None = None
            for target, remote, outcome in plans:
                if outcome is Outcome.UNCHANGED:
                    assert remote is not None
                    log.info("%s is already in the registry as %s: nothing to push", target, remote.digest)
                    results.append(TagOutcome(reference=str(target), digest=remote.digest, outcome=outcome,
                                              previous_digest=None))
                    final = final or remote
                    continue
                if target != reference:
                    self.engine.tag(str(reference), target.repository_reference, target.tag)
                auth = self.auth_for(target.registry)
                try:
                    pushed = self.engine.push(target.repository_reference, target.tag, auth=auth,
                                              secrets=credentials.secrets if credentials else (),
                                              progress=self.progress)
                except RegistryRefusedError as refused:
                    error = _refused(refused, target, authenticated=auth is not None, region=options.region,
                                     project=options.project)
                    raise RegistryError(credentials.hide(str(error)) if credentials else str(error)) from None
                confirmed = _confirm(registry, target, pushed.digest, local)
                final = final or confirmed
                results.append(TagOutcome(reference=str(target), digest=pushed.digest, outcome=outcome,
                                          previous_digest=remote.digest if remote is not None else None,
                                          layers_sent=pushed.layers_sent, layers_there=pushed.layers_there,
                                          bytes_sent=pushed.bytes_sent))
        assert final is not None
        record = PushRecord(
            id=image.id, reference=str(reference), digest=results[0].digest, size=final.content_size,
            image_id=local.image_id, image_size=local.size, media_type=final.media_type, outcome=results[0].outcome,
            tags=tuple(results), time=now.isoformat(timespec="seconds"),
            login=credentials.source if credentials else None, record=None,
        )
        try:
            path = write_record(record, options.reports_dir)
        except ModelArtsImagesError as error:
            # the push itself went through: say so, so nobody pushes again to find out
            raise RegistryError(f"{image.id}: pushed {record.reference} as {record.digest}, but {error}") from error
        return dataclasses.replace(record, record=path)

    def _guard(self, registry: Registry, target: swr.Reference, local: ImageConfig) -> tuple[Manifest | None, Outcome]:
        """What the tag names now, and what pushing will do to it; RegistryError when it may not be replaced."""
        remote = registry.manifest(target.name, target.tag)
        if remote is None:
            return None, Outcome.PUSHED
        if remote.is_docker_v2 and remote.config_digest == local.image_id:
            return remote, Outcome.UNCHANGED
        if not self.options.replace_tags:
            what = (f"image {remote.config_digest[:19]}" if remote.config_digest else f"a {remote.media_type}")
            raise RegistryError(
                f"refusing to push {target}: the tag already exists in the registry as {remote.digest} ({what}), "
                f"and the local image is {local.image_id[:19]}. Tags are kept immutable: choose a new tag, or pass "
                "--replace-tag to replace it")
        log.warning("%s names %s in the registry: replacing it (--replace-tag)", target, remote.digest)
        return remote, Outcome.REPLACED

    def _dry_run(self, image: ImageSpec, local: ImageConfig,
                 plans: Sequence[tuple[swr.Reference, Manifest | None, Outcome]], now: dt.datetime) -> PushRecord:
        wording = {Outcome.PUSHED: Outcome.WOULD_PUSH, Outcome.REPLACED: Outcome.WOULD_REPLACE,
                   Outcome.UNCHANGED: Outcome.UNCHANGED}
        tags = tuple(TagOutcome(reference=str(target), digest=remote.digest if outcome is Outcome.UNCHANGED and remote
                                else None, outcome=wording[outcome],
                                previous_digest=remote.digest if remote is not None else None)
                     for target, remote, outcome in plans)
        credentials = self.credentials.get(plans[0][0].registry)
        return PushRecord(id=image.id, reference=tags[0].reference, digest=tags[0].digest, size=None,
                          image_id=local.image_id, image_size=local.size, media_type=None, outcome=tags[0].outcome,
                          tags=tags, time=now.isoformat(timespec="seconds"),
                          login=credentials.source if credentials else None, record=None)


def _confirm(registry: Registry, target: swr.Reference, digest: str, local: ImageConfig) -> Manifest:
    """The manifest the tag resolves to after the push, checked: the pushed digest, docker v2, this image."""
    found = registry.manifest(target.name, target.tag)
    if found is None:
        raise RegistryError(f"pushed {target}, but the registry does not know the tag")
    if found.digest != digest:
        raise RegistryError(f"pushed {target} as {digest}, but the registry resolves the tag to {found.digest}: "
                            "another push replaced it meanwhile?")
    if not found.is_docker_v2:
        raise RegistryError(f"pushed {target}, but the registry holds it as {found.media_type}; SWR accepts only "
                            "a single docker v2 schema 2 manifest (build with --provenance=false --sbom=false and "
                            "without oci-mediatypes)")
    if found.config_digest != local.image_id:
        raise RegistryError(f"pushed {target}, but its manifest names image {found.config_digest}, not the local "
                            f"image {local.image_id}")
    log.info("confirmed %s -> %s (%s)", target, found.digest, found.media_type)
    return found


@dataclass(frozen=True, kw_only=True)
class RemoteImage:
    """What an entry's tag is in its registry."""

    reference: str
    digest: str
    labels: Mapping[str, str]


def _login_hint(registry: str, options: PushOptions) -> str:
    return swr.missing_login_hint(registry, region=options.region)


def options_credentials(registry: str, options: PushOptions, *, engine: Engine, env: Mapping[str, str]
                        ) -> Credentials | None:
    """credentials_for with the push options' region, project and docker-config fallback."""
    return credentials_for(registry, env, engine, region=options.region, project=options.project,
                           use_docker_config=options.use_docker_config)


def remote_image(image: ImageSpec, options: PushOptions, *, credentials: Credentials | None,
                 ) -> RemoteImage | None:
    """The entry's tag in its registry, with the labels of its image config; None when the tag is absent or is
    not a single docker v2 image. RegistryError when the registry cannot be asked (no login, unreachable)."""
    reference = swr.validate(swr.Reference.of(image))
    with Registry(reference.registry, credentials, retries=options.retries, backoff=options.backoff,
                  login_hint=_login_hint(reference.registry, options)) as registry:
        manifest = registry.manifest(reference.name, reference.tag)
        if manifest is None or not manifest.is_docker_v2:
            return None
        return RemoteImage(reference=str(reference), digest=manifest.digest,
                           labels=registry.image_labels(reference.name, manifest))


def push_images(images: Sequence[ImageSpec], options: PushOptions, *, engine: Engine, env: Mapping[str, str],
                progress: ProgressCallback | None = None, now: dt.datetime | None = None) -> list[PushRecord]:
    """Push the images one after the other; the first failure stops the rest (RegistryError, exit 6)."""
    publisher = _Publisher(engine, options, env, progress)
    moment = now or utc_now()
    return [publisher.push(image, moment) for image in images]
