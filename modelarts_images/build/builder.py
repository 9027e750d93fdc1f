"""Build one fetched image: decide the build (pure), check the bases, assemble the context, let the engine build.

Backends: "docker" (the docker SDK's low-level build API, i.e. the classic builder) and "buildkit" (the docker
CLI: `docker buildx build --load`, or `DOCKER_BUILDKIT=1 docker build` with a client older than 23). Both
build the same Dockerfile (context/Dockerfile) to images of the same files, each by its own stages (the classic
builder's install steps fetch the installer and the wheels from a file server this build runs: `served`); only a
pip index URL with credentials, used when the dependency wheels were not fetched, needs BuildKit (it goes in as a
secret).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelarts_images import plan
from modelarts_images.build import cann_env, context, emulation
from modelarts_images.engine import failures as engine_failures
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BaseImageSource,
    BuildRequest,
    ContainerRun,
    Engine,
    Layer,
    RegistryLogin,
)
from modelarts_images.errors import BuildError, ConfigError, EngineError
from modelarts_images.model import X86_64, Artifact, FetchedFile, FetchedImage, ImageSpec, docker_arch
from modelarts_images.options import BuildOptions
from modelarts_images.shared import redact
from modelarts_images.shared.text import size

log = logging.getLogger(__name__)
CANN_PROBE_TIMEOUT_S = 300.0  # sourcing set_env.sh once; under emulation a shell starts in about a second

# The Dockerfile's final stage for each backend: BuildKit's bind-mounts the context into its builder stages and
# takes a pip index with credentials as a secret (see context/Dockerfile).
TARGETS = {Backend.DOCKER: context.TARGETS[0], Backend.BUILDKIT: context.TARGETS[1]}
PIP_SECRET_ID = "pip.conf"
# The layers context/Dockerfile makes last, newest first; the same files give the same layer in every build.
OWN_LAYERS = ("stack", "torch", "CUDA libraries", "conda", "user")
# The diff id of a layer with nothing in it (BuildKit writes one for a WORKDIR that exists already).
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
# What the classic builder is sent: what its COPY steps read (context/.dockerignore allows these and more); the
# installer and the wheels reach its steps from the build's file server instead (context.served_bundles).
CONTEXT_ENTRIES = (context.DOCKERFILE, context.DOCKERIGNORE, context.STACK_DIR, context.BUILD_DEPS_DIR,
                   "apt-install.sh", "system-layer.sh", "user-layer.sh", "stack-install.sh", "layers.py")


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    reference: str
    image_id: str
    size: int  # bytes, as the engine reports the image
    layers: tuple[Layer, ...]  # the largest, largest first, with the step that made each
    duration: float  # seconds, context assembly included
    backend: Backend
    stack: tuple[Layer, ...] = ()  # every layer, oldest first, with its diff id
    previous: tuple[str, ...] | None = None  # the diff ids of the image the tag named before; None: none
    steps_ran: tuple[str, ...] = ()  # the RUN, COPY and ADD steps the builder ran
    steps_cached: tuple[str, ...] = ()  # and those it took from a cache
    pulled: tuple[str, ...] = ()  # layers (compressed digests) BuildKit pulled from a registry's cache

    @property
    def roles(self) -> tuple[str, ...]:
        """What each layer of `stack` holds: base, system packages, or one of OWN_LAYERS (the classic builder's
        history does not name a COPY's source, so they are told by their place)."""
        return layer_roles(self.stack)

    @property
    def new_layers(self) -> tuple[Layer, ...]:
        """The layers the previous build of this tag did not have: what a push to a registry that holds it sends
        (all of them when there was none)."""
        kept = set(self.previous or ())
        return tuple(layer for layer in self.stack if layer.diff_id not in kept)


@dataclass(frozen=True, kw_only=True)
class BuildInputs:
    """Everything about a build that follows from the fetched entry and the options, without any I/O."""

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


def effective_base_image(image: ImageSpec, options: BuildOptions) -> str:
    """The base image actually used: --base-image or the entry's, with the registry prefix prepended when it
    names no registry (ubuntu:20.04 -> mirror.example.com/library/ubuntu:20.04)."""
    reference = options.base_image or image.base_image
    if options.base_prefix and not has_registry_host(reference):
        reference = options.base_prefix.rstrip("/") + "/" + reference
    return reference


def build_inputs(fetched: FetchedImage, options: BuildOptions, *, base_env: Sequence[tuple[str, str]] = ()
                 ) -> BuildInputs:
    image = fetched.image
    base = effective_base_image(image, options)
    hermetic = fetched.closure is not None
    needs_secret = not hermetic and redact.has_credentials(image.pip_index)
    return BuildInputs(
        reference=image.reference,
        base_image=base,
        target=TARGETS[options.backend] + (context.ENV_SUFFIX if image.stack.env or base_env else ""),
        hermetic=hermetic,
        needs_secret=needs_secret,
        build_args=plan.build_args(image, base_image=base, hermetic=hermetic,
                                   source_date_epoch=fetched.source_date_epoch),
        labels=plan.labels(image, base_image=base, fetched=fetched),
    )


def served_steps(backend: Backend) -> context.Bundles:
    """What the build's install steps fetch from its file server: the classic builder's bundles; none for BuildKit,
    whose steps bind-mount the same directories of the context."""
    return context.served_bundles() if backend is Backend.DOCKER else ()


def check_backend(backend: Backend, inputs: BuildInputs, *, image_id: str) -> None:
    """ConfigError for a secret the classic builder cannot keep out of the layers."""
    if backend is Backend.DOCKER and inputs.needs_secret:
        raise ConfigError(
            f"{image_id}: pip_index carries credentials and the dependency wheels were not fetched, so pip needs "
            "that index inside the build; the docker backend (classic builder) could only pass it in a layer or "
            "a build argument. Use --backend buildkit (it goes in as a BuildKit secret), or run `inv fetch` "
            "without --no-closure so the build needs no index."
        )


_NVIDIA_CUDA = re.compile(r"(?:^|/)nvidia/cuda:(?P<version>\d+\.\d+(?:\.\d+)?)(?:-[^@]*)?$")
_UBUNTU_IN_TAG = re.compile(r"ubuntu(?P<version>\d\d\.\d\d)")
# The nvidia/cuda tags NVIDIA deleted from Docker Hub and NGC in June-July 2023, as its notice lists them
# (gitlab.com/nvidia/container-images/cuda, issue 209, note 1452067531): "11.7.0, 11.6.1, 11.6.0, 11.5.1, 11.5.0,
# 11.4.2, 11.4.1, 11.4.0, 11.3.0, 11.2.1, 11.2.0, 10.2, 10.1, 10.0, 9.2, 9.1, 9.0, 8.0, 7.0". The last patch of
# each 11.x minor stayed; the support policy deletes end-of-life tags six months after notice, so later waves
# follow: a base the list does not name but the registry cannot find gets the general message.
DELETED_NVIDIA_CUDA = frozenset({"11.7.0", "11.6.1", "11.6.0", "11.5.1", "11.5.0", "11.4.2", "11.4.1", "11.4.0",
                                 "11.3.0", "11.2.1", "11.2.0", "10.2", "10.1", "10.0", "9.2", "9.1", "9.0", "8.0",
                                 "7.0"})
# What replaced the deleted patch releases: the last patch of the same minor, which the deletion kept.
KEPT_NVIDIA_CUDA = {"11.2": "11.2.2", "11.3": "11.3.1", "11.4": "11.4.3", "11.5": "11.5.2", "11.6": "11.6.2",
                    "11.7": "11.7.1"}


def deleted_nvidia_tag(reference: str) -> bool:
    """Whether this is one of the nvidia/cuda tags NVIDIA's 2023 notice lists as deleted."""
    match = _NVIDIA_CUDA.search(reference)
    return match is not None and match["version"] in DELETED_NVIDIA_CUDA


def nvidia_replacement(reference: str) -> str:
    """What to use instead of a deleted nvidia/cuda tag."""
    match = _UBUNTU_IN_TAG.search(reference)
    ubuntu = f"ubuntu:{match['version']}" if match else "ubuntu:XX.04"
    version = _NVIDIA_CUDA.search(reference)
    kept = KEPT_NVIDIA_CUDA.get(".".join(version["version"].split(".")[:2])) if version else None
    same_minor = (f" If the entry needs NVIDIA's image itself, the last patch of that CUDA minor, {kept}, was kept: "
                  f"use nvidia/cuda:{kept}-… with the same suffix.") if kept and version else ""
    return (
        f"NVIDIA deleted {reference} from Docker Hub in July 2023 (its notice in gitlab.com/nvidia/container-images/"
        "cuda issue 209 lists the superseded patch releases 11.2.0–11.7.0 and every 10.2 and older tag). "
        f"PyTorch's pip wheels carry their own CUDA runtime, cuDNN and cuBLAS, so use base_image: {ubuntu} for this "
        f"entry (or --base-image {ubuntu}): the build sets NVIDIA_VISIBLE_DEVICES=all and "
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility for CUDA entries so the NVIDIA runtime mounts the driver. Or "
        f"point base_image (or --base-prefix) at a copy you mirrored earlier.{same_minor}"
    )


_BASE_ADVICE = ("load it into the engine (docker pull / docker load), or use a registry you can reach: "
                "--base-prefix MIRROR/ (prepended to base images that name no registry) or --base-image REF")


def base_image_problem(base: BaseImage) -> ConfigError | BuildError | None:
    """Why a build cannot start from this base: not there (a configuration problem), or its registry cannot be
    reached (a build problem); None when it is there."""
    reference, reason = base.reference, base.reason
    if base.source in (BaseImageSource.LOCAL, BaseImageSource.REGISTRY):
        return None
    if deleted_nvidia_tag(reference):
        return ConfigError(f"base image {reference}: not in the engine and not in its registry ({reason}). "
                           + nvidia_replacement(reference))
    if base.source is BaseImageSource.UNREACHABLE:
        hub = engine_failures.unreachable_hub(reason, reference)
        if hub is not None:  # the first thing a host without Docker Hub meets: point base_prefix at a mirror
            return BuildError(engine_failures.docker_hub_line(reference, hub))
        return BuildError(f"base image {reference}: not in the engine, and its registry cannot be reached "
                          f"({engine_failures.in_brief(reason)}); {_BASE_ADVICE}")
    return ConfigError(f"base image {reference}: not in the engine, and its registry does not have it ({reason}); "
                       f"check base_image in versions.yaml, or {_BASE_ADVICE}")


# --------------------------------------------------------------------------------------------------------------
# With the engine


def target_platform(image: ImageSpec, options: BuildOptions) -> str | None:
    """The platform the build asks for: --platform, or the entry's where it is not x86_64 (None: the engine's own).
    ConfigError for a --platform that is not the entry's architecture."""
    if options.platform and options.platform != image.platform:
        raise ConfigError(f"{image.id}: --platform {options.platform}, but the entry is for {image.arch} "
                          f"({image.platform}); set arch in versions.yaml instead")
    return options.platform or (image.platform if image.arch != X86_64 else None)


def architecture_problem(image: ImageSpec, base: BaseImage) -> ConfigError | None:
    """A local base of another architecture than the entry's (its config says which)."""
    if base.arch is None or base.arch == docker_arch(image.arch):
        return None
    return ConfigError(f"{image.id}: base image {base.reference} is linux/{base.arch}, but the entry is for "
                       f"{image.arch} ({image.platform}): pull the base for that platform (docker pull --platform "
                       f"{image.platform} {base.reference}) or name one built for it")


def check_bases(images: Sequence[ImageSpec], options: BuildOptions, engine: Engine) -> None:
    """Before any download: every selected image's base exists, in the engine or in a registry that answers, for
    the entry's architecture; and an entry for another architecture than the engine's can run under emulation."""
    seen: dict[str, BaseImage] = {}
    for image in images:
        target_platform(image, options)  # a --platform against the entry's arch is refused before the bases
        reference = effective_base_image(image, options)
        if reference not in seen:
            seen[reference] = engine.base_image(reference)
        problem = base_image_problem(seen[reference]) or architecture_problem(image, seen[reference])
        if problem is not None:
            raise problem
    foreign = {image.arch: image for image in images if image.arch != X86_64 or options.platform}
    if foreign:
        engine_arch = engine.architecture()
        for arch, image in foreign.items():
            emulated = emulation.emulation_problem(arch, engine_arch, local_engine=engine.local)
            if emulated:
                raise BuildError(f"{image.id}: {emulated}")


def cann_environment(image: ImageSpec, base: str, engine: Engine) -> tuple[tuple[str, str], ...]:
    """What the base's CANN set_env.sh sets (an Ascend image; () for the others), read by running the base once."""
    if image.ascend is None:
        return ()
    run = ContainerRun(image=base, command=cann_env.probe_command(f"{image.user.conda_prefix}/bin",
                                                                  cann_env.candidates(image.ascend.set_env)),
                       user="0:0", working_dir="/", network=False, timeout=CANN_PROBE_TIMEOUT_S,
                       platform=image.platform if image.arch != X86_64 else None)
    output = engine.run(run)
    try:
        found = cann_env.parse(output.stdout) if output.exit_code == 0 else None
    except ValueError:
        found = None
    if found is None:
        raise BuildError(f"{image.id}: sourcing CANN's set_env.sh in base image {base} failed (exit "
                         f"{output.exit_code}): {redact.text(output.stderr.strip()[-400:]) or 'no output'}")
    if found.set_env is None:
        log.warning("%s: base image %s has no CANN set_env.sh (%s): the image gets no CANN environment, and "
                    "torch_npu cannot load without CANN; name a CANN base image, or set cann_set_env", image.id,
                    base, ", ".join(cann_env.candidates(image.ascend.set_env)))
    else:
        log.info("%s: CANN's environment from %s: %s", image.id, found.set_env,
                 ", ".join(name for name, _ in found.variables) or "nothing new")
    return found.variables


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


@dataclass(frozen=True, kw_only=True)
class RegistryCache:
    """Images in a registry whose layers a BuildKit build may take instead of building them (their inline
    cache), with the logins reading them needs: a runner that starts empty pulls what did not change."""

    references: tuple[str, ...]
    logins: tuple[RegistryLogin, ...] = ()


# Every BuildKit image carries the cache metadata of its layers, so a later build can take them by --cache-from.
INLINE_CACHE_ARG = ("BUILDKIT_INLINE_CACHE", "1")


def _request(inputs: BuildInputs, options: BuildOptions, context_dir: Path,
             secrets: tuple[tuple[str, Path], ...] = (), *, labels: tuple[tuple[str, str], ...] = (),
             cache: RegistryCache | None = None, served: context.Bundles = (),
             served_args: tuple[tuple[str, str], ...] = (), platform: str | None = None) -> BuildRequest:
    buildkit = options.backend is Backend.BUILDKIT
    cached_from = cache if cache is not None and buildkit and not options.no_cache else RegistryCache(references=())
    return BuildRequest(
        backend=options.backend,
        context_dir=context_dir,
        target=inputs.target,
        tag=inputs.reference,
        build_args=inputs.build_args + ((INLINE_CACHE_ARG,) if buildkit else served_args),
        labels=inputs.labels + labels,
        cache_from=cached_from.references,
        cache_logins=cached_from.logins,
        no_cache=options.no_cache,
        platform=platform,
        secrets=secrets,
        context_entries=CONTEXT_ENTRIES,
        served=served,
    )


def build_image(fetched: FetchedImage, options: BuildOptions, engine: Engine, *,
                labels: tuple[tuple[str, str], ...] = (), cache: RegistryCache | None = None) -> BuildResult:
    """Build the image of a fetched entry and tag it with the entry's reference (its base checked already);
    `labels` are added to the entry's own, `cache` names registry images BuildKit may take layers from."""
    started = time.monotonic()
    image = fetched.image
    base_env = cann_environment(image, effective_base_image(image, options), engine)
    inputs = build_inputs(fetched, options, base_env=base_env)
    check_backend(options.backend, inputs, image_id=image.id)
    context_dir = context.assemble(fetched, options.work_dir, base_env=base_env)
    served = served_steps(options.backend)
    served_args = context.bundle_digests(fetched, context_dir, served)
    before = engine.image(inputs.reference)
    with _pip_secret(image, inputs) as secrets:
        built = engine.build(_request(inputs, options, context_dir, secrets, labels=labels, cache=cache,
                                      served=served, served_args=served_args,
                                      platform=target_platform(image, options)))
    image_id = built.image_id
    if not image_id:
        raise BuildError(f"{image.id}: the build reported no image id")
    summary = engine.summary(image_id, base_image=inputs.base_image)
    return BuildResult(reference=inputs.reference, image_id=summary.image_id, size=summary.size,
                       layers=summary.layers, duration=time.monotonic() - started, backend=options.backend,
                       stack=summary.stack, previous=before.layers if before is not None else None,
                       steps_ran=built.ran, steps_cached=built.cached, pulled=built.pulled)


def build_command_preview(image: ImageSpec, options: BuildOptions) -> str:
    """For --dry-run: the command the build would run, shown as hermetic with the entry's own artifacts."""
    from modelarts_images.engine import cli  # the docker CLI is only looked for (no engine is asked)

    fetched = _unfetched(image)
    inputs = build_inputs(fetched, options)
    check_backend(options.backend, inputs, image_id=image.id)
    context_dir = context.context_dir(options.work_dir, image.id)
    scratch = Path(tempfile.gettempdir())
    secrets = ((PIP_SECRET_ID, scratch / "modelarts-pip-XXXXXXXX.conf"),) if inputs.needs_secret else ()
    served = served_steps(options.backend)
    keys = tuple((context.inputs_arg(name), "SHA256") for name, _ in served)  # of files not fetched yet
    request = _request(inputs, options, context_dir, secrets, served=served, served_args=keys,
                       platform=target_platform(image, options))
    # the base is not run for a preview: an Ascend build's target depends on what its set_env.sh sets
    cann = (f"# CANN's set_env.sh is read from the base when the build runs; what it sets becomes ENV, and the "
            f"target is then {inputs.target}{context.ENV_SUFFIX}\n") if image.ascend is not None else ""
    if options.backend is Backend.DOCKER:
        return (cann + "# docker SDK, classic builder (client.api.build); the same as:\n"
                + redact.command(cli.classic_equivalent(request)))
    note = cann
    try:
        found = cli.find_buildkit_cli()
    except EngineError as error:
        found = cli.BuildKitCli(path="docker", mode=cli.BuildKitMode.BUILDX, version="")
        note = f"# {error}\n"
    command, extra_env = cli.buildkit_command(found, request, scratch / "modelarts-build-XXXXXXXX" / "iid")
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in extra_env.items())
    return note + prefix + redact.command(command)


def _unfetched(image: ImageSpec) -> FetchedImage:
    def stand_in(artifact: Artifact) -> FetchedFile:
        return FetchedFile(filename=artifact.filename, path=Path(artifact.filename), url=artifact.url,
                           sha256=artifact.sha256 or plan.UNPINNED)

    return FetchedImage(image=image, installer=stand_in(image.installer),
                        wheels=tuple(stand_in(wheel) for wheel in image.wheels), closure=())


def layer_roles(stack: Sequence[Layer]) -> tuple[str, ...]:
    roles = ["base" if layer.from_base else "system packages" for layer in stack]
    names = iter(OWN_LAYERS)
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].from_base:
            break
        if stack[index].diff_id == EMPTY_LAYER:
            roles[index] = "empty"
            continue
        name = next(names, None)
        if name is None:
            break
        roles[index] = name
    return tuple(roles)


def format_result(result: BuildResult) -> str:
    """The build summary: reference, id, size, duration, and each layer with its step, marked `=` where the
    previous build of the tag had it already; then what a push to a registry holding that build would send."""
    lines = [f"{result.reference}: {result.image_id[:19]} {size(result.size)} built in {result.duration:.1f} s "
             f"({result.backend})"]
    if result.steps_ran or result.steps_cached:
        pulled = f"; {len(result.pulled)} layers pulled from the registry's cache" if result.pulled else ""
        lines.append(f"  steps: {len(result.steps_ran)} ran, {len(result.steps_cached)} from the cache{pulled}")
    if not result.stack or not any(layer.step for layer in result.stack):
        lines += [f"  {size(layer.size):>9}  {'base ' if layer.from_base else ''}{layer.step}"
                  for layer in result.layers]
        return "\n".join(lines)
    kept = set(result.previous or ())
    lines += [f"  {'=' if layer.diff_id in kept else '+'} {size(layer.size):>9}  {role:<15} "
              f"{layer.step or layer.diff_id[:19]}" for layer, role in zip(result.stack, result.roles, strict=True)]
    new = result.new_layers
    sent = f"{len(new)} layers, {size(sum(layer.size for layer in new))} uncompressed"
    if result.previous is None:
        lines.append(f"  no earlier build of this tag: a push sends {sent} (less what the registry holds already)")
    else:
        lines.append(f"  {len(result.stack) - len(new)} of {len(result.stack)} layers as in the previous build (=); "
                     f"a push to a registry that holds it sends {sent}")
    return "\n".join(lines)
