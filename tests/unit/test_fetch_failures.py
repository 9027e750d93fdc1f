"""fetch_images() when things go wrong: a cache on another filesystem or unusable, a failure among parallel
downloads, Ctrl-C. A real HTTP server on loopback, real files, nothing mocked."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelarts_images.errors import FetchError
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.http import pip_resolver as closure
from modelarts_images.model import Artifact, FetchedFile, ImageSpec
from modelarts_images.options import FetchOptions
from tests.conftest import ROOT
from tests.support.http_server import FileServer, serve
from tests.support.wheels import make_wheel

TORCH = "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
TORCH_PATH = "/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl"
INSTALLER = b"#!/bin/bash\necho stand-in installer\n"
SHM = Path("/dev/shm")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(installer: Artifact, wheels: tuple[Artifact, ...]) -> ImageSpec:
    return ImageSpec(
        id="test-cpu", default=False, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag="t", registry="r", organization="o", repository="p", base_image="modelarts-test-base:bookworm",
        pip_index="https://pypi.example.com/simple", apt_mirror="http://m", installer=installer, wheels=wheels)


def image(server: FileServer, wheel: bytes) -> ImageSpec:
    return spec(Artifact(url=server.url("/files/stand-in.sh"), sha256=sha(INSTALLER)),
                (Artifact(url=server.url(TORCH_PATH), sha256=sha(wheel)),))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    for name in ("no_proxy", "NO_PROXY"):  # a proxy set in the environment must not capture loopback
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with serve() as running:
        running.add("/files/stand-in.sh", INSTALLER)
        yield running


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """A fresh directory on another filesystem than the temporary directory (tmpfs /dev/shm)."""
    if not SHM.is_dir() or SHM.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary directory")
    directory = SHM / f"modelarts-test-{uuid.uuid4().hex}"
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def options(tmp_path: Path, **overrides: object) -> FetchOptions:
    values: dict[str, object] = {"cache_dir": tmp_path / "cache", "lock_path": tmp_path / "versions.lock"}
    values.update(overrides)
    return FetchOptions(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Where the cache is


def test_closure_of_wheels_on_another_filesystem(other_filesystem: Path) -> None:
    wheel = other_filesystem / sha(b"torch")  # named by hash, as in the cache
    wheel.write_bytes(make_wheel(TORCH))
    fetched = FetchedFile(filename=TORCH, path=wheel, url="https://x/" + TORCH, sha256=sha(b"torch"))

    resolved = closure.resolve(spec(Artifact(url="file:///i.sh", sha256=None), ()), [fetched])

    assert resolved == ()  # the scratch directory is elsewhere: copied, not linked


def test_a_closure_pip_cannot_resolve_is_logged_without_the_index_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wheel = tmp_path / sha(b"torch")
    wheel.write_bytes(make_wheel(TORCH, requires=("no-such-distribution-anywhere==0.0.0.1",)))
    fetched = FetchedFile(filename=TORCH, path=wheel, url="https://x/" + TORCH, sha256=sha(b"torch"))
    image = dataclasses.replace(spec(Artifact(url="file:///i.sh", sha256=None), ()),
                                pip_index="https://robot:s3cret@pypi.example.com/simple")

    with caplog.at_level("WARNING"):
        assert closure.resolve(image, [fetched], scratch_parent=tmp_path) is None

    assert "the build will install them from https://robot:***@pypi.example.com/simple" in caplog.text
    assert "s3cret" not in caplog.text


def test_fetch_with_the_cache_on_another_filesystem(server: FileServer, tmp_path: Path,
                                                    other_filesystem: Path) -> None:
    wheel = make_wheel(TORCH)
    server.add(TORCH_PATH, wheel)

    [fetched], summary = fetch_images([image(server, wheel)], options(tmp_path, cache_dir=other_filesystem))

    assert fetched.closure == ()
    assert summary.fetched == 2
    assert not [p for p in (other_filesystem / "incoming").iterdir() if p.name.startswith("modelarts-closure-")]


@pytest.mark.parametrize("cache_dir", ["/proc/nope", "/dev/null/cache"])
def test_unusable_cache_directory_is_a_fetch_error(server: FileServer, tmp_path: Path, cache_dir: str) -> None:
    with pytest.raises(FetchError, match=rf"^cannot use the cache directory {cache_dir}: .*INVOKE_MODELARTS_CACHE_DIR"):
        fetch_images([image(server, b"")], options(tmp_path, cache_dir=Path(cache_dir)))
    assert server.requests() == []


def test_unusable_cache_directory_from_the_environment_exits_3(server: FileServer, tmp_path: Path) -> None:
    versions = tmp_path / "versions.yaml"
    versions.write_text(f"""images:
  - id: test-cpu
    python: "3.11"
    cuda: cpu
    torch: "2.13.0"
    base_image: modelarts-test-base:bookworm
    installer:
      url: {server.url("/files/stand-in.sh")}
      sha256: {sha(INSTALLER)}
    wheels:
      - url: {server.url(TORCH_PATH)}
""", "utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INVOKE_MODELARTS_CACHE_DIR": "/proc/nope"}
    result = subprocess.run([sys.executable, "-m", "invoke", "fetch", "--no-closure", "--versions", str(versions)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 3, result.stderr
    assert "cannot use the cache directory /proc/nope" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------------------
# One failure among parallel downloads


def test_a_failure_keeps_queued_downloads_from_starting(server: FileServer, tmp_path: Path) -> None:
    server.add("/files/stand-in.sh", b"", status=404)
    wheel = make_wheel(TORCH)
    server.add(TORCH_PATH, wheel)

    with pytest.raises(FetchError, match=r"^test-cpu: HTTP 404 Not Found for http://.*/files/stand-in.sh$"):
        fetch_images([image(server, wheel)], options(tmp_path, jobs=1, closure=False))

    assert server.requests(TORCH_PATH) == []


def test_a_failure_stops_the_running_downloads(server: FileServer, tmp_path: Path) -> None:
    server.add("/files/stand-in.sh", b"", status=404)
    wheel = make_wheel(TORCH, padding=3_000_000)
    server.add(TORCH_PATH, wheel, throttle=500_000)  # 6 s in full

    started = time.monotonic()
    with pytest.raises(FetchError, match=r"HTTP 404"):
        fetch_images([image(server, wheel)], options(tmp_path, jobs=2, closure=False))

    assert time.monotonic() - started < 3
    assert server.bytes_sent(TORCH_PATH) < len(wheel)


CHILD = """
import sys
from pathlib import Path
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.options import FetchOptions
from tests.unit.test_fetch_failures import spec, Artifact
url, digest, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3])
artifact = Artifact(url=url, sha256=digest)
fetch_images([spec(artifact, (artifact,))],
             FetchOptions(cache_dir=cache, lock_path=cache / "versions.lock", closure=False))
"""


def test_ctrl_c_stops_the_running_downloads(server: FileServer, tmp_path: Path) -> None:
    wheel = make_wheel(TORCH, padding=3_000_000)
    server.add(TORCH_PATH, wheel, throttle=500_000)  # 6 s in full
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", CHILD, server.url(TORCH_PATH), sha(wheel), str(cache)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    part = cache / "blobs" / "sha256" / (sha(wheel) + ".part")
    deadline = time.monotonic() + 20
    while (not part.exists() or part.stat().st_size < 100_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)

    assert time.monotonic() - interrupted < 2.5, "Ctrl-C waited for the running download"
    assert "KeyboardInterrupt" in stderr
    assert 0 < part.stat().st_size < len(wheel)  # kept for the next run to resume
