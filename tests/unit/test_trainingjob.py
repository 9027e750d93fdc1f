"""The training-job body, built with the request models of Huawei Cloud's own SDK (huaweicloudsdkmodelarts, a dev
dependency): a field the API does not have, or a rule its models document, fails here."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from huaweicloudsdkcore.utils import http_utils

from modelarts_images.cloud import sdk
from modelarts_images.contract import RunUser
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.publish import trainingjob

IMAGE = ImageSpec(
    id="pytorch-1.8.1-cuda10.2", default=True, python="3.7", cuda="10.2", torch="1.8.1", torchvision=None,
    torchaudio=None, tag="1.8.1-cuda10.2", registry="swr.cn-north-4.myhuaweicloud.com", organization="org",
    repository="pytorch", base_image="ubuntu:18.04", pip_index="", apt_mirror="",
    installer=Artifact(url="https://x/Miniconda3-py37_4.12.0-Linux-x86_64.sh", sha256=None), wheels=())
DIGEST = "sha256:" + "e" * 64


def request_of(body: dict[str, Any]) -> Any:
    """The SDK's CreateTrainingJobRequest for `body` (AssertionError naming what the models do not have)."""
    try:
        return sdk.create_request(body)
    except ValueError as error:
        raise AssertionError(str(error)) from None


def documented_problems(body: dict[str, Any]) -> list[str]:
    """The rules the SDK's JobAlgorithm, JobMetadata and environments docs state, checked."""
    problems = []
    metadata, algorithm = body["metadata"], body["algorithm"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", metadata["name"]):
        problems.append("metadata.name: 1-64 letters, digits, '_' or '-'")
    if len(metadata.get("description", "")) > 256:
        problems.append("metadata.description: at most 256 characters")
    if ("code_dir" in algorithm) != ("boot_file" in algorithm):
        problems.append("algorithm: code_dir and boot_file go together")
    if "boot_file" in algorithm and not algorithm["boot_file"].startswith(algorithm["code_dir"]):
        problems.append("algorithm.boot_file: must lie in code_dir")
    local = algorithm.get("local_code_dir")
    if local is not None:
        reserved = ("/home/ma-user/modelarts", "/home/ma-user/modelarts-dev", "/home/ma-user/infer")
        if not local.startswith("/home/") or local.rstrip("/") == "/home/ma-user" or any(
                local.rstrip("/") == top or local.startswith(top + "/") for top in reserved):
            problems.append(f"algorithm.local_code_dir: {local} is not allowed")
    environments = algorithm.get("environments", {})
    if len(environments) > 100 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in environments):
        problems.append("algorithm.environments: at most 100, named with letters, digits and '_'")
    return problems


def test_the_body_is_a_create_training_job_request_of_the_sdk() -> None:
    body = trainingjob.training_job_body(IMAGE, digest=DIGEST)
    request = request_of(body)
    assert http_utils.sanitize_for_serialization(request.body) == body  # nothing the models would drop
    assert documented_problems(body) == []


def test_the_sdk_check_catches_what_the_api_refuses() -> None:
    body = trainingjob.training_job_body(IMAGE, digest=DIGEST)
    body["algorithm"]["engine"]["run_user"] = "1000"  # a field of the algorithm-management models only
    with pytest.raises(AssertionError, match="JobEngine has no field run_user"):
        request_of(body)
    body = trainingjob.training_job_body(IMAGE, digest=DIGEST)
    body["algorithm"]["local_code_dir"] = "/home/ma-user/modelarts/user-job-dir"
    assert documented_problems(body) == [
        "algorithm.local_code_dir: /home/ma-user/modelarts/user-job-dir is not allowed"]
    del body["algorithm"]["local_code_dir"], body["algorithm"]["boot_file"]
    assert documented_problems(body) == ["algorithm: code_dir and boot_file go together"]


def test_the_body_runs_the_boot_command_in_the_pinned_image() -> None:
    body = trainingjob.training_job_body(IMAGE, digest=DIGEST)
    assert body["kind"] == "job" and body["metadata"]["name"] == "verify-pytorch-1-8-1-cuda10-2"
    algorithm = body["algorithm"]
    assert algorithm["engine"] == {"image_url": f"swr.cn-north-4.myhuaweicloud.com/org/pytorch@{DIGEST}"}
    # a CUDA entry runs on a GPU flavour, where the script must find CUDA (as the local verification runs it)
    assert algorithm["command"] == ("/home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py"
                                    " --require-gpu")
    assert DIGEST in body["metadata"]["description"]
    # the code folder's last level is `code`, where the boot command looks (no local_code_dir moves it)
    assert algorithm["code_dir"] == "obs://<bucket>/<path>/code/" and "local_code_dir" not in algorithm
    assert algorithm["boot_file"] == "obs://<bucket>/<path>/code/pytorch-verification.py"
    assert body["spec"]["resource"] == {"flavor_id": trainingjob.GPU_FLAVOR, "node_count": 1}


def test_flavor_nodes_code_folder_and_user_are_the_callers() -> None:
    image = dataclasses.replace(IMAGE, cuda="cpu", user=RunUser(name="work", uid=1101, gid=1101))
    body = trainingjob.training_job_body(image, digest=DIGEST, flavor_id="modelarts.vm.cpu.2u", node_count=2,
                                         code_dir="obs://bucket/verify/code")
    assert body["spec"]["resource"] == {"flavor_id": "modelarts.vm.cpu.2u", "node_count": 2}
    assert body["algorithm"]["code_dir"] == "obs://bucket/verify/code/"
    assert body["algorithm"]["command"].startswith("/home/work/miniconda3/bin/python ")
    assert not body["algorithm"]["command"].endswith("--require-gpu")  # a CPU entry, on a CPU flavour
    assert documented_problems(body) == [] and request_of(body) is not None
    long = dataclasses.replace(IMAGE, id="x" * 100, repository="r" * 200)
    long_body = trainingjob.training_job_body(long, digest=DIGEST)
    assert len(long_body["metadata"]["name"]) == 64 and documented_problems(long_body) == []
