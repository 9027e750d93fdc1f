"""The engine tier's fixtures: a real Docker Engine, the test base image, a real torch wheel and its dependency
wheels as fetch would leave them (tests/support/engine_tier.py), a real registry (tests/support/registry.py),
and the verification's test images (tests/support/verify_images.py).

With no engine answering, the tests are skipped with the reason; MODELARTS_IMAGES_REQUIRE_ENGINE=1 (set in CI)
turns that skip into a failure. The torch image is built with the engine's cache (cold on a fresh CI machine);
MODELARTS_IMAGES_TEST_NO_CACHE=1 rebuilds every step.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from modelarts_images.engine.adapter import DockerEngine, connect, endpoint, engine_address
from modelarts_images.engine.api import is_local
from modelarts_images.errors import EngineError
from modelarts_images.model import FetchedImage
from modelarts_images.options import VerifyOptions
from tests.support.engine_tier import (
    STAND_IN_INSTALLER,
    TEST_BASE,
    TORCH_VERSION,
    download_closure,
    download_tools,
    fetched_image,
    find_torch_wheel,
    image_spec,
    remove_image,
    unavailable,
)
from tests.support.registry import FAST_BACKOFF, RunningRegistry, running_registry
from tests.support.verify_images import (
    GOOD_DOCKERFILE,
    NO_TORCH_DOCKERFILE,
    NONCONFORMING_DOCKERFILE,
    REPOSITORY,
    TIMEOUT,
    build,
    derived_image,
)

# --------------------------------------------------------------------------------------------------------------
# The tier's boundary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here reaches the engine (through `engine` or `push_engine`); one that does not belongs in
    tests/unit, where it runs on machines without an engine too."""
    here = Path(__file__).parent
    strays = [item.nodeid for item in items if here in item.path.parents
              and not {"engine", "push_engine"} & set(getattr(item, "fixturenames", ()))]
    if strays:
        raise pytest.UsageError("tests/engine holds tests that need no engine (move them to tests/unit): "
                                + ", ".join(strays))


# --------------------------------------------------------------------------------------------------------------
# The engine and the fetched test entry


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


# --------------------------------------------------------------------------------------------------------------
# Publishing: an engine with no stored logins, a registry


@pytest.fixture(scope="module")
def push_engine() -> Iterator[DockerEngine]:
    """The engine adapter over a client with an empty docker config (no stored logins: the variable stays set
    while the module runs, so `stored_login` finds nothing either), fast registry retries, and the test base
    image present."""
    with pytest.MonkeyPatch.context() as patch, contextlib.ExitStack() as stack:
        config_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="push-docker-config-")))
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
        engine = DockerEngine(client, endpoint=endpoint(), local=is_local(engine_address()),
                              registry_backoff=FAST_BACKOFF)
        yield engine
        engine.close()


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


# --------------------------------------------------------------------------------------------------------------
# Verification: the test images


@pytest.fixture(scope="session")
def good_image(docker_client: Any, test_base: str, run_id: str, torch_wheel: Path, torch_closure: list[Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The well-formed test image (reference), built once per session and removed at the end."""
    context_dir = tmp_path_factory.mktemp("verify-good")
    wheels = context_dir / "wheels"
    wheels.mkdir()
    for wheel in [torch_wheel, *torch_closure]:
        try:
            os.link(wheel, wheels / wheel.name)
        except OSError:
            shutil.copyfile(wheel, wheels / wheel.name)
    tag = f"{REPOSITORY}:good-{run_id}"
    try:
        yield build(docker_client, context_dir, GOOD_DOCKERFILE, tag, {"BASE": test_base})
    finally:
        remove_image(docker_client, tag)


@pytest.fixture(scope="session")
def no_torch_image(docker_client: Any, good_image: str, run_id: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from derived_image(docker_client, good_image, tmp_path_factory.mktemp("verify-no-torch"), NO_TORCH_DOCKERFILE,
                        f"{REPOSITORY}:no-torch-{run_id}")


@pytest.fixture(scope="session")
def nonconforming_image(docker_client: Any, good_image: str, run_id: str,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from derived_image(docker_client, good_image, tmp_path_factory.mktemp("verify-nonconforming"),
                        NONCONFORMING_DOCKERFILE, f"{REPOSITORY}:nonconforming-{run_id}")


@pytest.fixture
def verify_options(tmp_path: Path) -> VerifyOptions:
    """What `inv verify` would resolve, with the tests' timeout; verify_image writes nothing to reports_dir."""
    return VerifyOptions(reports_dir=tmp_path / "verify", timeout=TIMEOUT)
