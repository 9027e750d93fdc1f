"""A CI runner starts empty: the matrix asks the registry, not the engine, what is done already.

One cell is built, verified and pushed to a local registry (htpasswd auth). Then, with the image and the
download cache gone and a fresh reports directory, the cell is reported unchanged from its tag's input-hash
label, without fetching or building. Then the engine's build cache is wiped and the cell's stack changes: the
build takes every unchanged layer from the tag's inline cache in the registry and runs only the steps the
change needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images import pipeline
from modelarts_images.config import versions as versions_config
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.http.registry import Registry
from modelarts_images.inputs import INPUTS_LABEL, changed_inputs, image_hash
from modelarts_images.matrix import runner
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.options import Flags, resolve
from modelarts_images.shared.credentials import Credentials
from tests.support.engine_tier import STAND_IN_INSTALLER, fetch_with_stack, remove_image, run_base
from tests.support.http_server import serve
from tests.support.registry import RunningRegistry
from tests.support.wheels import make_wheel

pytestmark = pytest.mark.engine


@dataclasses.dataclass
class Cell:
    versions: Path
    registry: RunningRegistry
    reference: str
    base: str

    engine: Any

    def run(self, reports: Path, cache: Path, **matrix: Any) -> CellRecord:
        options = resolve({"cache_dir": str(cache), "reports_dir": str(reports)},
                          Flags(versions=str(self.versions), device="cpu", backend="buildkit"))
        images = versions_config.load_versions(self.versions).images
        chosen = runner.MatrixOptions(options=options, **matrix)
        (record,) = runner.run_matrix(images, chosen, engine=self.engine, out=print, summary=False)
        return record


@pytest.fixture
def cell(push_engine: DockerEngine, local_registry: RunningRegistry, torch_wheel: Path,
         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: Any) -> Iterator[Cell]:
    """The cell, on a base of its own: the engine then holds none of its layers but the base's (other tests'
    images on the test base have the same, reproducible, layers), as a fresh runner would."""
    monkeypatch.setenv("MODELARTS_REGISTRY_USER", local_registry.user)
    monkeypatch.setenv("MODELARTS_REGISTRY_PASSWORD", local_registry.password)
    installer, wheel = STAND_IN_INSTALLER.read_bytes(), torch_wheel.read_bytes()
    run = uuid.uuid4().hex[:8]
    tag, base = f"ci-{run}", f"modelarts-test-base-ci:{run}"
    run_base(docker_client, base, run)
    with serve() as server:
        entry = {"id": "ci-cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": tag,
                 "registry": local_registry.host, "organization": "ci", "repository": "modelarts-images-test",
                 "base_image": base,
                 "installer": {"url": server.add("/files/stand-in-installer.sh", installer),
                               "sha256": hashlib.sha256(installer).hexdigest()},
                 "wheels": [{"url": server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel),
                             "sha256": hashlib.sha256(wheel).hexdigest()}]}
        versions = tmp_path / "versions.yaml"
        versions.write_text(yaml.safe_dump({"images": [entry]}), "utf-8")
        made = Cell(versions=versions, registry=local_registry, base=base, engine=lambda: push_engine,
                    reference=f"{local_registry.host}/ci/modelarts-images-test:{tag}")
        try:
            yield made
        finally:
            remove_image(docker_client, made.reference)
            remove_image(docker_client, base)


def _compressed_sizes(cell: Cell) -> list[tuple[str, int]]:
    """Each layer of the cell's tag in the registry, oldest first: (compressed digest, size), from its manifest."""
    credentials = Credentials(registry=cell.registry.host, username=cell.registry.user,
                              password=cell.registry.password, source="test")
    name = cell.reference.split("/", 1)[1].rsplit(":", 1)[0]
    with Registry(cell.registry.host, credentials) as registry:
        response = registry.request("GET", f"/v2/{name}/manifests/{cell.reference.rsplit(':', 1)[1]}",
                                    scope=f"repository:{name}:pull",
                                    headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    return [(layer["digest"], int(layer["size"])) for layer in json.loads(response.content)["layers"]]


def test_a_fresh_runner_skips_through_the_registry_and_builds_from_its_cache(
        cell: Cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: Any) -> None:
    # 1. build, verify and push the cell: the image carries its input hash and its inline cache
    first = cell.run(tmp_path / "reports-1", tmp_path / "cache-1", push=True)
    assert first.status is CellStatus.PASSED, first.reason
    label = docker_client.images.get(cell.reference).labels[INPUTS_LABEL]
    assert label == image_hash(first.inputs)
    assert cell.versions.with_suffix(".lock").is_file(), "fetch pins the artifacts for the next runner"

    # 2. a fresh runner: no image, no build cache, no download cache, no reports; nothing is fetched or built
    remove_image(docker_client, cell.reference)
    subprocess.run(["docker", "builder", "prune", "-af"], check=True, capture_output=True, timeout=600)

    def must_not(*_: Any, **__: Any) -> Any:
        raise AssertionError("an unchanged cell was fetched or built")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fetch_step", must_not)
        patch.setattr(pipeline, "build_step", must_not)
        started = time.monotonic()
        skipped = cell.run(tmp_path / "reports-2", tmp_path / "cache-2", check_registry=True)
        took = time.monotonic() - started
    assert skipped.status is CellStatus.SKIPPED, skipped.reason
    assert skipped.reason.startswith("unchanged in the registry") and skipped.digest == first.digest
    assert image_hash(skipped.inputs) == label
    assert not (tmp_path / "cache-2").exists(), "nothing was downloaded"
    print(f"unchanged through the registry in {took:.2f} s")  # bench/bench_ci.py holds the target

    # 3. the stack changes (the engine's build cache is still empty): the layers below the stack come from the
    # registry's inline cache; only the stack's install and its copy run.
    # versions.yaml gains a stack variable (what the registry check sees) and the fetch a stack wheel.
    document = yaml.safe_load(cell.versions.read_text("utf-8"))
    document["images"][0]["env"] = {"CI_STACK_PROBE": "1"}
    cell.versions.write_text(yaml.safe_dump(document), "utf-8")
    (tmp_path / "stack").mkdir()
    name = "ci_stack_probe-1.0-py3-none-any.whl"
    monkeypatch.setattr(pipeline, "fetch_step", fetch_with_stack({name: make_wheel(name)}, tmp_path / "stack"))
    started = time.monotonic()
    changed = cell.run(tmp_path / "reports-3", tmp_path / "cache-1", check_registry=True)
    took = time.monotonic() - started
    assert changed.status is CellStatus.PASSED, changed.reason
    assert {"artifacts", "stack"} <= set(changed_inputs(first.inputs, changed.inputs))

    def steps(which: tuple[str, ...], script: str) -> list[str]:
        return [step for step in which if script in step]

    assert steps(changed.steps_ran, "stack-install.sh") and steps(changed.steps_ran, "/out/stack/")
    assert len(changed.steps_ran) == 2, changed.steps_ran
    for unchanged in ("system-layer.sh", "user-layer.sh", "conda-install.sh", "packages-install.sh", "/out/conda/"):
        assert not steps(changed.steps_ran, unchanged), (unchanged, changed.steps_ran)
    # the CUDA libraries' and the torch steps, both from the cache
    assert len(steps(changed.steps_cached, "packages-install.sh")) == 2, changed.steps_cached
    assert steps(changed.steps_cached, "/out/system/")
    # every layer of the tag below the stack's (the stack layer is made anew; the runner has its base) came from the
    # registry (the tag is still the first build's: nothing was pushed since)
    base_layers = len(docker_client.images.get(cell.base).attrs["RootFS"]["Layers"])
    own = _compressed_sizes(cell)[base_layers:-1]
    assert {digest for digest, _ in own} <= set(changed.layers_pulled), (changed.layers_pulled, own)
    pulled = sum(size for digest, size in dict(own).items() if digest in changed.layers_pulled)
    print(f"changed stack with the registry cache: {took:.2f} s, {len(changed.steps_ran)} steps ran, "
          f"{len(changed.steps_cached)} from the cache, {len(changed.layers_pulled)} layers "
          f"({pulled / 1e6:.1f} MB) pulled")
