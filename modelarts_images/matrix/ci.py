"""The matrix as CI systems take it: one job per cell, each on a runner the user chose for the cell's tag.

    nox -s matrix -- --list-json         {"include": [cell, ...]}: GitHub Actions' `matrix: ${{ fromJSON(...) }}`
    nox -s matrix -- --gitlab-pipeline   a GitLab child pipeline: one job per cell, extending `.modelarts-cell`,
                                         and `summary` (`.modelarts-summary`), which merges the cells' records

A cell is {"id", "tags", "gpu", "runner", "device"}: its tags are `cpu`, `cudaNN` (the CUDA major, as nox's -t
takes them) or `npu` (an Ascend image), then `aarch64` for an image of that architecture; `gpu` says the image
needs a GPU to be verified fully; `runner` is the list of runner labels invoke.yaml's `ci_runners` maps to the
first key it has of: `npu` (Ascend cells), `aarch64` (that architecture's cells: a runner of that machine builds
natively, any other through QEMU), the cell's tag, `gpu` (GPU cells) or `default` (unmapped: GitHub's
`ubuntu-latest`; on GitLab, no tags: any runner); `device` is what the job verifies on: `both` for a GPU cell on a
runner mapped by its tag or by `gpu`, `npu` for an Ascend cell on a runner mapped by `npu`, else `cpu`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelarts_images.model import NPU, X86_64, ImageSpec
from modelarts_images.options import DeviceChoice
from modelarts_images.paths import GITLAB_CELL_FILE

DEFAULT_RUNNER_KEY = "default"
GPU_RUNNER_KEY = "gpu"
# The templates the generated GitLab jobs extend (defined in paths.GITLAB_CELL_FILE, in the user's repository).
GITLAB_JOB_TEMPLATE = ".modelarts-cell"
GITLAB_SUMMARY_TEMPLATE = ".modelarts-summary"
GITHUB_DEFAULT_RUNNER = ("ubuntu-latest",)


def cell_tags(image: ImageSpec) -> list[str]:
    """`cpu`, `cudaNN` by the CUDA major or `npu`, and the architecture where it is not x86_64: what nox's -t and
    the runner mapping take."""
    return [image.accelerator.cell_tag, *([image.arch] if image.arch != X86_64 else [])]


def runner_keys(image: ImageSpec) -> list[str]:
    """The ci_runners keys that may place the cell, first match wins: an Ascend host for an Ascend cell, then a
    runner of the image's architecture, then the accelerator's own, then any GPU runner."""
    tags = cell_tags(image)
    first = [NPU] if image.is_npu else []
    arch = [image.arch] if image.arch != X86_64 else []
    gpu = [GPU_RUNNER_KEY] if not image.is_cpu else []
    return list(dict.fromkeys([*first, *arch, *tags, *gpu]))


@dataclass(frozen=True, kw_only=True)
class CiCell:
    id: str
    tags: tuple[str, ...]
    gpu: bool  # verifying it fully needs a GPU
    runner: tuple[str, ...]  # the runner labels its job asks for
    device: DeviceChoice  # what its job verifies on

    def to_json(self, *, default_runner: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"id": self.id, "tags": list(self.tags), "gpu": self.gpu, "runner": list(self.runner or default_runner),
                "device": self.device.value}


def ci_cells(images: Sequence[ImageSpec], runners: Mapping[str, tuple[str, ...]]) -> list[CiCell]:
    cells = []
    for image in images:
        gpu = not image.is_cpu
        chosen = next((key for key in runner_keys(image) if key in runners), DEFAULT_RUNNER_KEY)
        on_gpu_runner = gpu and chosen != DEFAULT_RUNNER_KEY
        on_npu_runner = image.is_npu and chosen == NPU
        device = DeviceChoice.BOTH if on_gpu_runner else DeviceChoice.NPU if on_npu_runner else DeviceChoice.CPU
        cells.append(CiCell(id=image.id, tags=tuple(cell_tags(image)), gpu=gpu, runner=runners.get(chosen, ()),
                            device=device))
    return cells


def github_matrix(cells: Sequence[CiCell]) -> dict[str, Any]:
    """What `strategy.matrix: ${{ fromJSON(needs.<job>.outputs.matrix) }}` takes: each cell is one `include`."""
    return {"include": [cell.to_json(default_runner=GITHUB_DEFAULT_RUNNER) for cell in cells]}


def gitlab_pipeline(cells: Sequence[CiCell], *, cell_file: str = GITLAB_CELL_FILE) -> dict[str, Any]:
    """A child pipeline (JSON is YAML): one job per cell, `cell <id>` (a job name cannot clash with a keyword),
    on runners with its labels, and a closing `summary` job that merges their records."""
    pipeline: dict[str, Any] = {"include": [{"local": cell_file}], "stages": ["cells", "summary"]}
    for cell in cells:
        job: dict[str, Any] = {"extends": GITLAB_JOB_TEMPLATE,
                               "variables": {"CELL": cell.id, "CELL_DEVICE": cell.device.value,
                                             "CELL_TAGS": " ".join(cell.tags)}}
        if cell.runner:
            job["tags"] = list(cell.runner)
        pipeline[gitlab_job(cell)] = job
    pipeline["summary"] = {"extends": GITLAB_SUMMARY_TEMPLATE,
                           "needs": [{"job": gitlab_job(cell), "artifacts": True} for cell in cells]}
    return pipeline


def gitlab_job(cell: CiCell) -> str:
    return f"cell {cell.id}"
