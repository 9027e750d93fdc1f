"""Helpers and fixtures for tests/engine/test_push.py (imported from there; pytest does not load this file itself).

- `push_engine`: the Docker Engine adapter (modelarts_images.engine.adapter.DockerEngine) over a client with an empty
  docker config, retrying registry calls fast (2 retries, 0.05 s); its `.client` is the raw SDK client for checks
  and cleanup. With no engine answering the tests are skipped with the reason, and
  MODELARTS_IMAGES_REQUIRE_ENGINE=1 (set in CI) turns that skip into a failure;
- `local_registry`: Debian's docker-registry on a free loopback port with htpasswd authentication, started by
  scripts/registry-up.sh (the password goes in on stdin) and stopped by scripts/registry-down.sh;
- `ArgvWatcher`: scans every process's /proc/<pid>/cmdline while a test runs, for secrets on a command line;
- `build_variant()`: a tiny image FROM the test base that differs from it only in a label.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors
import pytest
import requests

from modelarts_images.engine.adapter import DockerEngine, endpoint
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.shared import retry
from tests.engine.conftest import TEST_BASE, unavailable

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
ORGANIZATION = "engine-tests"
REPOSITORY = "modelarts-push"
# Logins and pushes through the engine: the same number of retries the tests always had, without the waits.
FAST_BACKOFF = retry.Backoff(retries=2, base=0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------------------------------------------
# A registry with htpasswd authentication


@dataclass(frozen=True, kw_only=True)
class RunningRegistry:
    port: int
    user: str
    password: str = field(repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_registry(user: str, password: str, port: int | None = None) -> RunningRegistry:
    """scripts/registry-up.sh PORT USER - with the password on stdin; unavailable() when it cannot start."""
    port = port or free_port()
    try:
        result = subprocess.run([str(SCRIPTS / "registry-up.sh"), str(port), user, "-"], input=password + "\n",
                                capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"scripts/registry-up.sh could not run: {error}")
    if result.returncode != 0:
        unavailable(f"scripts/registry-up.sh failed (docker-registry and apache2-utils are needed): "
                    f"{result.stderr.strip()[-800:]}")
    return RunningRegistry(port=port, user=user, password=password)


def stop_registry(port: int) -> None:
    subprocess.run([str(SCRIPTS / "registry-down.sh"), str(port)], capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def running_registry(user: str, password: str) -> Iterator[RunningRegistry]:
    started = start_registry(user, password)
    try:
        yield started
    finally:
        stop_registry(started.port)


# --------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def push_engine() -> Iterator[DockerEngine]:
    """The engine adapter over a client with an empty docker config (no stored logins: the variable stays set
    while the module runs, so `stored_login` finds nothing either), fast registry retries, and the test base
    image present."""
    with pytest.MonkeyPatch.context() as patch, contextlib.ExitStack() as stack:
        config_dir = stack.enter_context(_temporary_directory())
        (config_dir / "config.json").write_text('{"auths": {}}', encoding="utf-8")
        patch.setenv("DOCKER_CONFIG", str(config_dir))
        try:
            client = docker.from_env()
            client.ping()
        except (docker.errors.DockerException, requests.RequestException, OSError) as error:
            unavailable(f"no Docker Engine answers: {error}")
        try:
            client.images.get(TEST_BASE)
        except docker.errors.DockerException as error:
            unavailable(f"base image {TEST_BASE} is missing ({error}); make it with scripts/test-base-image.sh")
        engine = DockerEngine(client, endpoint=endpoint(), registry_backoff=FAST_BACKOFF)
        yield engine
        engine.close()


def fresh_client() -> Any:
    """A new SDK client: it holds none of the logins an earlier test made through `push_engine`."""
    return docker.from_env()


@contextlib.contextmanager
def _temporary_directory() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="push-docker-config-") as name:
        yield Path(name)


@pytest.fixture(scope="module")
def local_registry(push_engine: DockerEngine) -> Iterator[RunningRegistry]:
    """A registry on 127.0.0.1:<free port>; user and password are fresh for each module run."""
    with running_registry(f"tester-{uuid.uuid4().hex[:6]}", "pw-" + secrets.token_urlsafe(18)) as started:
        yield started


@pytest.fixture(scope="module")
def push_run() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def local_tags(push_engine: DockerEngine) -> Iterator[list[str]]:
    """References appended here are untagged (and their images removed when nothing else names them)."""
    made: list[str] = []
    yield made
    for reference in made:
        with contextlib.suppress(docker.errors.DockerException):
            push_engine.client.images.remove(reference)


def spec(host: str, tag: str, image_id: str = "push-test") -> ImageSpec:
    """A versions.yaml entry whose reference is host/engine-tests/modelarts-push:tag."""
    return ImageSpec(
        id=image_id, default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag=tag, registry=host, organization=ORGANIZATION, repository=REPOSITORY, base_image=TEST_BASE,
        pip_index="", apt_mirror="http://repo.huaweicloud.com",
        installer=Artifact(url="https://example.invalid/installer.sh", sha256=None), wheels=(),
    )


def tag_local(client: Any, source: str, reference: str, made: list[str]) -> None:
    repository, _, tag = reference.rpartition(":")
    assert client.api.tag(source, repository, tag, force=True)
    made.append(reference)


def build_variant(client: Any, label: str, reference: str, made: list[str]) -> str:
    """An image FROM the test base that differs only in a label (no new layer); returns its id."""
    dockerfile = f'FROM {TEST_BASE}\nLABEL org.example.push-test="{label}"\n'.encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=reference, rm=True, pull=False)
    made.append(reference)
    return str(image.id)


# --------------------------------------------------------------------------------------------------------------
# Secrets on command lines


class ArgvWatcher:
    """Scans /proc/*/cmdline every `interval` seconds on a thread; `found` lists (pid, cmdline) with a secret."""

    def __init__(self, secrets_to_find: Sequence[str], interval: float = 0.01) -> None:
        self.needles = [s.encode() for s in secrets_to_find if s]
        self.interval = interval
        self.found: list[tuple[int, str]] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ArgvWatcher:
        self._scan()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._scan()
            time.sleep(self.interval)

    def _scan(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:  # gone already, or not ours to read
                continue
            if any(needle in cmdline for needle in self.needles):
                self.found.append((pid, cmdline.replace(b"\0", b" ").decode("utf-8", "replace")))
        self.scans += 1


def contains_any(stream: Iterator[bytes], needles: Sequence[bytes]) -> list[bytes]:
    """Which needles occur in the concatenated chunks (a needle split across two chunks is found too)."""
    keep = max(len(n) for n in needles) - 1
    tail = b""
    hits: set[bytes] = set()
    for chunk in stream:
        window = tail + chunk
        hits.update(n for n in needles if n in window)
        tail = window[-keep:] if keep > 0 else b""
    return sorted(hits)
