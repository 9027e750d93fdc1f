"""A ready ModelArts training-job body (v2 API) for each pushed image: submit it to verify the image on ModelArts.

    POST https://modelarts.<region>.myhuaweicloud.com/v2/{project_id}/training-jobs   (body: training_job_body())

The fields and their rules are those of the request models in Huawei Cloud's Python SDK (huaweicloudsdkmodelarts,
package huaweicloudsdkmodelarts.v1.model: Job, JobMetadata, JobAlgorithm, JobEngine, Spec, SpecResource), the
models of CreateTrainingJob (POST /v2/{project_id}/training-jobs); tests/unit/test_trainingjob.py builds the body
with those models whenever the SDK is installed (it is a dev dependency). What the body relies on:
- `kind` "job"; `metadata.name` 1-64 of letters, digits, `_`, `-`; `metadata.description` at most 256 characters;
- `algorithm.code_dir` must come with `algorithm.boot_file` (a file inside code_dir); both are the OBS folder
  the user uploads verify/ to, left as placeholders;
- `algorithm.command`: "the boot command of the custom image's container";
- `algorithm.engine.image_url`: the SWR image (JobEngine has no field for the user: ModelArts runs a custom image
  as its own training uid, which versions.yaml's `user:` must match);
- no `algorithm.local_code_dir`: it "must be a directory under /home" and may not be /home/ma-user,
  /home/ma-user/modelarts, /home/ma-user/modelarts-dev, /home/ma-user/infer or anything below the last three.
  Left out, the code lands in ${MA_JOB_DIR}/<last level of code_dir>, which is where the boot command looks;
- `algorithm.environments`: keys of letters, digits and `_`, not starting with a digit, at most 100 pairs;
- `spec.resource.flavor_id` and `node_count`.

UNCERTAIN (not confirmed in the SDK or the pages found; check against API Explorer before relying on them):
- whether `image_url` may be digest-pinned (`repo@sha256:...`): ModelArts documents `swr-host/org/repo:tag`;
  the tag is in `metadata.description` to fall back on;
- the public-pool flavor ids (`modelarts.vm.cpu.8u`, `modelarts.vm.gpu.v100`; region-dependent: list them with
  GET /v2/{project_id}/training-job-flavors).
Placeholders in angle brackets (<bucket>) are for the user to fill in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modelarts_images.contract import REQUIRE_GPU, REQUIRE_NPU, SCRIPT_NAME
from modelarts_images.model import ImageSpec
from modelarts_images.shared.files import write_atomic

CPU_FLAVOR = "modelarts.vm.cpu.8u"  # UNCERTAIN: region-dependent
GPU_FLAVOR = "modelarts.vm.gpu.v100"  # UNCERTAIN: region-dependent
NPU_FLAVOR = "modelarts.kat1.xlarge"  # UNCERTAIN: region-dependent (one Ascend chip); --on modelarts asks the region
# The OBS folder holding verify/pytorch-verification.py; its last level (`code`) is the folder the boot
# command finds under ${MA_JOB_DIR}.
CODE_DIR_PLACEHOLDER = "obs://<bucket>/<path>/code/"
MAX_DESCRIPTION = 256
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def pinned_reference(image: ImageSpec, digest: str) -> str:
    """registry/organization/repository@sha256:... : the exact image that was pushed and verified."""
    return f"{image.registry}/{image.organization}/{image.repository}@{digest}"


def job_name(image: ImageSpec) -> str:
    """A valid job name (1-64 of letters, digits, _ and -) from the cell id."""
    return (_NAME.sub("-", f"verify-{image.id}").strip("-") or "verify")[:64]


def training_job_body(image: ImageSpec, *, digest: str, flavor_id: str | None = None, node_count: int = 1,
                      code_dir: str = CODE_DIR_PLACEHOLDER, gpu: bool | None = None, image_url: str | None = None,
                      name: str | None = None, command: str | None = None, npu: bool | None = None,
                      ) -> dict[str, Any]:
    """The v2 training-jobs body that runs the verification script in the pushed image as ModelArts would, the
    boot command as the local verification runs it (with --require-gpu on a GPU flavour; `gpu` None: a CUDA
    entry's image runs on one). `image_url`: the image as the job names it (by default pinned to `digest`);
    `command`: a distributed job's (verify.distributed.platform_command), in place of the single-node one; `npu`:
    on an Ascend flavour, with --require-npu (None: an Ascend entry's image runs on one)."""
    gpu = not image.is_cpu if gpu is None else gpu
    npu = image.is_npu if npu is None else npu
    flag = f" {REQUIRE_GPU}" if gpu else f" {REQUIRE_NPU}" if npu else ""
    code_dir = code_dir.rstrip("/") + "/"
    description = (f"Verify {image.reference} {digest} (PyTorch {image.torch}, {image.variant}, Python "
                   f"{image.python})")
    return {
        "kind": "job",
        "metadata": {
            "name": name or job_name(image),
            "description": description[:MAX_DESCRIPTION],
        },
        "algorithm": {
            "code_dir": code_dir,
            "boot_file": f"{code_dir}{SCRIPT_NAME}",
            # ModelArts expands ${MA_JOB_DIR} and runs the command without a shell profile
            "command": command or image.user.boot_command + flag,
            "engine": {"image_url": image_url or pinned_reference(image, digest)},
            "parameters": [],
            "environments": {"PYTHONUNBUFFERED": "1"},
        },
        "spec": {
            "resource": {
                "flavor_id": flavor_id or (GPU_FLAVOR if gpu else NPU_FLAVOR if npu else CPU_FLAVOR),
                "node_count": node_count,
            },
        },
    }


def write_body(reports_dir: Path, image_id: str, body: dict[str, Any]) -> Path:
    """<reports_dir>/trainingjob/<id>.json, written atomically; WriteError naming it when it cannot be."""
    path = reports_dir / "trainingjob" / f"{image_id}.json"
    return write_atomic(path, json.dumps(body, indent=2) + "\n", what="training-job body")
