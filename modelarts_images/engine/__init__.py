"""The Docker Engine: the only module that talks to it, through the docker SDK or the docker CLI.

- `connect()`: a client for the engine DOCKER_HOST or the current docker context names (BuildError when none
  answers);
- `check_base_image()`: the base image is in the engine or its registry answers for it, before anything is
  downloaded; NVIDIA's deleted nvidia/cuda tags get a message that says so;
- `build_classic()`: the SDK's low-level build API (the classic builder), with the context streamed as a tar
  straight from the hardlinked files and every event logged as it comes;
- `build_buildkit()`: `docker buildx build --load`, or `DOCKER_BUILDKIT=1 docker build` with a CLI older than
  23, run as an argument list with its output logged line by line;
- `image_summary()`: id, size and the largest layers with the Dockerfile step that made each.

Build output goes to the `modelarts_images.engine.build` logger at INFO, one record per line.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from ..errors import BuildError, ConfigError, ModelArtsImagesError

log = logging.getLogger(__name__)
build_log = logging.getLogger(f"{__name__}.build")

TAIL_LINES = 30
CHUNK = 1 << 20
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+(:[^/@\s]*)?@")


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One image build, the same for both backends."""

    context_dir: Path
    target: str
    tag: str
    build_args: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    no_cache: bool = False
    platform: str | None = None
    # BuildKit secrets: (id, file); never passed to the classic builder
    secrets: tuple[tuple[str, Path], ...] = ()
    # what the classic builder is sent: these top-level entries of the context (the .dockerignore allow-list)
    context_entries: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer of an image, with the step that created it."""

    size: int
    step: str
    from_base: bool  # part of the base image rather than of this build


@dataclass(frozen=True, kw_only=True)
class ImageSummary:
    image_id: str
    size: int
    layers: tuple[Layer, ...]  # largest first


@dataclass(frozen=True, kw_only=True)
class BuildKitCli:
    """A docker CLI that can drive BuildKit, and how."""

    path: str
    mode: str  # "buildx": docker buildx build --load; "legacy": DOCKER_BUILDKIT=1 docker build (client < 23)
    version: str


# --------------------------------------------------------------------------------------------------------------
# Connecting


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


def connect(error_class: type[ModelArtsImagesError] = BuildError) -> Any:
    """A docker SDK client for the engine of DOCKER_HOST or the current docker context, checked with a ping.

    No engine is an error of the stage that needed one (build 4, verify 5, registry 6).
    """
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as error:
        raise error_class(
            f"no Docker Engine answers at {endpoint()}: {error}. Is dockerd running (scripts/engine-up.sh starts "
            "one)? DOCKER_HOST or `docker context use` choose another engine."
        ) from error
    return client


# --------------------------------------------------------------------------------------------------------------
# Base-image preflight

_NVIDIA_CUDA = re.compile(r"(?:^|/)nvidia/cuda:(?P<major>\d+)\.(?P<minor>\d+)[^@]*$")
_UBUNTU_IN_TAG = re.compile(r"ubuntu(?P<version>\d\d\.\d\d)")
_NETWORK_TROUBLE = ("dial tcp", "no such host", "i/o timeout", "connection refused", "tls handshake",
                    "network is unreachable", "timeout", "eof")


def deleted_nvidia_tag(reference: str) -> bool:
    """Whether this is one of the nvidia/cuda tags NVIDIA removed from Docker Hub (CUDA ≤ 10.x, 11.0–11.3)."""
    match = _NVIDIA_CUDA.search(reference)
    if match is None:
        return False
    major, minor = int(match["major"]), int(match["minor"])
    return major <= 10 or (major == 11 and minor <= 3)


def nvidia_replacement(reference: str) -> str:
    """What to use instead of a deleted nvidia/cuda tag."""
    match = _UBUNTU_IN_TAG.search(reference)
    ubuntu = f"ubuntu:{match['version']}" if match else "ubuntu:XX.04"
    return (
        f"NVIDIA deleted {reference} from Docker Hub (end-of-life CUDA tags: 10.x and older were removed in 2023, "
        f"11.0–11.3 are being removed). PyTorch's pip wheels carry their own CUDA runtime, cuDNN and cuBLAS, so "
        f"use base_image: {ubuntu} for this entry (or --base-image {ubuntu}): the build sets "
        "NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=compute,utility for CUDA entries so the "
        "NVIDIA runtime mounts the driver. Or point base_image (or --base-prefix) at a copy you mirrored "
        "earlier."
    )


def check_base_image(client: Any, reference: str) -> str:
    """'local' when the engine has the image, 'registry' when its registry answers for it; raise otherwise."""
    try:
        client.images.get(reference)
        return "local"
    except docker.errors.ImageNotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise BuildError(f"base image {reference}: the engine at {endpoint()} did not answer: {error}") from error
    try:
        client.images.get_registry_data(reference)
        return "registry"
    except (docker.errors.DockerException, requests.RequestException) as error:
        reason = str(getattr(error, "explanation", None) or error)
        if deleted_nvidia_tag(reference):
            raise ConfigError(f"base image {reference}: not in the engine and not in its registry ({reason}). "
                              + nvidia_replacement(reference)) from error
        advice = ("load it into the engine (docker pull / docker load), or use a registry you can reach: "
                  "--base-prefix MIRROR/ (prepended to base images that name no registry) or --base-image REF")
        if any(word in reason.lower() for word in _NETWORK_TROUBLE):
            raise BuildError(f"base image {reference}: not in the engine, and its registry cannot be reached "
                             f"({reason}); {advice}") from error
        raise ConfigError(f"base image {reference}: not in the engine, and its registry does not have it "
                          f"({reason}); check base_image in versions.yaml, or {advice}") from error


# --------------------------------------------------------------------------------------------------------------
# Build output: what is being done, the last lines, the error


@dataclass
class _Transcript:
    """The build's output as it streams: the current step, per-step log tails and the overall tail."""

    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    step: str | None = None
    step_names: dict[str, str] = field(default_factory=dict)  # BuildKit vertex '#7' -> '[conda 2/3] RUN ...'
    step_tails: dict[str, collections.deque[str]] = field(default_factory=dict)
    failed_vertex: str | None = None

    def line(self, text: str) -> str:
        text = _ANSI.sub("", text).rstrip("\r")
        build_log.info("%s", text)
        self.tail.append(text)
        return text


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the classic builder colours a step's stderr
_CLASSIC_STEP = re.compile(r"^Step \d+/\d+ : ")
_BK_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BK_VERTEX = re.compile(r"^(#\d+) (.*)$")
_BK_NAME = re.compile(r"^\[[^\]]+\] ")
_BK_LOG = re.compile(r"^\d+\.\d+ (.*)$")


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _failure(tag: str, step: str | None, error: str, tail: Iterable[str]) -> BuildError:
    lines = list(tail)
    where = f" at {_short(step)}" if step else ""
    shown = "\n".join(f"  | {line}" for line in lines) or "  | (no output)"
    return BuildError(f"build of {tag} failed{where}:\n  {error.strip()}\nlast {len(lines)} lines of its log:\n{shown}")


# --------------------------------------------------------------------------------------------------------------
# docker backend: the SDK's low-level build API (classic builder)


def stream_context(root: Path, entries: Sequence[str] = ()) -> Iterator[bytes]:
    """The build context as an uncompressed tar, read from the files as it is sent (nothing is staged).

    `entries`: the top-level names to send (all when empty). Directories come before their contents, names
    are sorted, owners are root, times and modes are the files' own.
    """
    wanted = set(entries)
    for path in sorted(root.iterdir()):
        if wanted and path.name not in wanted:
            continue
        yield from _tar_tree(root, path)
    yield bytes(2 * tarfile.BLOCKSIZE)


def _tar_tree(root: Path, path: Path) -> Iterator[bytes]:
    status = path.lstat()
    info = tarfile.TarInfo(path.relative_to(root).as_posix())
    info.mtime = int(status.st_mtime)
    info.mode = status.st_mode & 0o7777
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        raise BuildError(f"{path}: the build context holds only files and directories, not links")
    if path.is_dir():
        info.type = tarfile.DIRTYPE
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        for child in sorted(path.iterdir()):
            yield from _tar_tree(root, child)
        return
    info.size = status.st_size
    yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    sent = 0
    with path.open("rb") as stream:
        while sent < info.size and (chunk := stream.read(min(CHUNK, info.size - sent))):
            sent += len(chunk)
            yield chunk
    if sent != info.size:
        raise BuildError(f"{path} changed while it was being sent to the engine")
    yield bytes(-info.size % tarfile.BLOCKSIZE)


def build_classic(client: Any, request: BuildRequest) -> str:
    """Build with the classic builder through client.api.build; return the image id."""
    if request.secrets:
        raise ConfigError("the docker backend (classic builder) cannot pass build secrets; use --backend buildkit")
    transcript = _Transcript()
    pending = ""
    image_id: str | None = None
    log.info("+ docker SDK build (classic builder), as %s", masked(classic_equivalent(request)))
    try:
        events = client.api.build(
            fileobj=stream_context(request.context_dir, request.context_entries),
            custom_context=True,
            tag=request.tag,
            target=request.target,
            buildargs=dict(request.build_args),
            labels=dict(request.labels),
            nocache=request.no_cache,
            platform=request.platform,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for event in events:
            if "stream" in event:
                pending += str(event["stream"])
                *complete, pending = pending.split("\n")
                for text in complete:
                    _classic_line(transcript, text)
            elif "status" in event:  # pulling a base image the engine did not have
                detail = f" {event['id']}" if event.get("id") else ""
                if not event.get("progressDetail"):
                    transcript.line(f"{event['status']}{detail}")
            if "aux" in event and isinstance(event["aux"], Mapping) and "ID" in event["aux"]:
                image_id = str(event["aux"]["ID"])
            if "error" in event or "errorDetail" in event:
                if pending:
                    _classic_line(transcript, pending)
                details = event.get("errorDetail") or {}
                message = str(event.get("error") or details.get("message") or "unknown error")
                raise _failure(request.tag, transcript.step, message, transcript.step_tails.get("", transcript.tail))
    except docker.errors.APIError as error:
        raise _failure(request.tag, transcript.step, str(error.explanation or error), transcript.tail) from error
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise _failure(request.tag, transcript.step, f"the engine connection failed: {error}",
                       transcript.tail) from error
    if pending:
        _classic_line(transcript, pending)
    if image_id is None:
        built = [line for line in transcript.tail if line.startswith("Successfully built ")]
        if not built:
            raise _failure(request.tag, transcript.step, "the engine ended the build without an image id",
                           transcript.tail)
        image_id = built[-1].split()[-1]
    return image_id


def _classic_line(transcript: _Transcript, raw: str) -> None:
    """One line of classic-builder output; a step's own lines are kept apart for the error message."""
    text = transcript.line(raw)
    if _CLASSIC_STEP.match(text):
        transcript.step = text
        transcript.step_tails[""] = collections.deque(maxlen=TAIL_LINES)
    if "" in transcript.step_tails and not text.startswith(("Removing intermediate container", " ---> ")):
        transcript.step_tails[""].append(text)


def classic_equivalent(request: BuildRequest) -> list[str]:
    """The docker CLI command that does what the docker backend does (for --dry-run and logs)."""
    command = ["docker", "build", "--target", request.target, "-t", request.tag, *_cli_options(request)]
    return ["env", "DOCKER_BUILDKIT=0", *command, str(request.context_dir)]


def _cli_options(request: BuildRequest) -> list[str]:
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


# --------------------------------------------------------------------------------------------------------------
# buildkit backend: the docker CLI


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


def _probe(command: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=30, check=False)
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


def _with_buildx(paths: Sequence[str]) -> BuildKitCli | None:
    for path in paths:
        result = _probe([path, "buildx", "version"])
        if result is not None and result.returncode == 0:
            return BuildKitCli(path=path, mode="buildx", version=result.stdout.strip())
    return None


def find_buildkit_cli(candidates: Sequence[str] | None = None) -> BuildKitCli:
    """`docker buildx` where it works; else a docker CLI older than 23 (DOCKER_BUILDKIT=1); else BuildError.

    Each probe starts a docker CLI (tens of milliseconds), so `docker buildx version` runs first only where a
    buildx plugin file exists, and the client version comes from `docker --version`, which asks no engine.
    """
    paths = list(candidates) if candidates is not None else _docker_candidates()
    plugin = buildx_plugin_installed()
    found = _with_buildx(paths) if plugin else None
    if found is not None:
        return found
    clients = []
    for path in paths:
        result = _probe([path, "--version"])
        version = _client_version(result.stdout) if result is not None and result.returncode == 0 else None
        if version is not None and int(version.split(".", 1)[0]) < 23:
            return BuildKitCli(path=path, mode="legacy", version=version)
        clients.append(f"{path} (client {version or 'unknown'}, no buildx)")
    found = None if plugin else _with_buildx(paths)  # a plugin somewhere the CLI was configured to look
    if found is not None:
        return found
    where = "; ".join(clients) if clients else "no docker CLI on PATH"
    raise BuildError(
        f"the buildkit backend needs `docker buildx` or a docker CLI older than 23 (which builds with BuildKit "
        f"when DOCKER_BUILDKIT=1); found: {where}. Install the buildx plugin (Debian/Ubuntu: apt-get install "
        "docker-buildx; Docker's repository: docker-buildx-plugin), or Debian's docker.io client, or build with "
        "--backend docker."
    )


def buildkit_command(cli: BuildKitCli, request: BuildRequest, iidfile: Path) -> tuple[list[str], dict[str, str]]:
    """The argument list and the extra environment of the BuildKit build."""
    extra_env: dict[str, str] = {}
    if cli.mode == "buildx":
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
    command += _cli_options(request)
    for secret_id, path in request.secrets:
        command += ["--secret", f"id={secret_id},src={path}"]
    command.append(str(request.context_dir))
    return command, extra_env


def masked(command: Sequence[str]) -> str:
    """The command as a shell line, with any user:password@ in URLs masked."""
    return _URL_CREDENTIALS.sub("***@", shlex.join(command))


def build_buildkit(request: BuildRequest, cli: BuildKitCli | None = None) -> str:
    """Build with BuildKit through the docker CLI; return the image id."""
    cli = cli or find_buildkit_cli()
    with tempfile.TemporaryDirectory(prefix="modelarts-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        command, extra_env = buildkit_command(cli, request, iidfile)
        prefix = "".join(f"{name}={value} " for name, value in extra_env.items())
        log.info("+ %s%s", prefix, masked(command))
        transcript = _Transcript()
        try:
            process = subprocess.Popen(command, env={**os.environ, **extra_env}, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        except OSError as error:
            raise BuildError(f"cannot run {cli.path}: {error}") from error
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                _buildkit_line(transcript, raw.rstrip("\n"))
            returncode = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if returncode != 0:
            raise _buildkit_failure(request.tag, transcript, returncode)
        try:
            return iidfile.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise _failure(request.tag, transcript.step, f"the build wrote no image id ({error})",
                           transcript.tail) from error


def _buildkit_line(transcript: _Transcript, raw: str) -> None:
    text = transcript.line(raw)
    match = _BK_VERTEX.match(text)
    if match is None:
        return
    vertex, rest = match.groups()
    if _BK_NAME.match(rest) and vertex not in transcript.step_names:
        transcript.step_names[vertex] = rest
        transcript.step = rest
        return
    if rest.startswith("ERROR"):
        transcript.failed_vertex = transcript.failed_vertex or vertex
    if _BK_DIGEST.match(rest):
        return
    logged = _BK_LOG.match(rest)
    transcript.step_tails.setdefault(vertex, collections.deque(maxlen=TAIL_LINES)).append(
        logged.group(1) if logged else rest)


def _buildkit_failure(tag: str, transcript: _Transcript, returncode: int) -> BuildError:
    vertex = transcript.failed_vertex
    step = transcript.step_names.get(vertex, transcript.step) if vertex else transcript.step
    errors = [line for line in transcript.tail if re.match(r"^(error|ERROR)\b|^#\d+ ERROR", line)]
    error = errors[-1] if errors else f"docker exited with status {returncode}"
    tail: Iterable[str] = transcript.tail
    if vertex and vertex in transcript.step_tails:
        tail = transcript.step_tails[vertex]
    return _failure(tag, step, error, tail)


# --------------------------------------------------------------------------------------------------------------
# After the build


_RUN_ARGS = re.compile(r"^(?:RUN )?\|\d+ (?:\S+=\S* )*?/bin/sh -c ")


def step_of(created_by: str) -> str:
    """The Dockerfile step a history entry records, as written: 'RUN ...', 'COPY ...'."""
    text = " ".join(created_by.split())
    text = text.removesuffix(" # buildkit")
    if text.startswith("/bin/sh -c #(nop) "):
        # the classic builder writes `COPY --chown=1000:100dir:<hash> in <dest>`
        return re.sub(r"^(COPY --chown=\S+?)((?:dir|file|multi):)", r"\1 \2", text.removeprefix("/bin/sh -c #(nop) "))
    if _RUN_ARGS.match(text):
        return "RUN " + _RUN_ARGS.sub("", text, count=1)
    if text.startswith("/bin/sh -c "):
        return "RUN " + text.removeprefix("/bin/sh -c ")
    return text


def image_summary(client: Any, image_id: str, *, base_image: str | None = None, top: int = 5) -> ImageSummary:
    """Size and the `top` largest layers of an image; layers of `base_image` are marked as such."""
    try:
        size = int(client.api.inspect_image(image_id)["Size"])
        history = client.api.history(image_id)
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise BuildError(f"{image_id}: cannot read the built image back from the engine: {error}") from error
    base_entries = _history_length(client, base_image) if base_image else 0
    layers = []
    for index, entry in enumerate(history):  # newest first; the base's entries are the oldest
        from_base = index >= len(history) - base_entries
        step = step_of(str(entry.get("CreatedBy") or "")) or str(entry.get("Comment") or "(no record)")
        if int(entry.get("Size") or 0) > 0:
            layers.append(Layer(size=int(entry["Size"]), step=_short(step, 120), from_base=from_base))
    layers.sort(key=lambda layer: layer.size, reverse=True)
    return ImageSummary(image_id=image_id, size=size, layers=tuple(layers[:top]))


def _history_length(client: Any, reference: str) -> int:
    """How many history entries the base has; 0 when the engine does not list it, which is the case for a base
    BuildKit pulled into its own store: the layers are then shown without telling the base's apart."""
    try:
        return len(client.api.history(reference))
    except (docker.errors.DockerException, requests.RequestException) as error:
        log.debug("no history for base %s (%s): its layers are not marked", reference, error)
        return 0
