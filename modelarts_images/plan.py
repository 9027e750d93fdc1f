"""The plan: everything a build of an image will use, resolved from versions.yaml without any I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from . import compat
from .context import redacted
from .contract import CONDA_PREFIX
from .model import Artifact, ImageSpec

PYTORCH_DOWNLOADS = "https://download.pytorch.org/whl"
LABEL_PREFIX = "modelarts-images."
UNPINNED = "unpinned"


@dataclass(frozen=True, kw_only=True)
class WheelSource:
    """Where the wheels of an image without a 'wheels' list come from, and what is asked of it."""

    index_url: str
    requirements: tuple[str, ...]  # 'torch==1.8.1+cu102', ...


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    image: ImageSpec
    wheel_source: WheelSource | None  # None when versions.yaml lists the wheels
    build_args: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return (self.image.installer, *self.image.wheels)


def wheel_source(image: ImageSpec) -> WheelSource:
    """The PyTorch index (flat page for old releases, per-variant simple index otherwise) and pins."""
    release = compat.load_table()[image.torch]
    if release.index == "flat":
        index_url = f"{PYTORCH_DOWNLOADS}/torch_stable.html"
    else:
        index_url = f"{PYTORCH_DOWNLOADS}/{image.variant}"
    return WheelSource(
        index_url=index_url,
        requirements=tuple(f"{name}=={version}" for name, version in image.packages),
    )


def build_args(image: ImageSpec) -> tuple[tuple[str, str], ...]:
    """The build arguments; never the pip index, which pip.conf or a secret carries (arguments reach the history)."""
    return (
        ("BASE_IMAGE", image.base_image),
        ("INSTALLER", image.installer.filename),
        ("CONDA_PREFIX", CONDA_PREFIX),
        ("APT_MIRROR", image.apt_mirror),
        # CUDA wheels carry their own CUDA runtime; the variables tell the NVIDIA runtime to mount the driver.
        ("GPU_RUNTIME", "cpu" if image.is_cpu else "cuda"),
    )


def labels(image: ImageSpec) -> tuple[tuple[str, str], ...]:
    """OCI labels and the entry's own record: versions, base and every artifact (never a secret)."""
    pairs: list[tuple[str, str]] = [
        ("org.opencontainers.image.title", f"{image.repository}:{image.tag}"),
        ("org.opencontainers.image.version", image.tag),
        ("org.opencontainers.image.description",
         f"PyTorch {image.torch} ({image.variant}) on Python {image.python} for ModelArts training"),
        ("org.opencontainers.image.base.name", image.base_image),
        (f"{LABEL_PREFIX}id", image.id),
        (f"{LABEL_PREFIX}python", image.python),
        (f"{LABEL_PREFIX}cuda", image.cuda),
    ]
    pairs += [(f"{LABEL_PREFIX}{name}", version) for name, version in image.packages]
    pairs.append((f"{LABEL_PREFIX}installer", _describe(image.installer)))
    pairs += [(f"{LABEL_PREFIX}wheel.{wheel.filename}", _describe(wheel)) for wheel in image.wheels]
    return tuple(pairs)


def _describe(artifact: Artifact) -> str:
    return f"{artifact.url} sha256:{artifact.sha256 or UNPINNED}"


def make_plan(image: ImageSpec) -> ImagePlan:
    return ImagePlan(
        image=image,
        wheel_source=None if image.wheels else wheel_source(image),
        build_args=build_args(image),
        labels=labels(image),
    )


def as_json(plans: Sequence[ImagePlan]) -> str:
    def one(plan: ImagePlan) -> Mapping[str, object]:
        image = asdict(plan.image)
        return {
            "id": plan.image.id,
            "reference": plan.image.reference,
            **image,
            "pip_index": redacted(plan.image.pip_index) if plan.image.pip_index else plan.image.pip_index,
            "variant": plan.image.variant,
            "artifacts": [asdict(artifact) for artifact in plan.artifacts],
            "wheel_source": asdict(plan.wheel_source) if plan.wheel_source else None,
            "build_args": dict(plan.build_args),
            "labels": dict(plan.labels),
        }

    return json.dumps([one(plan) for plan in plans], indent=2)


def as_text(plans: Sequence[ImagePlan]) -> str:
    blocks = []
    for plan in plans:
        image = plan.image
        rows: list[tuple[str, str]] = [
            ("image", image.reference),
            ("base", image.base_image),
            ("python", image.python),
            ("cuda", f"{image.cuda} ({image.variant})"),
            ("packages", ", ".join(f"{name} {version}" for name, version in image.packages)),
        ]
        for artifact in plan.artifacts:
            rows.append(("installer" if artifact is image.installer else "wheel", artifact.url))
            rows.append(("", f"sha256 {artifact.sha256 or UNPINNED + ' (versions.lock pins it)'}"))
        if plan.wheel_source is not None:
            rows.append(("wheels", f"from {plan.wheel_source.index_url}, resolved by fetch"))
            rows.append(("", " ".join(plan.wheel_source.requirements)))
        rows += [("build arg", f"{name}={value}") for name, value in plan.build_args]
        title = f"{image.id}{' (default)' if image.default else ''}"
        width = max(len(label) for label, _ in rows)
        blocks.append("\n".join([title, *(f"  {label:<{width}}  {value}" for label, value in rows)]))
    return "\n\n".join(blocks)
