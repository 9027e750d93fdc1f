"""The plan: everything a build of an image will use, resolved from versions.yaml without any I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from modelarts_images.config import compat
from modelarts_images.config.wheels import TORCH_NPU
from modelarts_images.contract import NPU_GROUP
from modelarts_images.model import DEFAULT_SOURCE_DATE_EPOCH, X86_64, Artifact, FetchedImage, ImageSpec
from modelarts_images.shared import redact

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
        requirements=tuple(f"{name}=={version}" for name, version in image.packages if name != TORCH_NPU),
    )


def build_args(image: ImageSpec, *, base_image: str | None = None, hermetic: bool | None = None,
               source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH) -> tuple[tuple[str, str], ...]:
    """The build arguments, decided here only; never the pip index's credentials (arguments reach the history).

    `base_image` is the base actually used (default: the entry's); `hermetic` whether the dependency wheels were
    fetched, None before fetch knows.
    """
    args = [
        ("BASE_IMAGE", base_image or image.base_image),
        ("INSTALLER", image.installer.filename),
        ("CONDA_PREFIX", image.user.conda_prefix),
        ("MA_USER", image.user.name),
        ("MA_UID", str(image.user.uid)),
        ("MA_GID", str(image.user.gid)),
        ("SOURCE_DATE_EPOCH", str(source_date_epoch)),
        ("APT_MIRROR", image.apt_mirror),
        # CUDA wheels carry their own CUDA runtime; the variables tell the NVIDIA runtime to mount the driver.
        ("GPU_RUNTIME", image.accelerator.runtime),
    ]
    if image.ascend is not None:
        # The host's NPU devices belong to this group: the training user joins it (context/user-layer.sh).
        args += [("NPU_GROUP", NPU_GROUP.name), ("NPU_GID", str(NPU_GROUP.gid))]
    if hermetic is not None:
        args.append(("HERMETIC", "1" if hermetic else "0"))
    if hermetic is False and redact.has_credentials(image.pip_index):
        # Part of the cache key of the secret step, so a change of index rebuilds it (the secret is not).
        args.append(("INDEX_WITHOUT_CREDENTIALS", redact.without_credentials(image.pip_index)))
    stack = image.stack
    if stack.apt_packages:
        args.append(("APT_PACKAGES", " ".join(stack.apt_packages)))
    if stack.build_from_source:
        args.append(("FROM_SOURCE", "1"))
    return tuple(args)


def labels(image: ImageSpec, *, base_image: str | None = None, fetched: FetchedImage | None = None,
           ) -> tuple[tuple[str, str], ...]:
    """OCI labels and the entry's own record: versions, base and every artifact with its sha256 (never a secret).

    Before fetch (`fetched` None) the artifacts are the entry's own, perhaps unpinned; after it, what fetch
    resolved, the dependency wheels and whether the build is hermetic.
    """
    pairs: list[tuple[str, str]] = [
        ("org.opencontainers.image.title", f"{image.repository}:{image.tag}"),
        ("org.opencontainers.image.version", image.tag),
        ("org.opencontainers.image.description", _description(image)),
        ("org.opencontainers.image.base.name", base_image or image.base_image),
        (f"{LABEL_PREFIX}id", image.id),
        (f"{LABEL_PREFIX}python", image.python),
        (f"{LABEL_PREFIX}cuda", image.cuda),
        (f"{LABEL_PREFIX}arch", image.arch),
        (f"{LABEL_PREFIX}user", f"{image.user.name} {image.user.spec}"),
    ]
    if image.ascend is not None:
        pairs += [(f"{LABEL_PREFIX}cann", image.ascend.cann), (f"{LABEL_PREFIX}npu", image.ascend.chip)]
    pairs += [(f"{LABEL_PREFIX}{name}", version) for name, version in image.packages]
    pairs += _stack_labels(image)
    if fetched is None:
        pairs.append((f"{LABEL_PREFIX}installer", _describe(image.installer.url, image.installer.sha256)))
        pairs += [(f"{LABEL_PREFIX}wheel.{wheel.filename}", _describe(wheel.url, wheel.sha256))
                  for wheel in image.wheels]
        return tuple(pairs)
    pairs.append((f"{LABEL_PREFIX}installer", _describe(fetched.installer.url, fetched.installer.sha256)))
    pairs += [(f"{LABEL_PREFIX}wheel.{wheel.filename}", _describe(wheel.url, wheel.sha256))
              for wheel in fetched.wheels]
    pairs += [(f"{LABEL_PREFIX}dependency.{dep.filename}", _describe(dep.url, dep.sha256))
              for dep in fetched.closure or ()]
    pairs += [(f"{LABEL_PREFIX}stack.file.{item.filename}", _describe(item.url, item.sha256)) for item in fetched.stack]
    pairs += [(f"{LABEL_PREFIX}tool.{tool.filename}", _describe(tool.url, tool.sha256)) for tool in fetched.tools]
    hermetic = fetched.closure is not None
    pairs.append((f"{LABEL_PREFIX}hermetic", "true" if hermetic else "false"))
    if not hermetic:
        pairs.append((f"{LABEL_PREFIX}pip-index", redact.without_credentials(image.pip_index)))
    return tuple(pairs)


def _description(image: ImageSpec) -> str:
    """The OCI description: torch and its build, torch_npu on an Ascend image, the machine when it is not x86_64."""
    build = image.variant if image.ascend is None else (f"torch_npu {image.ascend.torch_npu}, "
                                                         f"{image.accelerator.described}")
    machine = "" if image.arch == X86_64 else f", {image.arch}"
    return f"PyTorch {image.torch} ({build}{machine}) on Python {image.python} for ModelArts training"


def _stack_labels(image: ImageSpec) -> list[tuple[str, str]]:
    """The stack as the entry asked for it (its files, once fetched, are labelled one by one)."""
    stack = image.stack
    listed = [("stack.requirements", ", ".join(requirement.text for requirement in stack.requirements)),
              ("stack.apt-packages", " ".join(stack.apt_packages)),
              ("stack.env", " ".join(name for name, _ in stack.env)),
              ("stack.checks", " ".join(check.name for check in stack.checks)),
              ("stack.build-from-source", " ".join(stack.build_from_source))]
    return [(f"{LABEL_PREFIX}{name}", value) for name, value in listed if value]


def _describe(url: str, sha256: str | None) -> str:
    return f"{redact.without_credentials(url)} sha256:{sha256 or UNPINNED}"


def make_plan(image: ImageSpec) -> ImagePlan:
    return ImagePlan(
        image=image,
        wheel_source=None if image.wheels else wheel_source(image),
        build_args=build_args(image),
        labels=labels(image),
    )


def as_json(plans: Sequence[ImagePlan]) -> str:
    def one(plan: ImagePlan) -> Mapping[str, object]:
        return {
            "id": plan.image.id,
            "reference": plan.image.reference,
            **asdict(plan.image),
            "variant": plan.image.variant,
            "artifacts": [asdict(artifact) for artifact in plan.artifacts],
            "wheel_source": asdict(plan.wheel_source) if plan.wheel_source else None,
            "build_args": dict(plan.build_args),
            "labels": dict(plan.labels),
        }

    return json.dumps(_masked([one(plan) for plan in plans]), indent=2)


def _masked(value: object) -> object:
    """Every text in a JSON-like value with URL credentials masked (pip_index, mirrors, artifact URLs)."""
    if isinstance(value, str):
        return redact.url(value)
    if isinstance(value, Mapping):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def _stack_rows(image: ImageSpec) -> list[tuple[str, str]]:
    stack = image.stack
    rows = [("stack", requirement.text + (" (hash-pinned)" if requirement.hashes else "")
             + (" (built from its sdist)" if requirement.name in stack.build_from_source else ""))
            for requirement in stack.requirements]
    if stack.requirements:
        rows.append(("", "resolved with the torch family by fetch; its files are pinned in versions.lock"))
    rows += [("apt", " ".join(stack.apt_packages))] if stack.apt_packages else []
    rows += [("env", f"{name}={value}") for name, value in stack.env]
    rows += [("check", str(check)) for check in stack.checks]
    return rows


def as_text(plans: Sequence[ImagePlan]) -> str:
    blocks = []
    for plan in plans:
        image = plan.image
        rows: list[tuple[str, str]] = [
            ("image", image.reference),
            ("base", image.base_image),
            ("python", image.python),
            ("platform", image.platform),
            *([("ascend", f"{image.accelerator.described}, torch_npu {image.ascend.torch_npu} (torch's {image.variant} "
                          "build)")] if image.ascend else [("cuda", f"{image.cuda} ({image.variant})")]),
            ("packages", ", ".join(f"{name} {version}" for name, version in image.packages)),
            ("user", f"{image.user.name} {image.user.spec}, conda at {image.user.conda_prefix}"),
        ]
        for artifact in plan.artifacts:
            rows.append(("installer" if artifact is image.installer else "wheel", redact.url(artifact.url)))
            rows.append(("", f"sha256 {artifact.sha256 or UNPINNED + ' (versions.lock pins it)'}"))
        if plan.wheel_source is not None:
            rows.append(("wheels", f"from {plan.wheel_source.index_url}, resolved by fetch"))
            rows.append(("", " ".join(plan.wheel_source.requirements)))
            if image.ascend is not None:
                rows.append(("", f"{TORCH_NPU}=={image.ascend.torch_npu} from the index pip uses (PyPI)"))
        rows += _stack_rows(image)
        rows += [("build arg", f"{name}={value}") for name, value in plan.build_args]
        title = f"{image.id}{' (default)' if image.default else ''}"
        width = max(len(label) for label, _ in rows)
        blocks.append("\n".join([title, *(f"  {label:<{width}}  {value}" for label, value in rows)]))
    return "\n\n".join(blocks)


def shown(images: Sequence[ImageSpec], *, in_json: bool) -> str:
    """What would be built for the images (`inv plan`), as text or JSON: nothing is fetched or built."""
    plans = [make_plan(image) for image in images]
    return as_json(plans) if in_json else as_text(plans)
