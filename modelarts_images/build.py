"""Build one fetched image: decide the build (pure), assemble its context, run a backend, summarise the result.

    result = build_image(fetched, backend="buildkit", work_dir=Path("build"), no_cache=False,
                         base_image=None, platform=None, base_prefix=None)

Backends: "docker" (the docker SDK's low-level build API, i.e. the classic builder) and "buildkit" (the docker
CLI: `docker buildx build --load`, or `DOCKER_BUILDKIT=1 docker build` with a client older than 23). Both
build the same Dockerfile (context/Dockerfile) to the same image; only a pip index URL with credentials, used
when the dependency wheels were not fetched, needs BuildKit (it goes in as a secret).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import context, engine, plan
from .errors import BuildError, ConfigError
from .model import Artifact, FetchedFile, FetchedImage, ImageSpec
from .progress import human

BACKENDS = ("docker", "buildkit")
TARGET = "image"
SECRET_TARGET = "image-secret"  # BuildKit only: the pip index comes in as a secret (see context/Dockerfile)
PIP_SECRET_ID = "pip.conf"
# What the classic builder is sent: the same allow-list as context/.dockerignore.
CONTEXT_ENTRIES = (context.DOCKERFILE, context.DOCKERIGNORE, context.PIP_CONF, context.INSTALLER_DIR,
                   context.WHEELS_DIR, context.DEPS_DIR)


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    reference: str
    image_id: str
    size: int  # bytes, as the engine reports the image
    layers: tuple[engine.Layer, ...]  # the largest, largest first, with the step that made each
    duration: float  # seconds, context assembly included
    backend: str


@dataclass(frozen=True, kw_only=True)
class BuildInputs:
    """Everything about a build that follows from the fetched entry and the flags, without any I/O."""

    reference: str
    base_image: str
    target: str
    hermetic: bool  # dependency wheels fetched: pip installs with --no-index
    needs_secret: bool  # pip index with credentials, used (not hermetic): BuildKit secret
    build_args: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------------------------
# Pure decisions


def has_registry_host(reference: str) -> bool:
    """Whether a reference names its registry ('mirror.example.com/x', 'localhost:5000/x') or means Docker Hub."""
    first, slash, _ = reference.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def effective_base_image(image: ImageSpec, *, base_image: str | None = None, base_prefix: str | None = None) -> str:
    """The base image actually used: the --base-image override or the entry's, with the registry prefix
    prepended when it names no registry (ubuntu:20.04 -> mirror.example.com/library/ubuntu:20.04)."""
    reference = base_image or image.base_image
    if base_prefix and not has_registry_host(reference):
        reference = base_prefix.rstrip("/") + "/" + reference
    return reference


def _describe(item: FetchedFile) -> str:
    return f"{context.without_credentials(item.url)} sha256:{item.sha256}"


def image_labels(fetched: FetchedImage, *, base_image: str) -> tuple[tuple[str, str], ...]:
    """plan.labels with what fetch resolved: the sha256 of every artifact, the dependency wheels, the base used."""
    prefix = plan.LABEL_PREFIX
    image = fetched.image
    labels = {name: value for name, value in plan.labels(image)
              if not name.startswith((f"{prefix}wheel.", f"{prefix}dependency."))}
    labels["org.opencontainers.image.base.name"] = base_image
    labels[f"{prefix}installer"] = _describe(fetched.installer)
    labels.update({f"{prefix}wheel.{wheel.filename}": _describe(wheel) for wheel in fetched.wheels})
    labels.update({f"{prefix}dependency.{dep.filename}": _describe(dep) for dep in fetched.closure or ()})
    hermetic = fetched.closure is not None
    labels[f"{prefix}hermetic"] = "true" if hermetic else "false"
    if not hermetic:
        labels[f"{prefix}pip-index"] = context.without_credentials(image.pip_index)
    return tuple(labels.items())


def build_inputs(fetched: FetchedImage, *, base_image: str | None = None, base_prefix: str | None = None,
                 ) -> BuildInputs:
    image = fetched.image
    base = effective_base_image(image, base_image=base_image, base_prefix=base_prefix)
    hermetic = fetched.closure is not None
    needs_secret = not hermetic and context.has_credentials(image.pip_index)
    args = dict(plan.build_args(image))
    args["BASE_IMAGE"] = base
    args["HERMETIC"] = "1" if hermetic else "0"
    if needs_secret:
        # Part of the cache key of the secret step, so a change of index rebuilds it (the secret is not).
        args["INDEX_WITHOUT_CREDENTIALS"] = context.without_credentials(image.pip_index)
    return BuildInputs(
        reference=image.reference,
        base_image=base,
        target=SECRET_TARGET if needs_secret else TARGET,
        hermetic=hermetic,
        needs_secret=needs_secret,
        build_args=tuple(args.items()),
        labels=image_labels(fetched, base_image=base),
    )


def check_backend(backend: str, inputs: BuildInputs | None = None, *, image_id: str = "") -> None:
    """ConfigError for an unknown backend, or for a secret the classic builder cannot keep out of the layers."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "docker" and inputs is not None and inputs.needs_secret:
        raise ConfigError(
            f"{image_id}: pip_index carries credentials and the dependency wheels were not fetched, so pip needs "
            "that index inside the build; the docker backend (classic builder) could only pass it in a layer or "
            "a build argument. Use --backend buildkit (it goes in as a BuildKit secret), or run `inv fetch` "
            "without --no-closure so the build needs no index."
        )


# --------------------------------------------------------------------------------------------------------------
# With the engine


def preflight(images: Sequence[ImageSpec], *, base_image: str | None = None, base_prefix: str | None = None,
              client: object | None = None) -> None:
    """Before any download: the engine answers and every selected image's base exists (locally or remotely)."""
    client = client if client is not None else engine.connect()
    checked: set[str] = set()
    for image in images:
        base = effective_base_image(image, base_image=base_image, base_prefix=base_prefix)
        if base not in checked:
            engine.check_base_image(client, base)
            checked.add(base)


@contextlib.contextmanager
def _pip_secret(image: ImageSpec, inputs: BuildInputs) -> Iterator[tuple[tuple[str, Path], ...]]:
    """The full pip.conf in a private temporary file (0600, outside the context) while the build runs."""
    if not inputs.needs_secret:
        yield ()
        return
    descriptor, name = tempfile.mkstemp(prefix="modelarts-pip-", suffix=".conf")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(context.render_pip_conf(image.pip_index))
        yield ((PIP_SECRET_ID, Path(name)),)
    finally:
        Path(name).unlink(missing_ok=True)


def _request(inputs: BuildInputs, context_dir: Path, *, no_cache: bool, platform: str | None,
             secrets: tuple[tuple[str, Path], ...] = ()) -> engine.BuildRequest:
    return engine.BuildRequest(
        context_dir=context_dir,
        target=inputs.target,
        tag=inputs.reference,
        build_args=inputs.build_args,
        labels=inputs.labels,
        no_cache=no_cache,
        platform=platform,
        secrets=secrets,
        context_entries=CONTEXT_ENTRIES,
    )


def build_image(fetched: FetchedImage, *, backend: str, work_dir: Path, no_cache: bool = False,
                base_image: str | None = None, platform: str | None = None, base_prefix: str | None = None,
                ) -> BuildResult:
    """Build the image of a fetched entry and tag it with the entry's reference."""
    started = time.monotonic()
    image = fetched.image
    inputs = build_inputs(fetched, base_image=base_image, base_prefix=base_prefix)
    check_backend(backend, inputs, image_id=image.id)
    cli = engine.find_buildkit_cli() if backend == "buildkit" else None
    client = engine.connect()
    engine.check_base_image(client, inputs.base_image)
    context_dir = context.assemble(fetched, work_dir)
    with _pip_secret(image, inputs) as secrets:
        request = _request(inputs, context_dir, no_cache=no_cache, platform=platform, secrets=secrets)
        image_id = engine.build_classic(client, request) if cli is None else engine.build_buildkit(request, cli)
    if not image_id:
        raise BuildError(f"{image.id}: the build reported no image id")
    summary = engine.image_summary(client, image_id, base_image=inputs.base_image)
    return BuildResult(reference=inputs.reference, image_id=summary.image_id, size=summary.size,
                       layers=summary.layers, duration=time.monotonic() - started, backend=backend)


def build_command_preview(target: FetchedImage | ImageSpec, *, backend: str, work_dir: Path, no_cache: bool = False,
                          base_image: str | None = None, platform: str | None = None,
                          base_prefix: str | None = None) -> str:
    """For --dry-run: the command the build would run, without running anything against the engine.

    Given an ImageSpec (nothing fetched yet), the build is shown as hermetic with the entry's own artifacts.
    """
    fetched = target if isinstance(target, FetchedImage) else _unfetched(target)
    inputs = build_inputs(fetched, base_image=base_image, base_prefix=base_prefix)
    check_backend(backend, inputs, image_id=fetched.image.id)
    context_dir = context.context_dir(work_dir, fetched.image.id)
    scratch = Path(tempfile.gettempdir())
    secrets = ((PIP_SECRET_ID, scratch / "modelarts-pip-XXXXXXXX.conf"),) if inputs.needs_secret else ()
    request = _request(inputs, context_dir, no_cache=no_cache, platform=platform, secrets=secrets)
    if backend == "docker":
        return ("# docker SDK, classic builder (client.api.build); the same as:\n"
                + engine.masked(engine.classic_equivalent(request)))
    note = ""
    try:
        cli = engine.find_buildkit_cli()
    except BuildError as error:
        cli = engine.BuildKitCli(path="docker", mode="buildx", version="")
        note = f"# {error}\n"
    command, extra_env = engine.buildkit_command(cli, request, scratch / "modelarts-build-XXXXXXXX" / "iid")
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in extra_env.items())
    return note + prefix + engine.masked(command)


def _unfetched(image: ImageSpec) -> FetchedImage:
    def stand_in(url: str, sha256: str | None) -> FetchedFile:
        artifact = Artifact(url=url, sha256=sha256)
        return FetchedFile(filename=artifact.filename, path=Path(artifact.filename), url=url,
                           sha256=sha256 or plan.UNPINNED)

    return FetchedImage(
        image=image,
        installer=stand_in(image.installer.url, image.installer.sha256),
        wheels=tuple(stand_in(wheel.url, wheel.sha256) for wheel in image.wheels),
        closure=(),
    )


def format_result(result: BuildResult) -> str:
    """The build summary: reference, id, size, duration and the largest layers with their steps."""
    lines = [f"{result.reference}: {result.image_id[:19]} {human(result.size)} built in {result.duration:.1f} s "
             f"({result.backend})"]
    for layer in result.layers:
        origin = "base " if layer.from_base else ""
        lines.append(f"  {human(layer.size):>9}  {origin}{layer.step}")
    return "\n".join(lines)
