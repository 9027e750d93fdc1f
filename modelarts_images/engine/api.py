"""What the tool asks of a container engine, as one typed protocol, and the records that go in and come out.

Nothing here talks to an engine: `engine.adapter.DockerEngine` implements the protocol with the docker SDK and
the docker CLI, and unit tests implement it with fakes. Every failure of the engine is an EngineError; the
pipeline step that asked turns it into its stage's error (build 4, verify 5, registry 6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from modelarts_images.contract import VERIFY_TIMEOUT_S
from modelarts_images.errors import EngineError
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.progress import ProgressCallback

LOCAL_SCHEMES = ("unix://", "npipe://")  # a socket of this machine: its files, /proc and binfmt are the engine's


def is_local(address: str) -> bool:
    """Whether an engine address (DOCKER_HOST's form) is a socket on this machine."""
    return address.startswith(LOCAL_SCHEMES)


class Refusal(Choice):
    """Why a registry operation through the engine failed, for the message the publish step gives."""

    AUTH = "auth"  # the registry refused the login or the push for lack of rights
    NOT_LOCAL = "not-local"  # no local image of that name
    OTHER = "other"


class RegistryRefusedError(EngineError):
    """The registry, through the engine, refused a login or a push (`kind` says why; the message is masked)."""

    def __init__(self, message: str, *, kind: Refusal, detail: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail  # the engine's own words, masked


class Backend(Choice):
    """How an image is built."""

    DOCKER = "docker"  # the docker SDK's low-level build API: the classic builder
    BUILDKIT = "buildkit"  # the docker CLI: `docker buildx build --load`, or DOCKER_BUILDKIT=1 before client 23


class BaseImageSource(Choice):
    """Where a base image was found, or why it was not."""

    LOCAL = "local"  # in the engine
    REGISTRY = "registry"  # its registry answers for it
    MISSING = "missing"  # its registry answers, without it
    UNREACHABLE = "unreachable"  # its registry cannot be reached


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    reference: str
    source: BaseImageSource
    reason: str = ""  # the engine's words when it is missing or unreachable
    arch: str | None = None  # a local base's architecture as its config says ('amd64', 'arm64'); None: not known


# --------------------------------------------------------------------------------------------------------------
# Builds


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One image build, the same for both backends."""

    backend: Backend
    context_dir: Path
    target: str
    tag: str
    build_args: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    no_cache: bool = False
    platform: str | None = None
    # BuildKit secrets: (id, file); the classic builder refuses a request that has any
    secrets: tuple[tuple[str, Path], ...] = ()
    # what the classic builder is sent: these top-level entries of the context (the .dockerignore allow-list)
    context_entries: tuple[str, ...] = ()
    # the classic builder: bundles of the context its steps fetch from a file server on this machine's loopback
    # (name -> entries; engine/served.py), whose address they get in the build argument FTP_PROXY
    served: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # BuildKit: images in a registry whose inline cache the build may take layers from, and the logins it needs
    cache_from: tuple[str, ...] = ()
    cache_logins: tuple[RegistryLogin, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Built:
    """What a build gave and did: its steps (RUN, COPY, ADD) that ran, those taken from a cache, and the layers
    BuildKit pulled from a registry's cache (their compressed digests)."""

    image_id: str
    ran: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()
    pulled: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer of an image, with the step that created it."""

    size: int
    step: str
    from_base: bool  # part of the base image rather than of this build
    diff_id: str = ""  # sha256:<hex> of the layer's uncompressed content: equal ids, the same layer


@dataclass(frozen=True, kw_only=True)
class ImageSummary:
    image_id: str
    size: int
    layers: tuple[Layer, ...]  # largest first
    # Every layer, oldest first, with its diff id; step and size where the history says which step made it.
    stack: tuple[Layer, ...] = ()


# --------------------------------------------------------------------------------------------------------------
# Containers and images


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A bind mount of a host directory or file into the container."""

    source: str  # absolute host path
    target: str  # absolute path in the container
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class ContainerRun:
    """One container to run: everything the engine is told, nothing else."""

    image: str
    # The argv, executed without a shell. It replaces the image's ENTRYPOINT and CMD, as a Kubernetes
    # `command:` does (ModelArts' boot command is not appended to an image's entrypoint).
    command: tuple[str, ...]
    user: str  # "uid:gid" or a name
    working_dir: str
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    gpus: int = 0  # 0: no GPU asked for; N: N GPUs; -1: all the engine has
    # Particular GPUs by index, in place of a count: the workers of a distributed run on one host each get
    # GPUs of their own (a count would hand every worker the first ones).
    gpu_ids: tuple[str, ...] = ()
    hostname: str | None = None
    network: bool = True  # False: no network at all (probes)
    # On a group's network (Engine.run_group): the names the others reach this container by, and its address.
    aliases: tuple[str, ...] = ()
    address: str | None = None
    timeout: float = VERIFY_TIMEOUT_S  # seconds before the container is killed
    # A probe that runs beside the boot command's own run: it gets the CPU only when that run leaves some.
    background: bool = False
    platform: str | None = None  # the image's platform where it is not the engine's own ('linux/arm64')
    devices: tuple[str, ...] = ()  # host device files passed in as they are (an Ascend NPU's /dev/davinci*)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)


@dataclass(frozen=True, kw_only=True)
class GroupNetwork:
    """A network of its own for a group of containers that talk to one another (the workers of a distributed
    job): created for the run, internal (no route out), removed after it."""

    name: str
    subnet: str  # e.g. 10.213.7.0/24; the containers' addresses are taken from it

    def address(self, index: int) -> str:
        """The address of the index-th container (from 0): .10, .11, ... of the subnet."""
        return self.subnet.rsplit(".", 1)[0] + f".{10 + index}"


@dataclass(frozen=True, kw_only=True)
class ContainerOutput:
    name: str
    exit_code: int | None  # None when it was killed for running past the timeout
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """What a local image's config says about how it runs."""

    reference: str
    image_id: str  # sha256:<hex> of the config; a registry manifest's config.digest for the same image
    user: str  # "" means root
    working_dir: str
    size: int  # bytes, uncompressed, as the engine reports it
    labels: tuple[tuple[str, str], ...]
    environment: tuple[str, ...]  # NAME=value as in the config
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    layers: tuple[str, ...] = ()  # the diff ids of its layers, oldest first

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass(frozen=True, kw_only=True)
class GpuSupport:
    available: bool
    reason: str  # in words, for "GPU: skipped, ..." lines


# --------------------------------------------------------------------------------------------------------------
# Registries


@dataclass(frozen=True, kw_only=True)
class RegistryLogin:
    """A user and password for one registry; the password never shows in repr()."""

    registry: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class RegistryAuth:
    """What the engine accepted at login, sent again with each push (in a header, never on a command line)."""

    config: Mapping[str, str] = field(repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(value for key, value in self.config.items() if key in ("password", "identitytoken") and value)


@dataclass(frozen=True, kw_only=True)
class Pushed:
    """A push the registry acknowledged."""

    reference: str
    digest: str  # sha256:<hex> of the manifest the registry stored
    manifest_size: int | None  # bytes of that manifest, when the stream said
    attempts: int
    layers_sent: int = 0  # layers the registry did not have
    layers_there: int = 0  # layers it had already (or mounted from another repository)
    bytes_sent: int = 0  # compressed bytes of the layers sent, as the engine counted them


class Engine(Protocol):
    """A container engine as every stage uses it: build, inspect, run, log in, tag and push."""

    @property
    def endpoint(self) -> str:
        """Which engine this is, in words, for messages."""
        ...

    @property
    def local(self) -> bool:
        """Whether the engine listens on a socket of this machine (whose binfmt_misc handlers it then uses)."""
        ...

    def base_image(self, reference: str) -> BaseImage: ...

    def architecture(self) -> str:
        """The machine the engine runs on, as `uname -m` says it ('x86_64', 'aarch64')."""
        ...

    def build(self, request: BuildRequest) -> Built:
        """Build and tag; the image id and what the build did."""
        ...

    def image(self, reference: str) -> ImageConfig | None:
        """The config of a local image, None when the engine has no such image."""
        ...

    def summary(self, image_id: str, *, base_image: str | None) -> ImageSummary: ...

    def run(self, spec: ContainerRun) -> ContainerOutput:
        """Run to completion or timeout; the container is always removed."""
        ...

    def gpu_support(self, image: str | None = None) -> GpuSupport: ...

    def stored_login(self, registry: str) -> RegistryLogin | None:
        """What `docker login` stored for the registry, if anything."""
        ...

    def login(self, login: RegistryLogin) -> RegistryAuth: ...

    def tag(self, source: str, repository: str, tag: str) -> None: ...

    def push(self, repository: str, tag: str, *, auth: RegistryAuth | None, secrets: tuple[str, ...] = (),
             progress: ProgressCallback | None = None) -> Pushed: ...


@runtime_checkable
class GroupEngine(Protocol):
    """An engine that can also run a group of containers on a network of their own (a distributed run)."""

    def run_group(self, plan: Callable[[GroupNetwork], Sequence[ContainerRun]], *,
                  network: str) -> tuple[ContainerOutput, ...]:
        """Create a network of its own named `network` (internal: no route out), run the containers that `plan`
        gives for it all at once, each to completion; at the first timeout every one still running is killed.
        Every container and the network are removed whatever happens, Ctrl-C included."""
        ...
