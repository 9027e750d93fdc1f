"""The docker CLI: which one can drive BuildKit, and the command lines of builds (no engine is asked).

docker-py cannot drive BuildKit, so the buildkit backend runs the docker CLI: `docker buildx build --load`
where the buildx plugin works, otherwise `DOCKER_BUILDKIT=1 docker build` with a client older than 23 (which
still builds with BuildKit that way; newer clients need buildx).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelarts_images.engine.api import BuildRequest
from modelarts_images.errors import EngineError
from modelarts_images.shared.choices import Choice


class BuildKitMode(Choice):
    BUILDX = "buildx"  # docker buildx build --load
    LEGACY = "legacy"  # DOCKER_BUILDKIT=1 docker build, with a client older than 23


@dataclass(frozen=True, kw_only=True)
class BuildKitCli:
    """A docker CLI that can drive BuildKit, and how."""

    path: str
    mode: BuildKitMode
    version: str


def _docker_candidates() -> list[str]:
    """Every docker executable on PATH, then the usual places; each real file once."""
    found: list[str] = []
    seen: set[str] = set()
    directories = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for directory in [*directories, "/usr/local/bin", "/usr/bin", "/bin"]:
        path = Path(directory) / "docker"
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(str(path))
    return found


PROBE_TIMEOUT_S = 30.0  # each `docker ... version` a probe starts


def _probe(command: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _client_version(text: str) -> str | None:
    """'Docker version 20.10.24+dfsg1, build 297e128' -> '20.10.24+dfsg1'."""
    match = re.search(r"\d+\.\d+[^\s,]*", text)
    return match.group(0) if match else None


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


# Where the docker CLI looks for plugins besides $DOCKER_CONFIG/cli-plugins and config.json's cliPluginsExtraDirs.
SYSTEM_PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
                      "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")


def buildx_plugin_installed() -> bool:
    """Whether a docker-buildx plugin file is where the docker CLI looks for it."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        extra = json.loads((config_dir / "config.json").read_text("utf-8")).get("cliPluginsExtraDirs") or []
    except (OSError, ValueError, AttributeError):
        extra = []
    directories = [config_dir / "cli-plugins", *(Path(d) for d in extra if isinstance(d, str)),
                   *(Path(d) for d in SYSTEM_PLUGIN_DIRS)]
    return any((directory / "docker-buildx").is_file() for directory in directories)


def _with_buildx(paths: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> BuildKitCli | None:
    for path in paths:
        result = _probe([path, "buildx", "version"], timeout)
        if result is not None and result.returncode == 0:
            return BuildKitCli(path=path, mode=BuildKitMode.BUILDX, version=result.stdout.strip())
    return None


def find_buildkit_cli(candidates: Sequence[str] | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> BuildKitCli:
    """`docker buildx` where it works; else a docker CLI older than 23 (DOCKER_BUILDKIT=1); else EngineError.

    Each probe starts a docker CLI (tens of milliseconds), so `docker buildx version` runs first only where a
    buildx plugin file exists, and the client version comes from `docker --version`, which asks no engine.
    `timeout` bounds each of those processes (`inv doctor` gives a short one).
    """
    paths = list(candidates) if candidates is not None else _docker_candidates()
    plugin = buildx_plugin_installed()
    found = _with_buildx(paths, timeout) if plugin else None
    if found is not None:
        return found
    clients = []
    for path in paths:
        result = _probe([path, "--version"], timeout)
        version = _client_version(result.stdout) if result is not None and result.returncode == 0 else None
        if version is not None and int(version.split(".", 1)[0]) < 23:
            return BuildKitCli(path=path, mode=BuildKitMode.LEGACY, version=version)
        clients.append(f"{path} (client {version or 'unknown'}, no buildx)")
    found = None if plugin else _with_buildx(paths, timeout)  # a plugin somewhere the CLI was configured to look
    if found is not None:
        return found
    where = "; ".join(clients) if clients else "no docker CLI on PATH"
    raise EngineError(
        f"the buildkit backend needs `docker buildx` or a docker CLI older than 23 (which builds with BuildKit "
        f"when DOCKER_BUILDKIT=1); found: {where}. Install the buildx plugin (Debian/Ubuntu: apt-get install "
        "docker-buildx; Docker's repository: docker-buildx-plugin), or Debian's docker.io client, or build with "
        "--backend docker."
    )


def buildkit_command(cli: BuildKitCli, request: BuildRequest, iidfile: Path) -> tuple[list[str], dict[str, str]]:
    """The argument list and the extra environment of the BuildKit build."""
    extra_env: dict[str, str] = {}
    if cli.mode is BuildKitMode.BUILDX:
        command = [cli.path, "buildx", "build", "--load"]
        version = _version_tuple(cli.version.split(" v", 1)[-1]) if " v" in cli.version else None
        # Attestations (provenance, SBOM) turn the result into an OCI index that SWR rejects; buildx < 0.10
        # makes none and does not know the flags.
        if version is None or version >= (0, 10):
            command += ["--provenance=false", "--sbom=false"]
    else:
        command = [cli.path, "build"]
        extra_env["DOCKER_BUILDKIT"] = "1"
    command += ["--progress=plain", "--target", request.target, "-t", request.tag, "--iidfile", str(iidfile)]
    command += cli_options(request)
    for secret_id, path in request.secrets:
        command += ["--secret", f"id={secret_id},src={path}"]
    for reference in request.cache_from:
        command += ["--cache-from", reference]
    command.append(str(request.context_dir))
    return command, extra_env


def cli_options(request: BuildRequest) -> list[str]:
    """The docker CLI's options for the build arguments, labels, cache and platform of a request."""
    options: list[str] = []
    for name, value in request.build_args:
        options += ["--build-arg", f"{name}={value}"]
    for name, value in request.labels:
        options += ["--label", f"{name}={value}"]
    if request.no_cache:
        options.append("--no-cache")
    if request.platform:
        options += ["--platform", request.platform]
    return options


# The build argument giving the classic builder's steps the file server's address (see context/Dockerfile).
SERVER_ARG = "FTP_PROXY"


def classic_equivalent(request: BuildRequest) -> list[str]:
    """The docker CLI command that does what the docker backend does (for --dry-run and logs)."""
    command = ["docker", "build", "--target", request.target, "-t", request.tag, *cli_options(request)]
    if request.served:  # the port is the server's own, new in every build
        command += ["--network", "host", "--build-arg", f"{SERVER_ARG}=127.0.0.1:PORT"]
    return ["env", "DOCKER_BUILDKIT=0", *command, str(request.context_dir)]
