"""Running containers on the Docker Engine, through the docker SDK only (to be merged into engine.py).

- `connect()`: a client for the engine DOCKER_HOST or the current docker context names (VerifyError if none);
- `run_container()`: one container from a `ContainerRun`, with a timeout, its output collected, and the
  container ALWAYS removed: on success, on failure, on timeout and on Ctrl-C (kill, then remove);
- `gpu_support()`: whether the engine can give a container a GPU (the `nvidia` runtime, or a real try);
- `image_config()`: what the image's config says (default user, working directory, size, labels).

A GPU request to an engine without a GPU runtime is answered `could not select device driver "" with
capabilities: [[gpu]]`; it becomes a VerifyError that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from ..errors import VerifyError
from . import connect as engine_connect

log = logging.getLogger(__name__)

LABEL = "modelarts-images.verify"  # on every container this module starts, to find strays
NAME_PREFIX = "modelarts-verify-"
GPU_DRIVER_MISSING = "could not select device driver"
OUTPUT_LIMIT = 4 << 20  # bytes of stdout and of stderr kept from one container


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A bind mount of a host directory into the container."""

    source: str  # absolute host path
    target: str  # absolute path in the container
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class ContainerRun:
    """One container to run: everything docker is told, nothing else."""

    image: str
    # The argv, executed without a shell. It replaces the image's ENTRYPOINT and CMD, as a Kubernetes
    # `command:` does (ModelArts' boot command is not appended to an image's entrypoint).
    command: tuple[str, ...]
    user: str  # "uid:gid" or a name
    working_dir: str
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    gpus: int = 0  # 0: no GPU asked for; N: N GPUs; -1: all the engine has
    hostname: str | None = None
    network: bool = True  # False: no network at all (probes)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environment)


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
    """What an image's config says about how it runs."""

    reference: str
    image_id: str
    user: str  # "" means root
    working_dir: str
    size: int  # bytes, uncompressed, as the engine reports it
    labels: tuple[tuple[str, str], ...]
    environment: tuple[str, ...]  # NAME=value as in the config
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass(frozen=True, kw_only=True)
class GpuSupport:
    available: bool
    reason: str  # in words, for "GPU: skipped, ..." lines


# --------------------------------------------------------------------------------------------------------------
# Connecting


def connect() -> Any:
    """A client for verification runs: no engine is a verification failure (exit 5)."""
    return engine_connect(VerifyError)


# --------------------------------------------------------------------------------------------------------------
# Running


def container_options(spec: ContainerRun) -> dict[str, Any]:
    """The keyword arguments of `client.containers.create()` for `spec` (pure; the tests read them)."""
    options: dict[str, Any] = {
        "entrypoint": list(spec.command),
        "user": spec.user,
        "working_dir": spec.working_dir,
        "environment": spec.env,
        "labels": {LABEL: "1"},
        "detach": True,
    }
    if spec.mounts:
        options["mounts"] = [
            docker.types.Mount(target=mount.target, source=mount.source, type="bind", read_only=mount.read_only)
            for mount in spec.mounts
        ]
    if spec.hostname:
        options["hostname"] = spec.hostname
    if not spec.network:
        options["network_mode"] = "none"
    if spec.gpus:
        options["device_requests"] = [docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
    return options


def _explanation(error: docker.errors.APIError) -> str:
    return str(getattr(error, "explanation", None) or error)


def start_error(error: docker.errors.APIError, spec: ContainerRun) -> VerifyError:
    """A failed create/start as a VerifyError that says what went wrong and what to do."""
    detail = _explanation(error)
    if GPU_DRIVER_MISSING in detail:
        return VerifyError(
            f"a GPU was asked for, but this Docker Engine has no GPU runtime (it answered: {detail}). Install the "
            "NVIDIA Container Toolkit on the engine's host and restart dockerd, or verify on the CPU "
            "(--device cpu; --device auto chooses the CPU on such an engine)."
        )
    if spec.gpus and "nvidia" in detail.lower():
        return VerifyError(f"a GPU was asked for, but the NVIDIA container runtime failed: {detail}")
    return VerifyError(f"could not start a container of {spec.image}: {detail}")


def _text(data: bytes) -> str:
    if len(data) > OUTPUT_LIMIT:
        data = b"[... earlier output cut ...]\n" + data[-OUTPUT_LIMIT:]
    return data.decode("utf-8", "replace")


def run_container(client: Any, spec: ContainerRun, *, timeout: float, name: str | None = None) -> ContainerOutput:
    """Run `spec` to completion (or kill it after `timeout` seconds) and return its exit code and output.

    The container is removed whatever happens, Ctrl-C included. A container that cannot start (a GPU asked for
    on an engine without a GPU runtime, an image that is not there) raises VerifyError.
    """
    name = name or f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}"
    container: Any = None
    started = time.monotonic()
    log.debug("+ run %s as %s in %s: %s", spec.image, spec.user, spec.working_dir, list(spec.command))
    try:
        try:
            container = client.containers.create(spec.image, name=name, **container_options(spec))
        except docker.errors.ImageNotFound as error:
            raise VerifyError(f"image {spec.image} is not in the engine; build it first (inv build) or pull it "
                              f"({_explanation(error)})") from error
        except docker.errors.APIError as error:
            raise start_error(error, spec) from error
        try:
            container.start()
        except docker.errors.APIError as error:
            raise start_error(error, spec) from error
        timed_out = False
        exit_code: int | None = None
        try:
            status = container.wait(timeout=timeout)
            exit_code = int(status.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as error:
            if time.monotonic() - started < timeout * 0.9:
                raise VerifyError(f"lost the Docker Engine while {name} was running: {error}") from error
            timed_out = True
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
        stdout = _text(container.logs(stdout=True, stderr=False))
        stderr = _text(container.logs(stdout=False, stderr=True))
        return ContainerOutput(name=name, exit_code=exit_code, stdout=stdout, stderr=stderr,
                               seconds=time.monotonic() - started, timed_out=timed_out)
    finally:
        remove_container(client, name, container)


def remove_container(client: Any, name: str, container: Any = None) -> None:
    """Kill and remove a container by object or name; already gone is fine, anything else is logged."""
    try:
        if container is None:
            # create() may have reached the engine before an interruption: find it by its name.
            container = client.containers.get(name)
        container.remove(force=True)  # force: kills it first when it still runs
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, requests.RequestException) as error:
        log.warning("could not remove container %s: %s (remove it with `docker rm -f %s`)", name, error, name)


def stray_containers(client: Any) -> list[str]:
    """Names of containers this module started that still exist (there should be none)."""
    return [container.name for container in client.containers.list(all=True, filters={"label": LABEL})]


# --------------------------------------------------------------------------------------------------------------
# What the engine and an image offer


def gpu_support(client: Any, image: str | None = None) -> GpuSupport:
    """Whether containers can get a GPU: the engine lists the `nvidia` runtime, or (given an image) a container
    asking for one starts. dockerd also serves GPU requests with just nvidia-container-runtime-hook on its
    PATH, which `docker info` does not show, hence the try."""
    try:
        runtimes: Mapping[str, Any] = client.info().get("Runtimes") or {}
    except (docker.errors.APIError, requests.RequestException) as error:
        return GpuSupport(available=False, reason=f"the engine did not answer `docker info`: {error}")
    if "nvidia" in runtimes:
        return GpuSupport(available=True, reason="the engine has the nvidia runtime")
    listed = ", ".join(sorted(runtimes)) or "none"
    if image is None:
        return GpuSupport(available=False, reason=f"the engine's runtimes are {listed}")
    name = f"{NAME_PREFIX}gpu-{uuid.uuid4().hex[:12]}"
    spec = ContainerRun(image=image, command=("true",), user="0:0", working_dir="/", gpus=1, network=False)
    container: Any = None
    try:
        container = client.containers.create(image, name=name, **container_options(spec))
        container.start()
        container.wait(timeout=60)
    except docker.errors.APIError as error:
        detail = _explanation(error)
        if GPU_DRIVER_MISSING in detail:
            return GpuSupport(available=False, reason=f"the engine's runtimes are {listed}, and a container asking "
                                                      f"for a GPU was refused: {detail}")
        return GpuSupport(available=False, reason=f"a container asking for a GPU did not start: {detail}")
    except requests.RequestException as error:
        return GpuSupport(available=False, reason=f"a container asking for a GPU did not finish: {error}")
    finally:
        remove_container(client, name, container)
    return GpuSupport(available=True, reason="a container asking for a GPU started")


def image_config(client: Any, reference: str) -> ImageConfig | None:
    """The config of a local image, or None when the engine does not have it."""
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as error:
        raise VerifyError(f"could not inspect image {reference}: {_explanation(error)}") from error
    attrs = image.attrs
    config = attrs.get("Config") or {}
    return ImageConfig(
        reference=reference,
        image_id=str(attrs.get("Id", "")),
        user=str(config.get("User") or ""),
        working_dir=str(config.get("WorkingDir") or ""),
        size=int(attrs.get("Size") or 0),
        labels=tuple(sorted((config.get("Labels") or {}).items())),
        environment=tuple(config.get("Env") or ()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
    )


class Containers:
    """The engine as verification uses it: run a container, inspect an image, ask about GPUs."""

    def __init__(self, client: Any, *, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    def run(self, spec: ContainerRun) -> ContainerOutput:
        return run_container(self.client, spec, timeout=self.timeout)

    def image(self, reference: str) -> ImageConfig | None:
        return image_config(self.client, reference)

    def gpu_support(self, image: str | None = None) -> GpuSupport:
        return gpu_support(self.client, image)
