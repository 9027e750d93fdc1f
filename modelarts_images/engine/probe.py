"""What `inv doctor` asks of the Docker Engine: whether it answers, its version and architecture, where it is (the
endpoint, DOCKER_HOST), whether it runs rootless, its runtimes (nvidia) and its data root; every request bounded
by a short timeout, so an engine that accepts a connection and never answers cannot hold the check."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import docker.errors
import requests

from modelarts_images.engine.adapter import connect, endpoint, engine_address
from modelarts_images.engine.api import is_local
from modelarts_images.errors import EngineError
from modelarts_images.shared import redact
from modelarts_images.shared.text import one_line

TIMEOUT_S = 2  # seconds per request to the engine (docker-py takes whole seconds)


@dataclass(frozen=True, kw_only=True)
class EngineFacts:
    """What the engine said, or why it said nothing."""

    endpoint: str  # adapter.endpoint(): which engine, in words (DOCKER_HOST=..., a docker context, the default)
    host: str  # the address the client talks to: unix:///var/run/docker.sock, tcp://host:2376, ssh://...
    local: bool  # a socket on this machine
    reached: bool
    problem: str = ""  # why it was not reached, or why `docker info` failed (masked, one line)
    version: str = ""  # ServerVersion
    api_version: str = ""
    architecture: str = ""  # as the engine spells it: x86_64, aarch64
    operating_system: str = ""
    rootless: bool = False  # SecurityOptions has name=rootless
    runtimes: tuple[str, ...] = ()
    root_dir: str = ""  # DockerRootDir
    seconds: float = 0.0


def probe(timeout: int = TIMEOUT_S) -> EngineFacts:
    """Ping the engine, then `docker info`, each request bounded by `timeout` seconds; never raises."""
    started = time.monotonic()
    where, host = endpoint(), engine_address()
    base = EngineFacts(endpoint=where, host=redact.url(host), local=is_local(host), reached=False)
    try:
        engine = connect(timeout=timeout)
    except EngineError as error:
        return replace(base, problem=one_line(redact.text(str(error)), 400), seconds=time.monotonic() - started)
    try:
        info: Mapping[str, Any] = engine.client.info()
        version: Mapping[str, Any] = engine.client.version()
    except (docker.errors.DockerException, requests.RequestException, OSError) as error:
        return replace(base, reached=True, problem=one_line(redact.text(f"`docker info` failed: {error}"), 400),
                       seconds=time.monotonic() - started)
    finally:
        engine.close()
    options = [str(option) for option in info.get("SecurityOptions") or ()]
    return replace(
        base, reached=True,
        version=str(info.get("ServerVersion") or version.get("Version") or ""),
        api_version=str(version.get("ApiVersion") or ""),
        architecture=str(info.get("Architecture") or ""),
        operating_system=str(info.get("OperatingSystem") or ""),
        rootless=any("name=rootless" in option.split(",") for option in options),
        runtimes=tuple(sorted(str(name) for name in (info.get("Runtimes") or {}))),
        root_dir=str(info.get("DockerRootDir") or ""),
        seconds=time.monotonic() - started,
    )
