"""arm64 images on this x86_64 engine, every step of their builds and runs under QEMU user emulation: an aarch64 CPU
entry and an Ascend NPU entry through `inv fetch build verify`, their wheels served over loopback HTTP and their
dependency closure resolved by fetch for aarch64 with the host's pip. The arm64 test base stands in for a CANN base:
the NPU entry's verification must fail on the named check `npu:cann` ("CANN missing") with exit 5, not a traceback.

Needs the arm64 base (scripts/test-base-image.sh modelarts-test-base:bookworm-arm64 arm64) and a binfmt_misc handler
for aarch64 (scripts/binfmt-up.sh); .ci/run makes both. Slow: each torch install takes minutes under emulation.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images.build import emulation
from tests.support.engine_tier import (
    ARM64_BASE,
    ARM64_TORCH,
    ARM64_TORCH_NPU,
    ROOT,
    STAND_IN_INSTALLER,
    arm64_wheels,
    remove_image,
    unavailable,
)
from tests.support.http_server import serve

pytestmark = pytest.mark.engine
CHAIN_TIMEOUT = 2400  # seconds for one `inv` chain under emulation


@pytest.fixture(scope="module")
def arm64_base(engine: Any, docker_client: Any) -> str:
    if engine.architecture() != "aarch64" and emulation.handler("aarch64") is None:
        unavailable("no binfmt_misc handler for aarch64 on this x86_64 host: run scripts/binfmt-up.sh")
    try:
        architecture = docker_client.images.get(ARM64_BASE).attrs.get("Architecture")
    except Exception as error:  # any failure means the same thing here
        unavailable(f"base image {ARM64_BASE} is missing ({error}); make it with "
                    f"scripts/test-base-image.sh {ARM64_BASE} arm64")
    assert architecture == "arm64", f"{ARM64_BASE} is {architecture}, not arm64: remake it"
    return ARM64_BASE


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return arm64_wheels(tmp_path_factory.mktemp("arm64-wheels"))


@pytest.fixture
def served(wheels: dict[str, Path]) -> Iterator[dict[str, dict[str, str]]]:
    """The stand-in installer and the aarch64 wheels on loopback HTTP, as versions.yaml artifacts."""
    with serve() as server:
        artifacts = {}
        for name, path in (("installer", STAND_IN_INSTALLER), *wheels.items()):
            data = path.read_bytes()
            artifacts[name] = {"url": server.add(f"/files/{path.name}", data),
                               "sha256": hashlib.sha256(data).hexdigest()}
        yield artifacts


def _chain(tmp_path: Path, entry: dict[str, Any], *steps: str) -> subprocess.CompletedProcess[str]:
    versions = tmp_path / "versions.yaml"
    versions.write_text(yaml.safe_dump({"images": [entry]}), "utf-8")
    config = tmp_path / "invoke-arm64.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {
        "cache_dir": str(tmp_path / "cache"), "reports_dir": str(tmp_path / "reports")}}), "utf-8")
    env = {**os.environ, "INVOKE_MODELARTS_VERSIONS": str(versions)}
    return subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), *steps], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CHAIN_TIMEOUT, check=False)


def _entry(image_id: str, tag: str, base: str, artifacts: dict[str, dict[str, str]], **keys: Any) -> dict[str, Any]:
    return {"id": image_id, "python": "3.11", "torch": ARM64_TORCH, "tag": tag, "registry": "127.0.0.1:5999",
            "organization": "arm64", "repository": "modelarts-images-test", "base_image": base,
            "installer": artifacts["installer"], **keys}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


def test_an_aarch64_cpu_entry_is_built_and_verified_under_emulation(
        docker_client: Any, arm64_base: str, run_id: str, served: dict[str, dict[str, str]], tmp_path: Path) -> None:
    tag = f"arm64-cpu-{run_id}"
    entry = _entry("arm64-cpu", tag, arm64_base, served, arch="aarch64", cuda="cpu", wheels=[served["torch"]])
    reference = f"127.0.0.1:5999/arm64/modelarts-images-test:{tag}"
    try:
        result = _chain(tmp_path, entry, "fetch", "build", "--backend", "buildkit", "verify", "--device", "cpu")
        assert result.returncode == 0, _output(result)
        image = docker_client.images.get(reference)
        assert image.attrs["Architecture"] == "arm64"
        assert image.attrs["Config"]["Labels"]["modelarts-images.arch"] == "aarch64"
        # fetch resolved torch's dependencies for aarch64: none of the nvidia-* wheels its markers keep for x86_64
        lock = yaml.safe_load((tmp_path / "versions.lock").read_text("utf-8"))["images"]["arm64-cpu"]
        closure = [item["url"].rsplit("/", 1)[-1] for item in lock["closure"]]
        assert closure and not [name for name in closure if name.lower().startswith("nvidia")], closure
        assert all(name.endswith(("-none-any.whl", "aarch64.whl")) for name in closure), closure
        assert any("aarch64" in name for name in (item["url"] for item in lock["tools"])), lock["tools"]
        report = json.loads((tmp_path / "reports" / "verify" / "arm64-cpu.json").read_text("utf-8"))
        assert report["ok"] is True, _output(result)
        (run,) = report["runs"]
        assert "aarch64" in run["result"]["platform"], run["result"]["platform"]
    finally:
        remove_image(docker_client, reference)


def test_an_npu_entry_builds_on_both_backends_and_its_verification_names_cann_missing(
        docker_client: Any, arm64_base: str, run_id: str, served: dict[str, dict[str, str]], tmp_path: Path) -> None:
    tag = f"arm64-npu-{run_id}"
    entry = _entry("arm64-npu", tag, arm64_base, served, accelerator="ascend", cann="8.2.RC1", npu="910b",
                   torch_npu=ARM64_TORCH_NPU, wheels=[served["torch"], served["torch_npu"]])
    reference = f"127.0.0.1:5999/arm64/modelarts-images-test:{tag}"
    try:
        for steps in (("fetch", "build", "--backend", "docker"), ("build", "--backend", "buildkit")):
            result = _chain(tmp_path, entry, *steps, "verify", "--device", "cpu")
            output = _output(result)
            assert result.returncode == 5, output
            assert "Traceback" not in result.stdout + result.stderr, output
            assert "has no CANN set_env.sh" in result.stderr, output
            report = json.loads((tmp_path / "reports" / "verify" / "arm64-npu.json").read_text("utf-8"))
            (run,) = report["runs"]
            failed = {check["name"]: check["detail"] for check in run["checks"] if not check["ok"]}
            assert failed.get("script:npu:cann", "").startswith("CANN missing"), failed
            assert "libhccl.so" in failed["script:npu:cann"] or ".so" in failed["script:npu:cann"], failed
            # the CPU checks still ran: torch imported without its NPU backend loading
            passed = {check["name"] for check in run["checks"] if check["ok"]}
            assert {"script:import-torch", "script:matmul", "script:autograd-sgd"} <= passed, run["checks"]
            conformance = {check["name"]: check for check in report["conformance"]}
            assert conformance["npu-group"]["ok"] is True, conformance["npu-group"]
            assert conformance["npu-driver"]["ok"] is True, conformance["npu-driver"]
            assert conformance["cann-environment"]["ok"] is False, conformance["cann-environment"]
            assert docker_client.images.get(reference).attrs["Architecture"] == "arm64"
    finally:
        remove_image(docker_client, reference)
