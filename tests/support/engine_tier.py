"""What the engine tier's tests and the benchmarks build from: a real base image, a real torch wheel and its real
dependency wheels, laid out as `inv fetch` would leave them (no container can reach an HTTPS index):

- the installer is tests/fixtures/stand-in-installer.sh (a venv of the base's python3 instead of Miniconda);
- the wheel is a CPU torch for Python 3.11 ($MODELARTS_IMAGES_TEST_TORCH_WHEEL, /opt/wheels, or downloaded
  with the host's pip);
- its dependency closure, and the install tool (uv) fetch would pin beside it, are downloaded with the host's pip.

`unavailable()` skips with the reason, or fails when MODELARTS_IMAGES_REQUIRE_ENGINE=1 (set in CI). The fixtures
over these helpers are in tests/engine/conftest.py.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelarts_images import pipeline
from modelarts_images.engine.api import Backend
from modelarts_images.fetch.cache import sha256_of
from modelarts_images.http.pip_resolver import INSTALL_TOOL
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import BuildOptions
from tests.support.wheels import make_wheel

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


# arm64 under QEMU user emulation: a debootstrapped arm64 bookworm base (scripts/test-base-image.sh NAME arm64) and
# the newest torch whose aarch64 wheel on PyPI is a CPU build, with the torch_npu release that pins it and is built
# for CANN 8.2.RC1 (the CANN ModelArts' Ascend drivers run).
ARM64_BASE = "modelarts-test-base:bookworm-arm64"
ARM64_TORCH = "2.6.0"
ARM64_TORCH_NPU = "2.6.0"
ARM64_PIP_TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi",
                    "none", *(option for minor in range(36, 16, -1) for option in ("--platform",
                                                                                  f"manylinux_2_{minor}_aarch64")),
                    "--platform", "manylinux2014_aarch64", "--platform", "linux_aarch64", "--only-binary=:all:"]


def arm64_wheels(download_dir: Path) -> dict[str, Path]:
    """The aarch64 torch and torch_npu wheels for Python 3.11, downloaded with the host's pip (no dependencies:
    fetch resolves those for aarch64 itself)."""
    download_dir.mkdir(parents=True, exist_ok=True)
    pip(["download", "--no-deps", *ARM64_PIP_TARGET, "-d", str(download_dir), f"torch=={ARM64_TORCH}",
         f"torch-npu=={ARM64_TORCH_NPU}"])
    found = {name: sorted(download_dir.glob(f"{name}-*aarch64.whl")) for name in ("torch", "torch_npu")}
    if not all(found.values()):
        unavailable(f"the host's pip gave no aarch64 wheels of torch {ARM64_TORCH} and torch_npu {ARM64_TORCH_NPU}")
    return {name: paths[0] for name, paths in found.items()}


def unavailable(reason: str) -> NoReturn:
    """Skip with the reason, or fail with it when CI requires the engine tier to run."""
    if os.environ.get(REQUIRE_ENGINE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENGINE}=1: the engine tier must run)", pytrace=False)
    pytest.skip(reason)


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


def served_entry(cell_id: str, tag: str, base: str, installer: tuple[str, bytes], wheel: tuple[str, bytes],
                 ) -> dict[str, Any]:
    """A versions.yaml entry whose installer and CPU torch wheel are (url, content) pairs a test serves."""
    return {
        "id": cell_id, "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": tag,
        "registry": "127.0.0.1:5999", "organization": "matrix", "repository": "modelarts-images-test",
        "base_image": base,
        "installer": {"url": installer[0], "sha256": hashlib.sha256(installer[1]).hexdigest()},
        "wheels": [{"url": wheel[0], "sha256": hashlib.sha256(wheel[1]).hexdigest()}],
    }


def build_options(backend: Backend, work_dir: Path, **more: Any) -> BuildOptions:
    return BuildOptions(backend=backend, work_dir=work_dir, **more)


def small_image(tmp_path: Path, run_id: str, suffix: str, *, installer: Path = STAND_IN_INSTALLER,
                pip_index: str = "", closure: bool = True) -> FetchedImage:
    """An entry with one tiny wheel instead of torch: for builds whose point is not torch."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    app = wheels / "demo_app-1.0-py3-none-any.whl"
    app.write_bytes(make_wheel(app.name, requires=("demo_dep",) if not closure else ()))
    spec = image_spec(tag=f"small-{run_id}-{suffix}", installer=installer.name, pip_index=pip_index)
    return fetched_image(spec, cache_dir=tmp_path / "cache", installer=installer, wheels=[app],
                         closure=[] if closure else None)
