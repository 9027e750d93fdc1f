"""The user's chain end to end: `inv fetch build verify` on a test entry, artifacts served over loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.engine_tier import ROOT, STAND_IN_INSTALLER, remove_image
from tests.support.http_server import serve

pytestmark = pytest.mark.engine


def test_fetch_build_verify_chain(docker_client: Any, test_base: str, run_id: str, torch_wheel: Path,
                                  tmp_path: Path) -> None:
    installer = STAND_IN_INSTALLER.read_bytes()
    wheel = torch_wheel.read_bytes()
    tag = f"chain-{run_id}"
    reference = f"127.0.0.1:5999/chain/modelarts-images-test:{tag}"
    with serve() as server:
        installer_url = server.add("/files/stand-in-installer.sh", installer)
        wheel_url = server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel)
        versions = tmp_path / "versions.yaml"
        versions.write_text(yaml.safe_dump({"images": [{
            "id": "chain-test", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": tag,
            "registry": "127.0.0.1:5999", "organization": "chain", "repository": "modelarts-images-test",
            "base_image": test_base,
            "installer": {"url": installer_url, "sha256": hashlib.sha256(installer).hexdigest()},
            "wheels": [{"url": wheel_url, "sha256": hashlib.sha256(wheel).hexdigest()}],
        }]}), "utf-8")
        config = tmp_path / "invoke-chain.yaml"
        config.write_text(yaml.safe_dump({"modelarts": {
            "cache_dir": str(tmp_path / "cache"), "reports_dir": str(tmp_path / "reports")}}), "utf-8")
        # One selection for the whole chain, through the environment.
        env = {**os.environ, "INVOKE_MODELARTS_VERSIONS": str(versions)}
        try:
            result = subprocess.run(
                [sys.executable, "-m", "invoke", "-f", str(config),
                 "fetch", "build", "--backend", "buildkit", "verify", "--device", "cpu"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, check=False)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            assert "chain-test: installer, 1 wheels, " in result.stdout
            assert "dependency wheels" in result.stdout and "no dependency wheels" not in result.stdout
            assert "versions.lock: pinned chain-test" in result.stdout
            assert reference in result.stdout
            image = docker_client.images.get(reference)
            labels = image.attrs["Config"]["Labels"]
            assert labels["modelarts-images.torch"] == "2.13.0"
            assert labels["modelarts-images.hermetic"] == "true"
            report = json.loads((tmp_path / "reports" / "verify" / "chain-test.json").read_text("utf-8"))
            assert report["ok"] is True
            lock = yaml.safe_load((tmp_path / "versions.lock").read_text("utf-8"))
            assert lock["images"]["chain-test"]["closure"], "the dependency closure is pinned"
        finally:
            remove_image(docker_client, reference)
