"""A team's own stack in the image, end to end: `inv fetch build verify` on a CPU entry with a multi-package stack
from the host's configured index (one package built from its sdist), an apt package, an environment variable and
check scripts, built hermetically with both backends and looked at from inside the image."""

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

from modelarts_images.build import builder as build
from modelarts_images.engine.adapter import DockerEngine
from tests.support.engine_tier import ROOT, STAND_IN_INSTALLER, pip, remove_image, run_in
from tests.support.http_server import FileServer, serve

pytestmark = pytest.mark.engine

CHECK_OK = """import os, sys
import einops, six, docopt
assert os.getuid() == 1000, os.getuid()
assert os.environ["HF_HOME"] == "/home/ma-user/work/.cache/huggingface", os.environ.get("HF_HOME")
# The script alone is mounted: the .env beside it on the host is not in the container.
here = os.path.dirname(os.path.abspath(__file__))
assert sorted(os.listdir(here)) == ["stack_ok.py"], os.listdir(here)
print("stack check ok", einops.__version__, sys.executable)
"""
CHECK_FAILS = """import sys
print("about to fail on purpose")
sys.exit(3)
"""


def _run(args: list[str], config: Path, versions: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INVOKE_MODELARTS_VERSIONS": str(versions)}
    return subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500, check=False)


def _hash_of(project: str, directory: Path) -> str:
    """The sha256 of the wheel the host's index serves for `project`, for a requirements file's --hash."""
    directory.mkdir()
    pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
         "--abi", "none", "--platform", "any", "-d", str(directory), project])
    (wheel,) = directory.glob("*.whl")
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def _entry(server: FileServer, torch_wheel: Path, *, tag: str, base: str, stack: dict[str, Any]) -> dict[str, Any]:
    installer, wheel = STAND_IN_INSTALLER.read_bytes(), torch_wheel.read_bytes()
    return {
        "id": "stack-test", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": tag,
        "registry": "127.0.0.1:5999", "organization": "stack", "repository": "modelarts-images-test",
        "base_image": base,
        "installer": {"url": server.add("/files/stand-in-installer.sh", installer),
                      "sha256": hashlib.sha256(installer).hexdigest()},
        "wheels": [{"url": server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel),
                    "sha256": hashlib.sha256(wheel).hexdigest()}],
        **stack,
    }


@pytest.mark.parametrize("backend", ["buildkit", "docker"])
def test_a_stack_is_built_hermetically_verified_and_kept_in_its_own_layer(
        docker_client: Any, engine: DockerEngine, test_base: str, run_id: str, torch_wheel: Path, tmp_path: Path,
        backend: str) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "stack_ok.py").write_text(CHECK_OK)
    (tmp_path / "checks" / "stack_fails.py").write_text(CHECK_FAILS)
    (tmp_path / "checks" / ".env").write_text("HW_SECRET_KEY=not-for-the-container\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "common.txt").write_text(
        f"packaging --hash=sha256:{_hash_of('packaging', tmp_path / 'hash')}\nsix\n")
    stack = {"requirements": "stacks/common.txt", "packages": ["einops", "docopt==0.6.2"],
             "build_from_source": ["docopt"], "apt_packages": ["jq"],
             "env": {"HF_HOME": "/home/ma-user/work/.cache/huggingface"}, "checks": ["checks/stack_ok.py"]}
    tag = f"stack-{backend}-{run_id}"
    reference = f"127.0.0.1:5999/stack/modelarts-images-test:{tag}"
    config = tmp_path / "invoke-stack.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(tmp_path / "cache"),
                                                    "reports_dir": str(tmp_path / "reports")}}), "utf-8")
    versions = tmp_path / "versions.yaml"
    with serve() as server:
        versions.write_text(yaml.safe_dump({"images": [_entry(server, torch_wheel, tag=tag, base=test_base,
                                                               stack=stack)]}), "utf-8")
        try:
            result = _run(["fetch", "build", "--backend", backend, "verify", "--device", "cpu"], config, versions)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

            # the lock pins every file: the stack's wheels, the sdist, and what building it needs
            locked = yaml.safe_load((tmp_path / "versions.lock").read_text("utf-8"))["images"]["stack-test"]
            stack_files = {Path(item["url"]).name for item in locked["stack"]}
            assert any(name.startswith("einops-") for name in stack_files)
            assert any(name.startswith("six-") for name in stack_files)
            assert "docopt-0.6.2.tar.gz" in stack_files
            assert any(Path(item["url"]).name.startswith("setuptools-") for item in locked["build_deps"])
            assert all(len(item["sha256"]) == 64 and item["size"] > 0 for item in locked["stack"])

            # verified: pip check, every requirement imported as uid 1000, the check script as a boot command
            report = json.loads((tmp_path / "reports" / "verify" / "stack-test.json").read_text("utf-8"))
            checks = {check["name"]: check for check in report["stack"]}
            assert report["ok"] is True, json.dumps(report["stack"], indent=1)
            assert checks["pip-check"]["status"] == "pass"
            assert {f"import:{name}" for name in ("einops", "six", "packaging", "docopt")} <= set(checks)
            assert checks["check:stack_ok.py"]["status"] == "pass"

            # in the image: the environment, the apt package, and nothing of the build left behind
            image = docker_client.images.get(reference)
            env = dict(item.split("=", 1) for item in image.attrs["Config"]["Env"])
            assert env["HF_HOME"] == "/home/ma-user/work/.cache/huggingface"
            labels = image.attrs["Config"]["Labels"]
            assert "einops" in labels["modelarts-images.stack.requirements"]
            assert labels["modelarts-images.stack.apt-packages"] == "jq"
            code, output = run_in(docker_client, reference,
                                  "jq --version; command -v gcc || echo no-gcc; "
                                  # what this build wrote (the base image's own files aside)
                                  "find /home /tmp /root /opt \\( -name '*.whl' -o -name '*.tar.gz' -o -path "
                                  "'*/.cache/pip' \\) -print 2>/dev/null | grep . || echo no-build-files; "
                                  "ls /var/lib/apt/lists | grep -v -e ^partial -e ^lock || echo no-apt-lists",
                                  user="1000:100")
            assert code == 0, output
            assert "jq-" in output and "no-gcc" in output, output
            assert "no-build-files" in output and "no-apt-lists" in output, output

            # the stack is a layer of its own, the last one, far smaller than the torch layer below it
            stack_layers = engine.summary(image.id, base_image=test_base).stack
            roles = build.layer_roles(stack_layers)
            assert roles[-2:] == ("torch", "stack"), (roles, [layer.step for layer in stack_layers])
            torch_layer, stack_layer = (layer.size for layer in stack_layers[-2:])
            assert 0 < stack_layer < torch_layer / 10, (stack_layer, torch_layer)

            # a failing check fails verification (exit 5), naming the script and the end of its output
            failing = {**stack, "checks": ["checks/stack_ok.py", "checks/stack_fails.py"]}
            versions.write_text(yaml.safe_dump({"images": [_entry(server, torch_wheel, tag=tag, base=test_base,
                                                                   stack=failing)]}), "utf-8")
            failed = _run(["verify", "--device", "cpu"], config, versions)
            assert failed.returncode == 5, failed.stdout[-3000:] + failed.stderr[-3000:]
            assert "stack/check:stack_fails.py" in failed.stderr
            assert "exited with 3: about to fail on purpose" in failed.stderr
        finally:
            remove_image(docker_client, reference)


def test_an_unknown_apt_package_fails_the_build_naming_it(docker_client: Any, test_base: str, run_id: str,
                                                         torch_wheel: Path, tmp_path: Path) -> None:
    tag = f"stack-apt-{run_id}"
    config = tmp_path / "invoke-stack.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(tmp_path / "cache"),
                                                    "reports_dir": str(tmp_path / "reports")}}), "utf-8")
    versions = tmp_path / "versions.yaml"
    with serve() as server:
        versions.write_text(yaml.safe_dump({"images": [_entry(
            server, torch_wheel, tag=tag, base=test_base, stack={"apt_packages": ["no-such-package-modelarts"]})]}))
        try:
            result = _run(["fetch", "--no-closure", "build", "--backend", "buildkit"], config, versions)
        finally:
            remove_image(docker_client, f"127.0.0.1:5999/stack/modelarts-images-test:{tag}")
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Unable to locate package no-such-package-modelarts" in result.stderr
