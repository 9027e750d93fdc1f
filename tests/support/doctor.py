"""What `inv doctor`'s tests and benchmark point it at: a versions file and an invoke config whose every source is a
URL the test chooses, servers that are down (a port nobody listens on) or slow (accepts, never answers), and the
task run as a user runs it, in an environment without the host's proxies and credentials."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ID = "doctor-cpu"
INSTALLER_NAME = "stand-in.sh"
WHEEL_NAME = "torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl"
INSTALLER_SHA = hashlib.sha256(b"doctor's stand-in installer").hexdigest()
# What the host's environment may hold that would change what doctor reaches or which login it finds.
_DROPPED = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
            "NO_PROXY", "PIP_INDEX_URL", "PIP_CONFIG_FILE", "DOCKER_CONTEXT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_DROPPED_PREFIXES = ("HUAWEICLOUD_SDK_", "HW_", "MODELARTS_SWR_LOGIN_", "MODELARTS_REGISTRY_", "INVOKE_MODELARTS_")


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (nor closes them) until the block ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, name="doctor-silent-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without proxies, pip's index, the docker context and any registry or cloud credentials,
    plus `extra`."""
    env = {name: value for name, value in os.environ.items()
           if name not in _DROPPED and not name.startswith(_DROPPED_PREFIXES)}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@dataclass(frozen=True, kw_only=True)
class Scene:
    """A versions file with one CPU entry and the invoke config beside it."""

    root: Path
    versions: Path
    config: Path
    cache_dir: Path


def write_scene(root: Path, *, installer: str, wheel: str, pip_index: str, apt_mirror: str, registry: str,
                base_image: str = "modelarts-test-base:bookworm", cache_dir: Path | None = None,
                wheel_sha: str | None = None) -> Scene:
    """`installer` and `wheel` are URL prefixes (the file names are appended); the others are used as given, an
    empty pip_index or apt_mirror left to invoke.yaml's."""
    root.mkdir(parents=True, exist_ok=True)
    entry = {
        "id": IMAGE_ID, "default": True, "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": "doctor",
        "registry": registry, "organization": "doctor", "repository": "modelarts-images-doctor",
        "base_image": base_image,
        **({"pip_index": pip_index} if pip_index else {}), **({"apt_mirror": apt_mirror} if apt_mirror else {}),
        "installer": {"url": f"{installer.rstrip('/')}/{INSTALLER_NAME}", "sha256": INSTALLER_SHA},
        "wheels": [{"url": f"{wheel.rstrip('/')}/{WHEEL_NAME}", "sha256": wheel_sha}],
    }
    versions = root / "versions.yaml"
    versions.write_text(yaml.safe_dump({"images": [entry]}, sort_keys=False), "utf-8")
    cache = cache_dir or root / "cache"
    config = root / "invoke-doctor.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(cache)}}), "utf-8")
    return Scene(root=root, versions=versions, config=config, cache_dir=cache)


def run_doctor(scene: Scene, *args: str, env: Mapping[str, str], timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    """`inv doctor` as a user runs it, on the scene's versions file and config."""
    return subprocess.run([sys.executable, "-m", "invoke", "-f", str(scene.config), "doctor", "--versions",
                           str(scene.versions), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False, env=dict(env))


def rows_by_check(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(row["check"]): row for row in document["rows"]}


def parsed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(result.stdout)
    except ValueError as error:
        raise AssertionError(f"inv doctor --json printed no JSON ({error}): {result.stdout!r} {result.stderr!r}"
                             ) from None
    return document
