"""Engine tier: a real Docker Engine, a real base image, a real torch wheel and its real dependency wheels.

What `inv fetch` would put in the cache is made here on the host (no container can reach an HTTPS index):

- the installer is tests/fixtures/stand-in-installer.sh (a venv of the base's python3 instead of Miniconda);
- the wheel is a CPU torch for Python 3.11 ($MODELARTS_IMAGES_TEST_TORCH_WHEEL, /opt/wheels, or downloaded
  with the host's pip);
- its dependency closure, and the install tool (uv) fetch would pin beside it, are downloaded once per session
  with the host's pip.

`stage_in_cache()` and `fetched_image()` are plain functions so benchmarks and other tests can make the same
inputs. With no engine answering, the tests are skipped with the reason; MODELARTS_IMAGES_REQUIRE_ENGINE=1
(set in CI) turns that skip into a failure. The torch image is built with the engine's cache (cold on a fresh
CI machine); MODELARTS_IMAGES_TEST_NO_CACHE=1 rebuilds every step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelarts_images import pipeline
from modelarts_images.engine.adapter import DockerEngine, connect
from modelarts_images.errors import EngineError
from modelarts_images.fetch.cache import sha256_of
from modelarts_images.http.pip_resolver import INSTALL_TOOL
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec

ROOT = Path(__file__).resolve().parents[2]
TEST_BASE = "modelarts-test-base:bookworm"
STAND_IN_INSTALLER = ROOT / "tests" / "fixtures" / "stand-in-installer.sh"
TORCH_VERSION = "2.13.0"
TORCH_WHEEL_NAME = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
TORCH_WHEEL_DIRS = (Path("/opt/wheels"),)
REQUIRE_ENGINE = "MODELARTS_IMAGES_REQUIRE_ENGINE"
# The image's platform for pip on the host: Python 3.11 on glibc 2.36 (Debian bookworm).
# pip does not widen explicit --platform values, so every tag glibc 2.36 can load is listed.
PLATFORMS = [*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)), "manylinux2014_x86_64",
             "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
PIP_TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
              *(option for platform in PLATFORMS for option in ("--platform", platform)), "--only-binary=:all:"]


def unavailable(reason: str) -> NoReturn:
    """Skip with the reason, or fail with it when CI requires the engine tier to run."""
    if os.environ.get(REQUIRE_ENGINE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENGINE}=1: the engine tier must run)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------------------
# Reusable helpers: artifacts as fetch leaves them


def stage_in_cache(paths: Sequence[Path], cache_dir: Path, *, url_base: str = "https://example.invalid/") -> list[
        FetchedFile]:
    """Put files into a cache laid out like fetch's (blobs/sha256/<hex>, hardlinked when possible)."""
    staged = []
    for path in paths:
        digest = sha256_of(path)
        blob = cache_dir / "blobs" / "sha256" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            try:
                os.link(path, blob)
            except OSError:
                shutil.copyfile(path, blob)
        staged.append(FetchedFile(filename=path.name, path=blob, url=url_base + path.name, sha256=digest))
    return staged


def image_spec(*, tag: str, image_id: str = "engine-test", repository: str = "modelarts-images-test",
               base_image: str = TEST_BASE, pip_index: str = "", installer: str = STAND_IN_INSTALLER.name,
               torch: str = TORCH_VERSION) -> ImageSpec:
    return ImageSpec(
        id=image_id, default=True, python="3.11", cuda="cpu", torch=torch, torchvision=None, torchaudio=None, tag=tag,
        registry="localhost:5999", organization="engine-tests", repository=repository, base_image=base_image,
        pip_index=pip_index, apt_mirror="http://repo.huaweicloud.com",
        installer=Artifact(url="https://example.invalid/" + installer, sha256=None), wheels=(),
    )


def fetched_image(spec: ImageSpec, *, cache_dir: Path, installer: Path, wheels: Sequence[Path],
                  closure: Sequence[Path] | None, tools: Sequence[Path] = ()) -> FetchedImage:
    """The FetchedImage fetch would return for `spec` with these files in its cache."""
    (staged_installer,) = stage_in_cache([installer], cache_dir)
    return FetchedImage(
        image=spec,
        installer=staged_installer,
        wheels=tuple(stage_in_cache(wheels, cache_dir)),
        closure=None if closure is None else tuple(stage_in_cache(closure, cache_dir)),
        tools=tuple(stage_in_cache(tools, cache_dir)),
    )


def find_torch_wheel(download_dir: Path) -> Path:
    """The CPU torch wheel: $MODELARTS_IMAGES_TEST_TORCH_WHEEL, /opt/wheels, or `pip download` on the host."""
    override = os.environ.get("MODELARTS_IMAGES_TEST_TORCH_WHEEL")
    if override:
        return Path(override)
    for directory in TORCH_WHEEL_DIRS:
        if (directory / TORCH_WHEEL_NAME).is_file():
            return directory / TORCH_WHEEL_NAME
    download_dir.mkdir(parents=True, exist_ok=True)
    pip(["download", "--no-deps", *PIP_TARGET, "-d", str(download_dir), f"torch=={TORCH_VERSION}"])
    found = sorted(download_dir.glob(f"torch-{TORCH_VERSION}*.whl"))
    if not found:
        unavailable(f"no torch {TORCH_VERSION} wheel for Python 3.11 in {TORCH_WHEEL_DIRS} or from the host's pip")
    return found[0]


def download_closure(wheels: Sequence[Path], dest: Path) -> list[Path]:
    """The dependency wheels of `wheels` for the test image's Python and platform, without the wheels themselves."""
    dest.mkdir(parents=True, exist_ok=True)
    pip(["download", *PIP_TARGET, "-d", str(dest), *map(str, wheels)])
    own = {wheel.name for wheel in wheels}
    closure = []
    for path in sorted(dest.glob("*.whl")):
        if path.name in own:
            path.unlink()  # pip copies the local wheels it was given
        else:
            closure.append(path)
    return closure


def download_tools(dest: Path) -> list[Path]:
    """The install tool's wheel (pip_resolver.INSTALL_TOOL) for the test image's platform."""
    pip(["download", "--no-deps", *PIP_TARGET, "-d", str(dest), INSTALL_TOOL])
    return sorted(dest.glob("*.whl"))


def pip(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        unavailable(f"the host's pip could not get the test wheels: {result.stderr.strip()[-500:]}")


# --------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    """The engine the code under test uses (the adapter over DOCKER_HOST or the current docker context)."""
    try:
        connected = connect()
    except EngineError as error:
        unavailable(f"no Docker Engine: {error}")
    yield connected
    connected.close()


@pytest.fixture(scope="session")
def docker_client(engine: DockerEngine) -> Any:
    """The docker SDK client behind the adapter: tests check and clean up the engine's state with it directly."""
    return engine.client


@pytest.fixture(scope="session")
def test_base(docker_client: Any) -> str:
    try:
        docker_client.images.get(TEST_BASE)
    except Exception as error:  # any failure means the same thing here
        unavailable(f"base image {TEST_BASE} is missing ({error}); make it with scripts/test-base-image.sh")
    return TEST_BASE


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per test run, so tags never collide with another run on the same engine."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def torch_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_torch_wheel(tmp_path_factory.mktemp("torch-download"))


@pytest.fixture(scope="session")
def torch_closure(torch_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return download_closure([torch_wheel], tmp_path_factory.mktemp("torch-closure"))


@pytest.fixture(scope="session")
def install_tools(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return download_tools(tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def fetched_torch(test_base: str, run_id: str, torch_wheel: Path, torch_closure: list[Path],
                  install_tools: list[Path], cache_dir: Path) -> FetchedImage:
    """The test entry as fetch would leave it: stand-in installer, CPU torch 2.13.0, its closure, uv."""
    return fetched_image(image_spec(tag=f"{TORCH_VERSION}-cpu-{run_id}", base_image=test_base), cache_dir=cache_dir,
                         installer=STAND_IN_INSTALLER, wheels=[torch_wheel], closure=torch_closure,
                         tools=install_tools)


@pytest.fixture
def remove_images(docker_client: Any) -> Iterator[list[str]]:
    """Image references or ids appended here are removed when the test ends."""
    made: list[str] = []
    yield made
    for reference in made:
        remove_image(docker_client, reference)


def remove_image(client: Any, reference: str) -> None:
    with contextlib.suppress(Exception):  # already gone, or never built
        client.images.remove(reference, force=True)


def run_in(client: Any, image: str, script: str, *, user: str | None = None) -> tuple[int, str]:
    """Run `bash -c script` in a new container of `image`; the container is removed whatever happens."""
    container = client.containers.create(image, ["bash", "-c", script], user=user, detach=True)
    try:
        container.start()
        status = container.wait(timeout=300)["StatusCode"]
        return int(status), container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        container.remove(force=True)


def run_base(client: Any, reference: str, run_id: str) -> None:
    """TEST_BASE plus one tiny layer (a file naming this run), so every stage of the Dockerfile has cache keys of
    this run only: the engine's BuildKit keys a local base image by its layers, not by its labels.

    BuildKit keeps a record per build under a cache key (--no-cache adds one) and a later build takes the oldest:
    on the test base itself, the rebuild after the cold build takes the layers of an earlier run's build of the
    same steps (timestamps make each build's layers differ), and the push sends almost everything again.
    """
    dockerfile = f"FROM {TEST_BASE}\nCOPY run /etc/modelarts-test-run\n".encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("run", f"{run_id}\n".encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    archive.seek(0)
    client.images.build(fileobj=archive, custom_context=True, tag=reference, rm=True, pull=False)


def fetch_with_stack(files: dict[str, bytes], directory: Path) -> Any:
    """pipeline.fetch_step as it is now, with these wheels (written to `directory`) as each entry's stack, as if
    versions.lock pinned them: a stack change without an index to resolve it from."""
    real = pipeline.fetch_step
    staged = []
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        staged.append((name, path, hashlib.sha256(data).hexdigest()))

    def fetch(images: Any, options: Any, **kwargs: Any) -> pipeline.Fetched:
        fetched = real(images, options, **kwargs)
        stack = tuple(FetchedFile(filename=name, path=path, url=f"https://stack.invalid/{name}", sha256=sha)
                      for name, path, sha in staged)
        return dataclasses.replace(fetched, images=tuple(
            dataclasses.replace(item, stack=stack) for item in fetched.images))

    return fetch
