"""Containers on the engine, through the docker SDK: run one to completion with a timeout, always removed.

Every container started here carries the label LABEL, so a stray one (there should be none) can be found. A GPU
request to an engine without a GPU runtime is answered `could not select device driver "" with capabilities:
[[gpu]]`; it becomes an EngineError that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import docker
import docker.constants
import docker.errors
import docker.types
import requests
from docker.models.containers import Container

from modelarts_images.engine.api import ContainerOutput, ContainerRun, GpuSupport, GroupNetwork
from modelarts_images.engine.images import explanation
from modelarts_images.errors import EngineError

log = logging.getLogger("modelarts_images.engine")

LABEL = "modelarts-images.verify"  # on every container this module starts, to find strays
NAME_PREFIX = "modelarts-verify-"
GPU_DRIVER_MISSING = "could not select device driver"
OUTPUT_LIMIT = 4 << 20  # bytes of stdout and of stderr kept from one container


# The smallest CPU weight the engine takes (the default is 1024): under contention such a container waits.
BACKGROUND_CPU_SHARES = 2


def container_options(spec: ContainerRun, *, network: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `client.containers.create()` for `spec` (pure; the tests read them), on the
    group network `network` when given."""
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
    elif network is not None:
        options["network"] = network
        options["networking_config"] = {network: docker.types.EndpointConfig(
            version=docker.constants.DEFAULT_DOCKER_API_VERSION, aliases=list(spec.aliases),
            ipv4_address=spec.address)}
    if spec.background:
        options["cpu_shares"] = BACKGROUND_CPU_SHARES
    if spec.platform:
        options["platform"] = spec.platform
    if spec.devices:
        options["devices"] = [f"{device}:{device}:rwm" for device in spec.devices]
    if spec.gpu_ids:
        options["device_requests"] = [docker.types.DeviceRequest(device_ids=list(spec.gpu_ids),
                                                                 capabilities=[["gpu"]])]
    elif spec.gpus:
        options["device_requests"] = [docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
    return options


def start_error(error: docker.errors.APIError, spec: ContainerRun) -> EngineError:
    """A failed create/start as an EngineError that says what went wrong and what to do."""
    detail = explanation(error)
    if GPU_DRIVER_MISSING in detail:
        return EngineError(
            f"a GPU was asked for, but this Docker Engine has no GPU runtime (it answered: {detail}). Install the "
            "NVIDIA Container Toolkit on the engine's host and restart dockerd, or verify on the CPU "
            "(--device cpu; --device auto chooses the CPU on such an engine)."
        )
    if spec.gpu_ids and "unknown device" in detail.lower():
        return EngineError(
            f"the host's GPU {'/'.join(spec.gpu_ids)} was asked for, and the host does not have it (the NVIDIA "
            f"runtime answered: {detail}). Each worker of a distributed run gets GPUs of its own: --nodes × "
            "--procs-per-node must not exceed the host's GPUs; fewer nodes or processes per node, or --device cpu.")
    if (spec.gpus or spec.gpu_ids) and "nvidia" in detail.lower():
        return EngineError(f"a GPU was asked for, but the NVIDIA container runtime failed: {detail}")
    return EngineError(f"could not start a container of {spec.image}: {detail}")


def _text(data: bytes) -> str:
    if len(data) > OUTPUT_LIMIT:
        data = b"[... earlier output cut ...]\n" + data[-OUTPUT_LIMIT:]
    return data.decode("utf-8", "replace")


def run_container(client: docker.DockerClient, spec: ContainerRun, *, name: str | None = None) -> ContainerOutput:
    """Run `spec` to completion (or kill it after `spec.timeout` seconds) and return its exit code and output.

    The container is removed whatever happens, Ctrl-C included. A container that cannot start (a GPU asked for
    on an engine without a GPU runtime, an image that is not there) raises EngineError.
    """
    name = name or f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}"
    container: Container | None = None
    started = time.monotonic()
    log.debug("+ run %s as %s in %s: %s", spec.image, spec.user, spec.working_dir, list(spec.command))
    try:
        try:
            container = client.containers.create(spec.image, name=name, **container_options(spec))
        except docker.errors.ImageNotFound as error:
            raise EngineError(f"image {spec.image} is not in the engine: build or pull it first "
                              f"({explanation(error)})") from error
        except docker.errors.APIError as error:
            raise start_error(error, spec) from error
        try:
            container.start()
        except docker.errors.APIError as error:
            raise start_error(error, spec) from error
        timed_out = False
        exit_code: int | None = None
        try:
            status = container.wait(timeout=spec.timeout)
            exit_code = int(status.get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as error:
            if time.monotonic() - started < spec.timeout * 0.9:
                raise EngineError(f"lost the Docker Engine while {name} was running: {error}") from error
            timed_out = True
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
        stdout = _text(container.logs(stdout=True, stderr=False))
        stderr = _text(container.logs(stdout=False, stderr=True))
        return ContainerOutput(name=name, exit_code=exit_code, stdout=stdout, stderr=stderr,
                               seconds=time.monotonic() - started, timed_out=timed_out)
    finally:
        remove_container(client, name, container)


# Private subnets tried for a group's network, at random, until one is free on the engine.
_SUBNETS = [f"10.{second}.{third}.0/24" for second in range(200, 216) for third in range(256)]
_NETWORK_TRIES = 8


def create_network(client: docker.DockerClient, name: str) -> GroupNetwork:
    """An internal bridge network of its own (no route out of it), on a private /24 no other network holds."""
    for subnet in random.sample(_SUBNETS, _NETWORK_TRIES):
        pool = docker.types.IPAMPool(subnet=subnet)
        try:
            client.networks.create(name, driver="bridge", internal=True, labels={LABEL: "1"},
                                   ipam=docker.types.IPAMConfig(pool_configs=[pool]))
        except docker.errors.APIError as error:
            if "overlap" in explanation(error).lower():
                continue  # another network holds that subnet: try the next
            raise EngineError(f"could not create the network {name}: {explanation(error)}") from error
        return GroupNetwork(name=name, subnet=subnet)
    raise EngineError(f"could not create the network {name}: {_NETWORK_TRIES} private subnets tried, each "
                      "already taken by another network of the engine (`docker network ls`)")


def remove_network(client: docker.DockerClient, name: str) -> None:
    try:
        client.networks.get(name).remove()
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, requests.RequestException) as error:
        log.warning("could not remove network %s: %s (remove it with `docker network rm %s`)", name, error, name)


def run_group(client: docker.DockerClient, plan: Callable[[GroupNetwork], Sequence[ContainerRun]], *,
              network: str) -> tuple[ContainerOutput, ...]:
    """Every container `plan` gives, started together on a new internal network and run to completion; at the
    earliest timeout the ones still running are killed. The containers, then the network, are always removed."""
    created: list[tuple[str, Container | None]] = []
    group = create_network(client, network)
    try:
        specs = list(plan(group))
        started = time.monotonic()
        for index, spec in enumerate(specs):
            name = f"{network}-{index}"
            created.append((name, None))
            log.debug("+ run %s as %s on %s (%s): %s", spec.image, spec.user, network, ", ".join(spec.aliases),
                      list(spec.command))
            try:
                container = client.containers.create(spec.image, name=name,
                                                     **container_options(spec, network=network))
                created[-1] = (name, container)
                container.start()
            except docker.errors.ImageNotFound as error:
                raise EngineError(f"image {spec.image} is not in the engine: build or pull it first "
                                  f"({explanation(error)})") from error
            except docker.errors.APIError as error:
                raise start_error(error, spec) from error
        deadline = started + min(spec.timeout for spec in specs)
        outputs = []
        for (name, member), spec in zip(created, specs, strict=True):
            assert member is not None  # every one was created and started, or the loop above raised
            exit_code: int | None = None
            timed_out = False
            try:
                status = member.wait(timeout=max(deadline - time.monotonic(), 1.0))
                exit_code = int(status.get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as error:
                if time.monotonic() < deadline - 0.1 * spec.timeout:
                    raise EngineError(f"lost the Docker Engine while {name} was running: {error}") from error
                timed_out = True
                with contextlib.suppress(docker.errors.APIError):
                    member.kill()
            outputs.append(ContainerOutput(
                name=name, exit_code=exit_code, stdout=_text(member.logs(stdout=True, stderr=False)),
                stderr=_text(member.logs(stdout=False, stderr=True)), seconds=time.monotonic() - started,
                timed_out=timed_out))
        return tuple(outputs)
    finally:
        for name, left in created:
            remove_container(client, name, left)
        remove_network(client, network)


def remove_container(client: docker.DockerClient, name: str, container: Container | None = None) -> None:
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


# --------------------------------------------------------------------------------------------------------------
# What the engine and an image offer


def gpu_support(client: docker.DockerClient, image: str | None = None) -> GpuSupport:
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
    container: Container | None = None
    try:
        container = client.containers.create(image, name=name, **container_options(spec))
        container.start()
        container.wait(timeout=60)
    except docker.errors.APIError as error:
        detail = explanation(error)
        if GPU_DRIVER_MISSING in detail:
            return GpuSupport(available=False, reason=f"the engine's runtimes are {listed}, and a container asking "
                                                      f"for a GPU was refused: {detail}")
        return GpuSupport(available=False, reason=f"a container asking for a GPU did not start: {detail}")
    except requests.RequestException as error:
        return GpuSupport(available=False, reason=f"a container asking for a GPU did not finish: {error}")
    finally:
        remove_container(client, name, container)
    return GpuSupport(available=True, reason="a container asking for a GPU started")
