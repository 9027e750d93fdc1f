"""The matrix's pure parts: which shard a cell belongs to, what its inputs are, and the record it leaves.

Shardable: `--shard K/N` (1 <= K <= N) keeps the cells whose position in the versions file, counted from 0, is
K-1 modulo N: every cell is in exactly one shard, and the split depends only on the file's order. The position is
the one in the whole file, before --only narrows it, so a cell lands in the same shard whether it runs alone (as
in nox's per-cell sessions) or with the others.

Resumable: a cell whose input hash (modelarts_images.inputs) equals that of its last success is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelarts_images.engine.api import Layer
from modelarts_images.errors import ConfigError
from modelarts_images.model import ImageSpec
from modelarts_images.shared import redact
from modelarts_images.shared.choices import Choice
from modelarts_images.verify.manifest import Manifest
from modelarts_images.verify.report import ImageReport

# --------------------------------------------------------------------------------------------------------------
# Shards


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N), 1 <= K <= N; None for no sharding (no --shard at all: `--shard=` is a mistake, often an
    unset CI variable, and would silently run every cell)."""
    if text is None:
        return None
    head, slash, tail = text.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index = count = 0
    if not slash or count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard: {redact.excerpt(text)} must be K/N with 1 <= K <= N, e.g. --shard 2/3")
    return index, count


def in_shard(position: int, spec: tuple[int, int] | None) -> bool:
    """Whether the item at `position` (from 0) belongs to shard K of N (every item does without a spec)."""
    if spec is None:
        return True
    index, count = spec
    return position % count == index - 1


def shard_cells(images: Sequence[ImageSpec], spec: tuple[int, int] | None, *,
                file_ids: Sequence[str]) -> list[ImageSpec]:
    """The selected images that belong to shard K of N by their position among `file_ids` (every id of the
    versions file, in its order), not in the selection: `--only b --shard 2/2` must agree with `--shard 2/2`."""
    positions = {cell_id: position for position, cell_id in enumerate(file_ids)}
    missing = [image.id for image in images if image.id not in positions]
    if missing:
        raise ConfigError(f"--shard: {', '.join(missing)} not among the versions file's cells")
    return [image for image in images if in_shard(positions[image.id], spec)]


# --------------------------------------------------------------------------------------------------------------
# The record a cell leaves


class CellStatus(Choice):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # inputs unchanged since its last success, image still in the engine


@dataclass(frozen=True, kw_only=True)
class CellRecord:
    """What one cell did; kept in <reports_dir>/matrix/<id>.json, merged into matrix.json and matrix.md."""

    id: str
    reference: str
    status: CellStatus
    python: str
    cuda: str
    torch: str
    reason: str = ""
    hash: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    changed: tuple[str, ...] = ()  # inputs that differ from the last success
    durations: Mapping[str, float] = field(default_factory=dict)  # seconds per step: fetch, build, verify, push
    image_id: str = ""
    size: int | None = None
    layers: tuple[Layer, ...] = ()  # every layer of the image, oldest first, with its diff id
    steps_ran: tuple[str, ...] = ()  # the build's RUN, COPY and ADD steps that ran
    steps_cached: tuple[str, ...] = ()  # and those taken from a cache
    layers_pulled: tuple[str, ...] = ()  # layers (compressed digests) taken from the registry's cache
    verification: ImageReport | None = None
    manifest: Manifest = field(default_factory=dict)
    digest: str | None = None  # when pushed
    pushed: str | None = None  # the reference pushed (with the platform verification: the release tag)
    platform: ImageReport | None = None  # the verification as training jobs on ModelArts (--on modelarts)
    staged: str | None = None  # the tag pushed and verified on the platform before the release tag
    training_job: str | None = None  # path of the ModelArts training-job body
    finished: str = ""  # ISO 8601, UTC
    run: str = ""  # the run (nox invocation) that wrote it

    @classmethod
    def start(cls, image: ImageSpec) -> CellRecord:
        return cls(id=image.id, reference=image.reference, status=CellStatus.FAILED, python=image.python,
                   cuda=image.cuda, torch=image.torch)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "reference": self.reference, "status": self.status.value, "reason": self.reason,
            "hash": self.hash, "inputs": dict(self.inputs), "changed": list(self.changed),
            "durations": dict(self.durations),
            "image_id": self.image_id, "size": self.size,
            "layers": [{"size": layer.size, "step": layer.step, "from_base": layer.from_base, "diff_id": layer.diff_id}
                       for layer in self.layers],
            "steps_ran": list(self.steps_ran), "steps_cached": list(self.steps_cached),
            "layers_pulled": list(self.layers_pulled),
            "python": self.python, "cuda": self.cuda, "torch": self.torch,
            "verification": self.verification.to_json() if self.verification is not None else None,
            "manifest": {section: list(lines) for section, lines in self.manifest.items()},
            "digest": self.digest, "pushed": self.pushed, "training_job": self.training_job,
            **({"platform": self.platform.to_json(), "staged": self.staged} if self.platform is not None else {}),
            "finished": self.finished, "run": self.run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellRecord:
        """A record to_json() wrote; KeyError, TypeError or ValueError when it is not one."""
        verification = data.get("verification")
        return cls(
            id=str(data["id"]), reference=str(data["reference"]), status=CellStatus(data["status"]),
            python=str(data.get("python", "")), cuda=str(data.get("cuda", "")), torch=str(data.get("torch", "")),
            reason=str(data.get("reason", "")), hash=str(data.get("hash", "")),
            inputs={str(k): str(v) for k, v in (data.get("inputs") or {}).items()},
            changed=tuple(str(name) for name in data.get("changed") or ()),
            durations={str(k): float(v) for k, v in (data.get("durations") or {}).items()},
            image_id=str(data.get("image_id", "")), size=data.get("size"),
            layers=tuple(Layer(size=int(layer["size"]), step=str(layer["step"]), from_base=bool(layer["from_base"]),
                               diff_id=str(layer.get("diff_id", ""))) for layer in data.get("layers") or ()),
            steps_ran=tuple(str(step) for step in data.get("steps_ran") or ()),
            steps_cached=tuple(str(step) for step in data.get("steps_cached") or ()),
            layers_pulled=tuple(str(digest) for digest in data.get("layers_pulled") or ()),
            verification=ImageReport.from_json(verification) if verification else None,
            manifest={str(k): tuple(str(line) for line in v) for k, v in (data.get("manifest") or {}).items()},
            digest=data.get("digest"), pushed=data.get("pushed"), training_job=data.get("training_job"),
            platform=ImageReport.from_json(data["platform"]) if data.get("platform") else None,
            staged=data.get("staged"),
            finished=str(data.get("finished", "")), run=str(data.get("run", "")),
        )
