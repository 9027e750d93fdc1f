"""A real registry for the publishing tests and benchmarks, and what they check pushes with.

- `start_registry()` / `running_registry()`: Debian's docker-registry on a free loopback port with htpasswd
  authentication, started by scripts/registry-up.sh (the password goes in on stdin) and stopped by
  scripts/registry-down.sh;
- `ArgvWatcher`: scans every process's /proc/<pid>/cmdline while a test runs, for secrets on a command line;
- `build_variant()`: a tiny image FROM the test base that differs from it only in a label.

The fixtures over these (`push_engine`, `local_registry`, `local_tags`, `push_run`) are in tests/engine/conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import docker

from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.shared import retry
from tests.support.engine_tier import ROOT, TEST_BASE, unavailable

SCRIPTS = ROOT / "scripts"
ORGANIZATION = "engine-tests"
REPOSITORY = "modelarts-push"
# Logins and pushes through the engine: the same number of retries the tests always had, without the waits.
FAST_BACKOFF = retry.Backoff(retries=2, base=0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def fresh_client() -> Any:
    """A new SDK client: it holds none of the logins an earlier test made through `push_engine`."""
    return docker.from_env()


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
