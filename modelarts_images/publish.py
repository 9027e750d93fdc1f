"""`invoke login` and `invoke push`: check the names, guard the tags, push, confirm, record.

For each selected image `push_image()`:

1. validates registry/organization/repository:tag and every extra tag against SWR's rules (RegistryError, exit 6);
2. finds the local image the build tagged with the reference;
3. reads every target tag from the registry first (the immutability guard): absent -> push; present with the
   same image (its config digest is the local image id) in a docker v2 manifest -> nothing to do, reported as
   "unchanged"; present with anything else -> refused unless `force` ("replaced" then). Nothing is pushed when
   any tag is refused;
4. logs in through the engine and pushes each tag, reading the digest from the push stream;
5. reads each tag back over the registry's HTTP API: it must resolve to the pushed digest, as a single docker v2
   schema 2 manifest (SWR rejects OCI indexes and attestation manifests), of the local image;
6. writes ``push-<id>.json`` under the reports directory: reference, digest, size, time and the tags.

Credentials come from the environment (see modelarts_images.swr), else from what `docker login` stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import swr
from .engine import push as engine_push
from .errors import ConfigError, RegistryError
from .files import write_atomic
from .model import ImageSpec
from .registry import Manifest, Registry

log = logging.getLogger(__name__)

PLACEHOLDERS = ("tag", "date", "revision")
UNCHANGED, PUSHED, REPLACED = "unchanged", "pushed", "replaced"


@dataclass(frozen=True, kw_only=True)
class PushOptions:
    reports_dir: Path
    force: bool = False  # replace a tag that names another image in the registry
    # Extra tags for each image, as templates: {tag} (the image's tag), {date} (UTC, YYYYMMDD), {revision}
    # (the project's git revision, 12 hex digits), e.g. "{tag}-{date}" or "{revision}".
    extra_tags: tuple[str, ...] = ()
    revision: str | None = None
    region: str | None = None  # the SWR region, when the registry host does not say it
    dry_run: bool = False  # check names and the registry, change nothing
    use_docker_config: bool = True  # fall back to credentials `docker login` stored
    retries: int = 3
    backoff: float = 1.0


@dataclass(frozen=True, kw_only=True)
class TagOutcome:
    reference: str
    digest: str | None  # None: a dry run that would push
    outcome: str  # "pushed", "unchanged", "replaced"; with dry_run: "would push", "would replace", "unchanged"
    previous_digest: str | None  # what the tag named before ("replaced")


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
    outcome: str  # the main tag's outcome
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


def expand_tags(templates: Iterable[str], *, tag: str, date: str, revision: str | None) -> tuple[str, ...]:
    """Extra tags from their templates, without duplicates or the main tag itself, in order."""
    values = {"tag": tag, "date": date, "revision": revision}
    tags: list[str] = []
    for template in templates:
        fields = template_fields(template)
        if "revision" in fields and revision is None:
            raise ConfigError(f"extra tag {template!r}: no git revision is known here (not a git checkout?)")
        expanded = template.format(**values)
        if expanded != tag and expanded not in tags:
            tags.append(expanded)
    return tuple(tags)


def template_fields(template: str) -> list[str]:
    """The fields an extra-tag template names; ConfigError for anything but a plain {tag}, {date} or {revision}.

    A format spec or a conversion ({date:%Y}, {tag!r}) would reach str.format and fail there with a bare
    ValueError, or quietly make a tag SWR refuses; the documented fields are plain substitutions only."""
    use = "use " + ", ".join(f"{{{name}}}" for name in PLACEHOLDERS) + " (plain, without a format spec or conversion)"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"extra tag {template!r}: {error}; {use}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in PLACEHOLDERS:
            raise ConfigError(f"extra tag {template!r}: unknown placeholder {shown}; {use}")
        if spec or conversion:
            raise ConfigError(f"extra tag {template!r}: {shown} has a format spec or conversion; {use}")
        fields.append(name)
    return fields


def git_revision(root: Path, length: int = 12) -> str | None:
    """The commit HEAD names in the git checkout at `root`, read from .git without running git; None if none."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text("utf-8").strip().removeprefix("gitdir:").strip()).resolve()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text("utf-8").strip()).resolve()
        head = (git / "HEAD").read_text("utf-8").strip()
        if head.startswith("ref:"):
            ref = head.removeprefix("ref:").strip()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text("utf-8").strip()[:length]
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text("utf-8").splitlines():
                    sha, _, name = line.partition(" ")
                    if name.strip() == ref:
                        return sha[:length]
            return None
    except OSError:
        return None
    return head[:length] if all(c in "0123456789abcdef" for c in head) and head else None


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_record(record: PushRecord, reports_dir: Path) -> Path:
    """<reports_dir>/push-<id>.json, written atomically; RegistryError naming it when it cannot be."""
    path = reports_dir / f"push-{record.id}.json"
    document: dict[str, Any] = asdict(record)
    document.pop("record")
    document["tags"] = [asdict(item) for item in record.tags]
    return write_atomic(path, json.dumps(document, indent=2) + "\n", what="push record", error=RegistryError)


def summary(records: Sequence[PushRecord]) -> str:
    """One line per tag: outcome, reference, digest."""
    lines = []
    for record in records:
        for item in record.tags:
            digest = item.digest or "(not pushed)"
            lines.append(f"{item.outcome:>13}  {item.reference}  {digest}")
        if record.record is not None:
            lines.append(f"{'':>13}  recorded in {record.record}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Login


def credentials_for(registry: str, env: Mapping[str, str], *, region: str | None = None,
                    use_docker_config: bool = True) -> swr.Credentials | None:
    """The environment's credentials for `registry` (swr.resolve_credentials), else what `docker login` stored."""
    found = swr.resolve_credentials(registry, env, region=region)
    if found is None and use_docker_config:
        found = engine_push.stored_credentials(registry)
    return found


def login(registry: str, *, client: Any, env: Mapping[str, str], region: str | None = None,
          retries: int = 3, backoff: float = 1.0) -> LoginResult:
    """Check that `registry` accepts the credentials found for it, by logging in through the engine.

    Nothing is stored: `invoke push` finds the same credentials in the environment and logs in again.
    """
    swr.validate_registry(registry)
    credentials = swr.resolve_credentials(registry, env, region=region)
    if credentials is None:
        raise RegistryError(f"no credentials for {registry}: {swr.missing_login_hint(registry, region=region)}")
    engine_push.login(client, credentials, retries=retries, backoff=backoff)
    return LoginResult(registry=registry, user=credentials.shown_user, source=credentials.source)


# --------------------------------------------------------------------------------------------------------------
# Push


class _Publisher:
    """Pushes images, logging in once per registry."""

    def __init__(self, client: Any, options: PushOptions, env: Mapping[str, str],
                 progress: engine_push.ProgressCallback | None) -> None:
        self.client = client
        self.options = options
        self.env = env
        self.progress = progress
        self.credentials: dict[str, swr.Credentials | None] = {}
        self.auth: dict[str, dict[str, str] | None] = {}

    def credentials_for(self, registry: str) -> swr.Credentials | None:
        if registry not in self.credentials:
            self.credentials[registry] = credentials_for(registry, self.env, region=self.options.region,
                                                         use_docker_config=self.options.use_docker_config)
        return self.credentials[registry]

    def auth_for(self, registry: str) -> dict[str, str] | None:
        if registry not in self.auth:
            credentials = self.credentials_for(registry)
            self.auth[registry] = None if credentials is None else engine_push.login(
                self.client, credentials, retries=self.options.retries, backoff=self.options.backoff)
        return self.auth[registry]

    def push(self, image: ImageSpec, now: dt.datetime) -> PushRecord:
        options = self.options
        reference = swr.validate(swr.Reference.of(image))
        extra = expand_tags(options.extra_tags, tag=image.tag, date=now.strftime("%Y%m%d"),
                            revision=options.revision)
        targets = [reference, *(swr.validate_tag(reference, tag) for tag in extra)]
        local = engine_push.local_image(self.client, str(reference), hint=f" (invoke build --only {image.id})")
        credentials = self.credentials_for(reference.registry)
        with Registry(reference.registry, credentials, retries=options.retries, backoff=options.backoff,
                      region=options.region) as registry:
            plans = [(target, *self._guard(registry, target, local)) for target in targets]
            if options.dry_run:
                return self._dry_run(image, local, plans, now)
            results: list[TagOutcome] = []
            final: Manifest | None = None
            for target, remote, outcome in plans:
                if outcome == UNCHANGED:
                    assert remote is not None
                    log.info("%s is already in the registry as %s: nothing to push", target, remote.digest)
                    results.append(TagOutcome(reference=str(target), digest=remote.digest, outcome=UNCHANGED,
                                              previous_digest=None))
                    final = final or remote
                    continue
                if target != reference:
                    engine_push.tag(self.client, str(reference), target)
                pushed = engine_push.push(
                    self.client, target, auth=self.auth_for(target.registry),
                    secrets=credentials.secrets if credentials else (), retries=options.retries,
                    backoff=options.backoff, progress=self.progress, region=options.region)
                confirmed = _confirm(registry, target, pushed.digest, local)
                final = final or confirmed
                results.append(TagOutcome(reference=str(target), digest=pushed.digest, outcome=outcome,
                                          previous_digest=remote.digest if remote is not None else None))
        assert final is not None
        record = PushRecord(
            id=image.id, reference=str(reference), digest=results[0].digest, size=final.content_size,
            image_id=local.image_id, image_size=local.size, media_type=final.media_type, outcome=results[0].outcome,
            tags=tuple(results), time=now.isoformat(timespec="seconds"),
            login=credentials.source if credentials else None, record=None,
        )
        try:
            path = write_record(record, options.reports_dir)
        except RegistryError as error:
            # the push itself went through: say so, so nobody pushes again to find out
            raise RegistryError(f"{image.id}: pushed {record.reference} as {record.digest}, but {error}") from error
        return dataclasses.replace(record, record=path)

    def _guard(self, registry: Registry, target: swr.Reference, local: engine_push.LocalImage
               ) -> tuple[Manifest | None, str]:
        """What the tag names now, and what pushing will do to it; RegistryError when it may not be replaced."""
        remote = registry.manifest(target.name, target.tag)
        if remote is None:
            return None, PUSHED
        if remote.is_docker_v2 and remote.config_digest == local.image_id:
            return remote, UNCHANGED
        if not self.options.force:
            what = (f"image {remote.config_digest[:19]}" if remote.config_digest else f"a {remote.media_type}")
            raise RegistryError(
                f"refusing to push {target}: the tag already exists in the registry as {remote.digest} ({what}), "
                f"and the local image is {local.image_id[:19]}. Tags are kept immutable: choose a new tag, or pass "
                "--force to replace it")
        log.warning("%s names %s in the registry: replacing it (--force)", target, remote.digest)
        return remote, REPLACED

    def _dry_run(self, image: ImageSpec, local: engine_push.LocalImage,
                 plans: Sequence[tuple[swr.Reference, Manifest | None, str]], now: dt.datetime) -> PushRecord:
        wording = {PUSHED: "would push", REPLACED: "would replace", UNCHANGED: UNCHANGED}
        tags = tuple(TagOutcome(reference=str(target), digest=remote.digest if outcome == UNCHANGED and remote
                                else None, outcome=wording[outcome],
                                previous_digest=remote.digest if remote is not None else None)
                     for target, remote, outcome in plans)
        credentials = self.credentials.get(plans[0][0].registry)
        return PushRecord(id=image.id, reference=tags[0].reference, digest=tags[0].digest, size=None,
                          image_id=local.image_id, image_size=local.size, media_type=None, outcome=tags[0].outcome,
                          tags=tags, time=now.isoformat(timespec="seconds"),
                          login=credentials.source if credentials else None, record=None)


def _confirm(registry: Registry, target: swr.Reference, digest: str, local: engine_push.LocalImage) -> Manifest:
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


def push_images(
    images: Sequence[ImageSpec],
    options: PushOptions,
    *,
    client: Any,
    env: Mapping[str, str],
    progress: engine_push.ProgressCallback | None = None,
    now: dt.datetime | None = None,
) -> list[PushRecord]:
    """Push the images one after the other; the first failure stops the rest (RegistryError, exit 6)."""
    publisher = _Publisher(client, options, env, progress)
    moment = now or utc_now()
    return [publisher.push(image, moment) for image in images]


def push_image(
    image: ImageSpec,
    options: PushOptions,
    *,
    client: Any,
    env: Mapping[str, str],
    progress: engine_push.ProgressCallback | None = None,
    now: dt.datetime | None = None,
) -> PushRecord:
    """Push one image (see the module doc)."""
    return push_images([image], options, client=client, env=env, progress=progress, now=now)[0]
