"""Builds on the engine, streamed as they run: the classic builder through the docker SDK (its install steps served
their files from this machine, engine/served.py), BuildKit through the docker CLI. Each output line goes to the
`modelarts_images.engine.build` logger at INFO as it comes; a failure raises EngineError naming the failing step
with the last lines of that step's output.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests

from modelarts_images.engine import served
from modelarts_images.engine.api import BuildRequest, Built, RegistryLogin
from modelarts_images.engine.cli import SERVER_ARG, BuildKitCli, buildkit_command, classic_equivalent
from modelarts_images.errors import EngineError
from modelarts_images.shared import redact
from modelarts_images.shared.text import one_line

log = logging.getLogger("modelarts_images.engine")
build_log = logging.getLogger("modelarts_images.engine.build")

TAIL_LINES = 30
CHUNK = 1 << 20


@dataclass
class _Transcript:
    """The build's output as it streams: the current step, per-step log tails and the overall tail."""

    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    step: str | None = None
    step_names: dict[str, str] = field(default_factory=dict)  # BuildKit vertex '#7' -> '[conda 2/3] RUN ...'
    step_tails: dict[str, collections.deque[str]] = field(default_factory=dict)
    failed_vertex: str | None = None
    cached: list[str] = field(default_factory=list)  # steps (RUN, COPY, ADD) taken from a cache
    pulled: list[str] = field(default_factory=list)  # compressed digests of layers pulled from a registry's cache
    cache_imports: set[str] = field(default_factory=set)  # BuildKit vertices reading a registry's cache

    def built(self, image_id: str) -> Built:
        cached = set(self.cached)
        steps = [step for step in self.step_names.values() if _MAKES_A_STEP.search(step)]
        return Built(image_id=image_id, ran=tuple(step for step in steps if step not in cached),
                     cached=tuple(step for step in steps if step in cached), pulled=tuple(self.pulled))

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
_BK_PULLING = re.compile(r"^pulling (sha256:[0-9a-f]{64})")
_MAKES_A_STEP = re.compile(r"^(?:\[[^\]]+\]|Step \d+/\d+ :) (?:RUN|COPY|ADD) ")


class BuildFailedError(EngineError):
    """A build the engine ended with an error: the step, the engine's words and the tail of the step's log, kept
    apart so that the adapter can say in one line what a full disk or an unreachable Docker Hub means."""

    def __init__(self, tag: str, step: str | None, error: str, tail: Iterable[str]) -> None:
        self.tail = tuple(tail)
        self.error = error.strip()
        self.head = f"build of {tag} failed" + (f" at {one_line(step, 160)}" if step else "")
        shown = "\n".join(f"  | {line}" for line in self.tail) or "  | (no output)"
        super().__init__(f"{self.head}:\n  {self.error}\nlast {len(self.tail)} lines of its log:\n{shown}")


def _failure(tag: str, step: str | None, error: str, tail: Iterable[str]) -> BuildFailedError:
    return BuildFailedError(tag, step, error, tail)


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
        raise EngineError(f"{path}: the build context holds only files and directories, not links")
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
        raise EngineError(f"{path} changed while it was being sent to the engine")
    yield bytes(-info.size % tarfile.BLOCKSIZE)


def _engine_is_here(client: docker.DockerClient) -> bool:
    """Whether the engine runs on this machine (a socket, or a TCP port on loopback): its builds' host network is
    then this machine's, where the file server listens."""
    url = str(client.api.base_url)
    return url.startswith("http+docker://") or re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:|/|$)", url) \
        is not None


def build_classic(client: docker.DockerClient, request: BuildRequest) -> Built:
    """Build with the classic builder through client.api.build, serving its steps' bundles while it runs."""
    if request.secrets:
        raise EngineError("the docker backend (classic builder) cannot pass build secrets; use --backend buildkit")
    if request.served and not _engine_is_here(client):
        raise EngineError(f"the docker backend (classic builder) serves the installer and the wheels to the build "
                          f"from this machine, which the engine at {client.api.base_url} cannot reach; "
                          f"use --backend buildkit")
    if not request.served:
        return _build_classic(client, request, {}, None)
    with served.serving(request.context_dir, dict(request.served)) as address:
        return _build_classic(client, request, {SERVER_ARG: address}, "host")


def _build_classic(client: docker.DockerClient, request: BuildRequest, server_args: dict[str, str],
                   network: str | None) -> Built:
    transcript = _Transcript()
    pending = ""
    image_id: str | None = None
    log.info("+ docker SDK build (classic builder), as %s", redact.command(classic_equivalent(request)))
    try:
        events = client.api.build(
            # docker-py sends any iterable of bytes as the body when custom_context is set; nothing is staged
            fileobj=stream_context(request.context_dir, request.context_entries),  # type: ignore[arg-type]
            custom_context=True,
            tag=request.tag,
            target=request.target,
            buildargs=dict(request.build_args) | server_args,
            labels=dict(request.labels),
            nocache=request.no_cache,
            platform=request.platform,
            network_mode=network,
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
    return transcript.built(image_id)


def _classic_line(transcript: _Transcript, raw: str) -> None:
    """One line of classic-builder output; a step's own lines are kept apart for the error message."""
    text = transcript.line(raw)
    if _CLASSIC_STEP.match(text):
        transcript.step = text
        transcript.step_names[str(len(transcript.step_names))] = text
        transcript.step_tails[""] = collections.deque(maxlen=TAIL_LINES)
    if text.strip() == "---> Using cache" and transcript.step:
        transcript.cached.append(transcript.step)
    if "" in transcript.step_tails and not text.startswith(("Removing intermediate container", " ---> ")):
        transcript.step_tails[""].append(text)


def build_buildkit(request: BuildRequest, cli: BuildKitCli) -> Built:
    """Build with BuildKit through the docker CLI."""
    with tempfile.TemporaryDirectory(prefix="modelarts-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        command, extra_env = buildkit_command(cli, request, iidfile)
        if request.cache_logins:
            extra_env["DOCKER_CONFIG"] = str(_client_config(Path(scratch) / "docker-config", request.cache_logins))
        prefix = "".join(f"{name}={value} " for name, value in extra_env.items())
        log.info("+ %s%s", prefix, redact.command(command))
        transcript = _Transcript()
        try:
            process = subprocess.Popen(command, env={**os.environ, **extra_env}, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
        except OSError as error:
            raise EngineError(f"cannot run {cli.path}: {error}") from error
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
            return transcript.built(iidfile.read_text(encoding="utf-8").strip())
        except OSError as error:
            raise _failure(request.tag, transcript.step, f"the build wrote no image id ({error})",
                           transcript.tail) from error


def _client_config(directory: Path, logins: Sequence[RegistryLogin]) -> Path:
    """A docker client configuration for one build: the user's own, with these logins for their registries, so
    BuildKit can read the cache of an image in a registry the engine logged in to by API (a file only this user
    can read, removed with the build's scratch directory; never an argument or a log line).

    The user's plugins, buildx builders and contexts stay reachable through links; a credential store of the
    user's is left out, since it would answer for every registry in place of these logins."""
    home = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((home / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    config.pop("credsStore", None)
    auths = dict(config.get("auths") or {})
    for login in logins:
        token = base64.b64encode(f"{login.username}:{login.password}".encode()).decode("ascii")
        auths[login.registry] = {"auth": token}
    config["auths"] = auths
    directory.mkdir(mode=0o700)
    for name in ("cli-plugins", "buildx", "contexts"):
        if (home / name).exists():
            (directory / name).symlink_to(home / name)
    descriptor = os.open(directory / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        json.dump(config, stream)
    return directory


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
    if rest.startswith("importing cache manifest from "):
        # a registry cache that is absent or unreadable only means a colder build: its error is not the build's
        transcript.cache_imports.add(vertex)
    if rest.startswith("ERROR") and vertex not in transcript.cache_imports:
        transcript.failed_vertex = transcript.failed_vertex or vertex
    if rest == "CACHED" and vertex in transcript.step_names:
        transcript.cached.append(transcript.step_names[vertex])
    pulling = _BK_PULLING.match(rest)
    if pulling and pulling.group(1) not in transcript.pulled:
        transcript.pulled.append(pulling.group(1))
    if _BK_DIGEST.match(rest):
        return
    logged = _BK_LOG.match(rest)
    transcript.step_tails.setdefault(vertex, collections.deque(maxlen=TAIL_LINES)).append(
        logged.group(1) if logged else rest)


def _buildkit_failure(tag: str, transcript: _Transcript, returncode: int) -> BuildFailedError:
    vertex = transcript.failed_vertex
    step = transcript.step_names.get(vertex, transcript.step) if vertex else transcript.step
    errors = [line for line in transcript.tail if re.match(r"^(error|ERROR)\b|^#\d+ ERROR", line)
              and line.split(" ", 1)[0] not in transcript.cache_imports]
    error = errors[-1] if errors else f"docker exited with status {returncode}"
    tail: Iterable[str] = transcript.tail
    if vertex and vertex in transcript.step_tails:
        tail = transcript.step_tails[vertex]
    return _failure(tag, step, error, tail)
