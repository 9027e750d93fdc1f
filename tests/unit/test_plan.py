"""The plan is a pure function of the loaded entry."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from modelarts_images import plan
from modelarts_images.config import versions as config
from tests.conftest import INVOKE_FALLBACKS, ROOT


def shipped() -> dict[str, plan.ImagePlan]:
    versions = config.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS)
    return {image.id: plan.make_plan(image) for image in versions.images}


def test_recipe_entry_plan() -> None:
    recipe = shipped()["pytorch-1.8.1-cuda10.2"]
    args = dict(recipe.build_args)
    assert args["BASE_IMAGE"] == "ubuntu:18.04"
    assert args["INSTALLER"] == "Miniconda3-py37_4.12.0-Linux-x86_64.sh"
    assert args["CONDA_PREFIX"] == "/home/ma-user/miniconda3"
    assert args["GPU_RUNTIME"] == "cuda"
    assert recipe.wheel_source is None
    assert [a.filename for a in recipe.artifacts] == [
        "Miniconda3-py37_4.12.0-Linux-x86_64.sh",
        "torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl",
        "torchvision-0.9.1+cu102-cp37-cp37m-linux_x86_64.whl",
        "torchaudio-0.8.1-cp37-cp37m-linux_x86_64.whl",
    ]
    labels = dict(recipe.labels)
    assert labels["modelarts-images.torch"] == "1.8.1"
    assert labels["modelarts-images.cuda"] == "10.2"
    assert labels["org.opencontainers.image.base.name"] == "ubuntu:18.04"
    assert labels["modelarts-images.installer"].endswith(
        "sha256:4dc4214839c60b2f5eb3efbdee1ef5d9b45e74f2c09fcae6c8934a13f36ffc3e")
    assert labels["modelarts-images.wheel.torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl"].endswith("sha256:unpinned")


def test_derived_wheels_use_the_right_index() -> None:
    plans = shipped()
    old = plans["pytorch-1.8.1-cuda11.1"].wheel_source
    assert old is not None
    assert old.index_url == "https://download.pytorch.org/whl/torch_stable.html"
    assert old.requirements == ("torch==1.8.1", "torchvision==0.9.1", "torchaudio==0.8.1")
    assert plans["pytorch-2.1.0-cuda12.1"].wheel_source == plan.WheelSource(
        index_url="https://download.pytorch.org/whl/torch_stable.html",
        requirements=("torch==2.1.0", "torchvision==0.16.0", "torchaudio==2.1.0"))
    new = plans["pytorch-2.9.1-cuda12.8"].wheel_source
    assert new is not None and new.index_url == "https://download.pytorch.org/whl/cu128"
    cpu = next(p for p in plans.values() if p.image.is_cpu)
    assert cpu.wheel_source is not None and cpu.wheel_source.index_url.endswith("/whl/cpu")
    assert dict(cpu.build_args)["GPU_RUNTIME"] == "cpu"


def test_json_round_trip() -> None:
    data = json.loads(plan.as_json(list(shipped().values())))
    assert [entry["id"] for entry in data] == list(shipped())
    first = data[0]
    assert first["reference"] == "swr.cn-north-4.myhuaweicloud.com/deep-learning-demo/pytorch:1.8.1-cuda10.2"
    assert first["build_args"]["BASE_IMAGE"] == "ubuntu:18.04"
    assert first["artifacts"][0]["sha256"] == "4dc4214839c60b2f5eb3efbdee1ef5d9b45e74f2c09fcae6c8934a13f36ffc3e"
    assert first["artifacts"][1]["sha256"] is None


def test_json_hides_the_pip_index_password() -> None:
    recipe = shipped()["pytorch-1.8.1-cuda10.2"]
    image = dataclasses.replace(recipe.image, pip_index="https://robot:s3cret@pypi.example.com/simple")
    text = plan.as_json([plan.make_plan(image)]) + plan.as_text([plan.make_plan(image)])
    assert "s3cret" not in text
    assert json.loads(plan.as_json([plan.make_plan(image)]))[0]["pip_index"] == (
        "https://robot:***@pypi.example.com/simple")


def test_text_names_every_value() -> None:
    text = plan.as_text([shipped()["pytorch-1.8.1-cuda10.2"]])
    assert text.splitlines()[0] == "pytorch-1.8.1-cuda10.2 (default)"
    for expected in ("swr.cn-north-4.myhuaweicloud.com/deep-learning-demo/pytorch:1.8.1-cuda10.2", "ubuntu:18.04",
                     "10.2 (cu102)", "torch 1.8.1, torchvision 0.9.1, torchaudio 0.8.1",
                     "sha256 unpinned (versions.lock pins it)", "build arg  BASE_IMAGE=ubuntu:18.04"):
        assert expected in text


def run_inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def test_inv_plan_all_prints_every_entry() -> None:
    result = run_inv("plan", "--all")
    assert result.returncode == 0, result.stderr
    for image_id in shipped():
        assert f"\n{image_id}" in "\n" + result.stdout


def test_inv_plan_default_and_only() -> None:
    default = run_inv("plan", "--json")
    assert [e["id"] for e in json.loads(default.stdout)] == ["pytorch-1.8.1-cuda10.2"]
    chosen = run_inv("plan", "--json", "--only", "pytorch-2.1.0-cuda12.1", "--only", "pytorch-1.13.1-cuda11.7")
    assert [e["id"] for e in json.loads(chosen.stdout)] == ["pytorch-1.13.1-cuda11.7", "pytorch-2.1.0-cuda12.1"]


def test_selection_from_the_environment_serves_a_chain() -> None:
    import os

    env = {**os.environ, "INVOKE_MODELARTS_ONLY": "pytorch-2.1.0-cuda12.1,pytorch-1.13.1-cuda11.7"}
    result = run_inv("plan", "--json", "plan", "--json", env=env)
    assert result.returncode == 0, result.stderr
    ids = [e["id"] for e in json.loads("[" + result.stdout.replace("]\n[", "],[") + "]")[0]]
    assert ids == ["pytorch-1.13.1-cuda11.7", "pytorch-2.1.0-cuda12.1"]


def test_unknown_only_exits_2() -> None:
    result = run_inv("plan", "--only", "pytorch-1.8.1-cuda10")
    assert result.returncode == 2
    assert "no image has id 'pytorch-1.8.1-cuda10'; did you mean" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reader_that_went_away_ends_the_task_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # like `inv plan | head` once head has exited
    try:
        result = subprocess.run([sys.executable, "-m", "invoke", "plan", "--only", "pytorch-1.8.1-cuda10.2"],
                                cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")
