"""The Docker Engine behind the `Engine` protocol: the one object the stages hold, built by `connect()`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import docker
import docker.errors
import requests

from modelarts_images.engine import builds, containers, failures, images, publishing
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BuildRequest,
    Built,
    ContainerOutput,
    ContainerRun,
    GpuSupport,
    GroupNetwork,
    ImageConfig,
    ImageSummary,
    Pushed,
    RegistryAuth,
    RegistryLogin,
    is_local,
)
from modelarts_images.engine.cli import BuildKitCli, find_buildkit_cli
from modelarts_images.errors import EngineError
from modelarts_images.shared import retry
from modelarts_images.shared.progress import ProgressCallback


def endpoint() -> str:
    """Which engine a client will talk to, in words, for messages."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return f"DOCKER_HOST={host}"
    context = os.environ.get("DOCKER_CONTEXT")
    if context:
        return f"docker context {context!r} (DOCKER_CONTEXT)"
    try:
        from docker.context import ContextAPI

        current = ContextAPI.get_current_context()
        if current is not None and current.name != "default":
            return f"docker context {current.name!r} ({current.Host})"
    except Exception:  # only for a message: any failure reading the contexts falls through to the default
        pass
    return "unix:///var/run/docker.sock (the default; set DOCKER_HOST or a docker context for another engine)"


DEFAULT_SOCKET = "/var/run/docker.sock"


def engine_address(env: Mapping[str, str] | None = None) -> str:
    """The address a client will talk to: DOCKER_HOST, the current docker context's host, or the default socket
    (unix://..., tcp://host:port, ssh://...)."""
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST")
    if host:
        return host
    try:
        from docker.context import ContextAPI

        current = ContextAPI.get_current_context()
        if current is not None and current.Host:
            return str(current.Host)
    except Exception:  # a context that cannot be read leaves the default socket
        pass
    return f"unix://{DEFAULT_SOCKET}"


def socket_path() -> str | None:
    """The Unix socket a client will open; None for an engine over TCP (or SSH), for messages."""
    host = engine_address()
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def connect(*, registry_backoff: retry.Backoff = retry.REGISTRY_BACKOFF, timeout: int | None = None) -> DockerEngine:
    """The engine DOCKER_HOST or the current docker context names, checked with a ping; EngineError if none.
    `timeout` bounds each request of the client in seconds (default: the docker SDK's 60)."""
    where = endpoint()
    try:
        client = docker.from_env() if timeout is None else docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError, ValueError) as error:
        # ValueError: docker-py's reading of a malformed DOCKER_HOST (a port out of range, not a number)
        # One line: no socket, nothing listening on it, no permission to open it, a host out of reach, and what to do.
        raise EngineError(failures.no_engine_line(where, socket_path(), error)) from error
    return DockerEngine(client, endpoint=where, local=is_local(engine_address()), registry_backoff=registry_backoff)


class DockerEngine:
    """The Engine protocol over a docker SDK client, and the docker CLI for BuildKit builds."""

    def __init__(self, client: docker.DockerClient, *, endpoint: str, local: bool,
                 registry_backoff: retry.Backoff = retry.REGISTRY_BACKOFF) -> None:
        self.client = client
        self._endpoint = endpoint
        self.local = local  # a socket on this machine: its binfmt_misc handlers are the engine's
        self.registry_backoff = registry_backoff
        self._buildkit: BuildKitCli | None = None

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def close(self) -> None:
        self.client.close()

    def architecture(self) -> str:
        try:
            return str(self.client.info().get("Architecture") or "")
        except (docker.errors.DockerException, requests.RequestException) as error:
            raise EngineError(f"the engine at {self._endpoint} did not answer: {error}") from error

    def base_image(self, reference: str) -> BaseImage:
        return images.base_image(self.client, reference, self._endpoint)

    def buildkit_cli(self) -> BuildKitCli:
        """The docker CLI that drives BuildKit, found once (each probe starts a process)."""
        if self._buildkit is None:
            self._buildkit = find_buildkit_cli()
        return self._buildkit

    def build(self, request: BuildRequest) -> Built:
        try:
            if request.backend is Backend.BUILDKIT:
                return builds.build_buildkit(request, self.buildkit_cli())
            return builds.build_classic(self.client, request)
        except builds.BuildFailedError as failed:
            # The engine's disk full, or a base on Docker Hub out of reach: one line with what to do, instead of
            # the engine's words and the log's tail (the log went to stderr as it came).
            full = failures.disk_full(failed.error, failed.tail)
            line = failures.explain(failed.error, tail=failed.tail, reference=dict(request.build_args).get(
                "BASE_IMAGE"), data_root=self.data_root() if full else None)
            if line is None:
                raise
            raise EngineError(f"{failed.head}: {line}") from failed

    def data_root(self) -> str | None:
        """Where the engine keeps images and build cache (docker info's DockerRootDir); None if it does not say."""
        try:
            root = self.client.info().get("DockerRootDir")
        except (docker.errors.DockerException, requests.RequestException):
            return None
        return str(root) if root else None

    def image(self, reference: str) -> ImageConfig | None:
        return images.image_config(self.client, reference)

    def summary(self, image_id: str, *, base_image: str | None) -> ImageSummary:
        return images.image_summary(self.client, image_id, base_image=base_image)

    def run(self, spec: ContainerRun) -> ContainerOutput:
        return containers.run_container(self.client, spec)

    def run_group(self, plan: Callable[[GroupNetwork], Sequence[ContainerRun]], *,
                  network: str) -> tuple[ContainerOutput, ...]:
        return containers.run_group(self.client, plan, network=network)

    def gpu_support(self, image: str | None = None) -> GpuSupport:
        return containers.gpu_support(self.client, image)

    def stored_login(self, registry: str) -> RegistryLogin | None:
        return publishing.stored_login(registry)

    def login(self, login: RegistryLogin) -> RegistryAuth:
        return publishing.login(self.client, login, backoff=self.registry_backoff)

    def tag(self, source: str, repository: str, tag: str) -> None:
        publishing.tag(self.client, source, repository, tag)

    def push(self, repository: str, tag: str, *, auth: RegistryAuth | None, secrets: tuple[str, ...] = (),
             progress: ProgressCallback | None = None) -> Pushed:
        return publishing.push(self.client, repository, tag, auth=auth, secrets=secrets,
                               backoff=self.registry_backoff, progress=progress)
