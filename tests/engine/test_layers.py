"""Layers that survive a rebuild: the same files give the same layers, images share what they have in common, a push
sends only what the registry lacks, and the bytecode in the layers is what Python uses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.build import builder as build
from modelarts_images.build.builder import BuildResult
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import Backend
from modelarts_images.model import FetchedImage
from modelarts_images.options import BuildOptions, PushOptions, VerifyOptions
from modelarts_images.publish import publisher as publish
from modelarts_images.verify.verifier import verify_image
from tests.support.engine_tier import PIP_TARGET, pip, remove_image, run_in, stage_in_cache
from tests.support.registry import RunningRegistry


@pytest.fixture(scope="module")
def six_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("six")
    pip(["download", "--no-deps", *PIP_TARGET, "-d", str(directory), "six==1.17.0"])
    (wheel,) = directory.glob("six-*.whl")
    return wheel


def with_stack(fetched: FetchedImage, wheel: Path, cache_dir: Path) -> FetchedImage:
    return dataclasses.replace(fetched, stack=tuple(stage_in_cache([wheel], cache_dir)))


def retagged(fetched: FetchedImage, suffix: str, **image: Any) -> FetchedImage:
    spec = dataclasses.replace(fetched.image, tag=f"{fetched.image.tag}-{suffix}", **image)
    return dataclasses.replace(fetched, image=spec)


def own_layers(result: BuildResult) -> dict[str, str]:
    """Diff id of each layer the build makes to be the same in every build, by what it holds (the system
    packages' layer is not one: the mirror's packages are not locked)."""
    found = {role: layer.diff_id for layer, role in zip(result.stack, result.roles, strict=True)
             if role in build.OWN_LAYERS}
    assert set(found) == set(build.OWN_LAYERS), (result.roles, [layer.step for layer in result.stack])
    return found


def system_layers(result: BuildResult) -> list[str]:
    return [layer.diff_id for layer, role in zip(result.stack, result.roles, strict=True) if role == "system packages"]


@pytest.mark.engine
@pytest.mark.parametrize("backend", [Backend.BUILDKIT, Backend.DOCKER])
def test_a_no_cache_rebuild_gives_the_same_layers(backend: Backend, engine: DockerEngine, fetched_torch: FetchedImage,
                                                   six_wheel: Path, cache_dir: Path, tmp_path: Path,
                                                   remove_images: list[str], docker_client: Any) -> None:
    fetched = retagged(with_stack(fetched_torch, six_wheel, cache_dir), f"same-{backend}")
    options = BuildOptions(backend=backend, work_dir=tmp_path / "work", no_cache=True)
    remove_images.append(fetched.image.reference)
    first = build.build_image(fetched, options, engine)
    remove_images.append(first.image_id)  # the second build takes its tag: by id, or it stays behind untagged
    second = build.build_image(fetched, options, engine)
    assert own_layers(first) == own_layers(second)
    if backend is Backend.DOCKER:  # its steps fetched their files from the build's server, keyed by their digests
        history = " ".join(str(step["CreatedBy"]) for step in docker_client.images.get(second.image_id).history())
        assert "TORCH_INPUTS=" in history and "FTP_PROXY=" not in history and "127.0.0.1:" not in history
        status, output = run_in(docker_client, fetched.image.reference, "ls -A /tmp; echo done")
        assert status == 0 and output.split() == ["done"], f"left in the image: {output}"
    # the same packages from the mirror (two builds a minute apart) give the same system packages' layers too
    assert system_layers(first) == system_layers(second)
    # the second build's summary names the layers the first already had, and how little a push would send
    assert second.previous == tuple(layer.diff_id for layer in first.stack)
    assert set(own_layers(second).values()).isdisjoint(layer.diff_id for layer in second.new_layers)
    assert sum(layer.size for layer in second.new_layers) < 0.1 * second.size
    assert "as in the previous build (=)" in build.format_result(second)


@pytest.mark.engine
def test_images_share_layers_and_a_push_sends_only_their_own(
        push_engine: DockerEngine, local_registry: RunningRegistry, fetched_torch: FetchedImage,
        six_wheel: Path, cache_dir: Path, tmp_path: Path, docker_client: Any) -> None:
    run = uuid.uuid4().hex[:8]
    place = {"registry": local_registry.host, "organization": "engine-tests", "repository": "modelarts-layers"}
    plain = retagged(fetched_torch, f"plain-{run}", **place)
    stacked = retagged(with_stack(fetched_torch, six_wheel, cache_dir), f"stacked-{run}", **place)
    options = BuildOptions(backend=Backend.BUILDKIT, work_dir=tmp_path / "work")
    try:
        first = build.build_image(plain, options, push_engine)
        second = build.build_image(stacked, options, push_engine)
        mine, theirs = own_layers(first), own_layers(second)
        for shared in ("user", "conda", "CUDA libraries", "torch"):
            assert mine[shared] == theirs[shared], shared
        assert mine["stack"] != theirs["stack"]
        before = {layer.diff_id for layer in first.stack}
        own = [(role, layer.step) for layer, role in zip(second.stack, second.roles, strict=True)
               if layer.diff_id not in before]
        assert [role for role, _ in own] == ["stack"], own

        env = {"MODELARTS_REGISTRY_USER": local_registry.user, "MODELARTS_REGISTRY_PASSWORD": local_registry.password}
        push = PushOptions(reports_dir=tmp_path / "reports", retries=2, backoff=0.05)
        now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        (pushed_first,) = publish.push_images([plain.image], push, engine=push_engine, env=env, now=now)
        (pushed_second,) = publish.push_images([stacked.image], push, engine=push_engine, env=env, now=now)
        (outcome,) = pushed_second.tags
        assert pushed_first.tags[0].layers_there == 0 and pushed_first.tags[0].layers_sent >= len(build.OWN_LAYERS)
        # only the stack layer is the second image's own: every other layer was in the registry already
        distinct = len({layer.diff_id for layer in second.stack})
        assert (outcome.layers_sent, outcome.layers_there) == (1, distinct - 1)
        assert outcome.bytes_sent < 0.01 * second.size
        assert "1 layers sent" in publish.summary([pushed_second])

        # the image passes verification and every conformance check, and uses the bytecode it carries
        report = verify_image(push_engine, stacked.image, options=VerifyOptions(reports_dir=tmp_path / "verify"),
                              reference=stacked.image.reference)
        assert report.ok, report.failure()
        assert not [check for check in report.conformance if not check.ok and not check.warning]
        status, output = run_in(docker_client, stacked.image.reference,
                                "touch /tmp/mark; python -W ignore -c 'import torch, six'; "
                                "find /home/ma-user/miniconda3 -newer /tmp/mark -name '*.pyc' | head -5; echo done")
        assert status == 0 and output.split() == ["done"], f"Python wrote bytecode of its own: {output}"
    finally:
        for fetched in (plain, stacked):
            remove_image(docker_client, fetched.image.reference)
