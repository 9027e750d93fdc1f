"""A ready ModelArts training-job body (v2 API) for each pushed image: submit it to verify the image on ModelArts.

    POST https://modelarts.<region>.myhuaweicloud.com/v2/{project_id}/training-jobs   (body: training_job_body())

What this relies on (Huawei Cloud API reference, "Creating a Training Job", POST /v2/{project_id}/training-jobs,
support.huaweicloud.com/api-modelarts/CreateTrainingJob.html, and the OTC copy of the same page):
- top level: `kind` ("job", mandatory), `metadata` (JobMetadata: `name` mandatory, 1-64 of letters, digits, `_`,
  `-`; `description` 0-256 characters), `algorithm` (JobAlgorithm: "code_dir+boot_file: the code directory and
  boot file of the training job are used"), `spec` (mandatory unless `tasks` is given);
- a custom image is named in `algorithm.engine.image_url` (the SWR image), and the container's start command in
  `algorithm.command` (the console's "Boot Command" for custom images; the v1 API called them user_image_url
  and user_command);
- `spec.resource.flavor_id` and `spec.resource.node_count`.

UNCERTAIN (not confirmed in the pages found; check against API Explorer before relying on them):
- `algorithm.engine.run_user` as the uid the container runs as (the console's "user ID"; the ma-cli calls it
  --uid, default 1000);
- whether `image_url` may be digest-pinned (`repo@sha256:...`): ModelArts documents `swr-host/org/repo:tag`;
  the tag is in `metadata.description` to fall back on;
- `algorithm.local_code_dir` / `working_dir` (where OBS code lands: ${MA_JOB_DIR}/code) and the flavor ids
  (`modelarts.vm.cpu.8u`, `modelarts.vm.gpu.v100`, region-dependent: list them with GET /v2/{project_id}/
  training-job-flavors).
Placeholders in angle brackets (<bucket>) are for the user to fill in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modelarts_images.contract import BOOT_COMMAND, CODE_DIR, MA_JOB_DIR, MA_UID
from modelarts_images.model import ImageSpec
from modelarts_images.shared.files import write_atomic

CPU_FLAVOR = "modelarts.vm.cpu.8u"  # UNCERTAIN: region-dependent
GPU_FLAVOR = "modelarts.vm.gpu.v100"  # UNCERTAIN: region-dependent
CODE_DIR_PLACEHOLDER = "obs://<bucket>/<path>/code/"  # upload verify/pytorch-verification.py here
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def pinned_reference(image: ImageSpec, digest: str) -> str:
    """registry/organization/repository@sha256:... : the exact image that was pushed and verified."""
    return f"{image.registry}/{image.organization}/{image.repository}@{digest}"


def job_name(image: ImageSpec) -> str:
    """A valid job name (1-64 of letters, digits, _ and -) from the cell id."""
    return (_NAME.sub("-", f"verify-{image.id}").strip("-") or "verify")[:64]


def training_job_body(image: ImageSpec, *, digest: str, flavor_id: str | None = None, node_count: int = 1,
                      code_dir: str = CODE_DIR_PLACEHOLDER) -> dict[str, Any]:
    """The v2 training-jobs body that runs the verification script in the pushed image as ModelArts would."""
    return {
        "kind": "job",
        "metadata": {
            "name": job_name(image),
            "description": f"Verify {image.reference} (PyTorch {image.torch}, {image.variant}, Python {image.python})",
        },
        "algorithm": {
            "code_dir": code_dir,
            "command": BOOT_COMMAND,  # ModelArts expands ${MA_JOB_DIR}; runs without a shell profile
            "local_code_dir": MA_JOB_DIR,  # UNCERTAIN: where code_dir is downloaded (its last level: code)
            "working_dir": CODE_DIR,  # UNCERTAIN
            "engine": {
                "image_url": pinned_reference(image, digest),
                "run_user": str(MA_UID),  # UNCERTAIN: field name; ModelArts runs custom images as uid 1000
            },
            "parameters": [],
            "environments": {"PYTHONUNBUFFERED": "1"},
        },
        "spec": {
            "resource": {
                "flavor_id": flavor_id or (CPU_FLAVOR if image.is_cpu else GPU_FLAVOR),
                "node_count": node_count,
            },
        },
    }


def write_body(reports_dir: Path, image_id: str, body: dict[str, Any]) -> Path:
    """<reports_dir>/trainingjob/<id>.json, written atomically; WriteError naming it when it cannot be."""
    path = reports_dir / "trainingjob" / f"{image_id}.json"
    return write_atomic(path, json.dumps(body, indent=2) + "\n", what="training-job body")
