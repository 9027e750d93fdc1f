"""versions.lock: the sha256 of every artifact, the derived wheels and the dependency closure, per image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelarts_images.config.versions import artifact_url_problem, text_problems
from modelarts_images.errors import ConfigError
from modelarts_images.fetch.cache import locked
from modelarts_images.model import DEFAULT_SOURCE_DATE_EPOCH, X86_64, Artifact, ImageSpec, sha256_problem
from modelarts_images.shared import redact, yamlio
from modelarts_images.shared.files import write_atomic

HEADER = """\
# versions.lock: written by `inv lock`; do not edit by hand.
# For each image: the inputs it was resolved from, and the URL and sha256 of every artifact the build
# installs (installer, wheels, the wheels they depend on, the stack's files) or installs them with (tools: uv),
# with its size in bytes, and the time (SOURCE_DATE_EPOCH) every file of the image's own layers carries, so a
# rebuild gives the same layers.
# `inv fetch --locked` refuses anything else.
"""


@dataclass(frozen=True, kw_only=True)
class LockedImage:
    inputs: str  # what the entry asked for when it was locked; a different value means the entry is stale
    installer: Artifact
    wheels: tuple[Artifact, ...]
    closure: tuple[Artifact, ...] | None  # None: the closure could not be resolved for this image
    stack: tuple[Artifact, ...] | None = None  # the stack's wheels and sdists; None: none resolved (or none asked)
    build_deps: tuple[Artifact, ...] = ()  # the wheels building the stack's sdists needs
    # The wheel of the installer the build runs for the dependency wheels (uv); () where none serves the image's
    # Python (pip installs them), None: not looked for yet (an entry locked before there were tools).
    tools: tuple[Artifact, ...] | None = None
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH  # the time of every file of the image's own layers

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        """Every file the entry pins: installer, wheels, closure, stack, build dependencies, tools."""
        return (self.installer, *self.wheels, *(self.closure or ()), *(self.stack or ()), *self.build_deps,
                *(self.tools or ()))


def inputs_of(image: ImageSpec) -> str:
    """A readable summary of everything that decides what an image's artifacts are."""
    listed = " ".join(wheel.url for wheel in image.wheels) or "derived"
    packages = " ".join(f"{name}=={version}" for name, version in image.packages)
    inputs = f"python {image.python}; {image.variant}; {packages}; base {image.base_image}; " \
             f"installer {image.installer.url}; wheels {listed}"
    if image.arch != X86_64:  # only then: the entries locked before the architecture was an input keep their inputs
        inputs += f"; arch {image.arch}"
    stack = image.stack
    if stack.requirements:  # only then: an entry without a stack keeps the inputs it was locked with
        requirements = " ".join(requirement.text + "".join(f" --hash=sha256:{digest}" for digest in requirement.hashes)
                                for requirement in stack.requirements)
        inputs += f"; stack {requirements}"
        if stack.build_from_source:
            inputs += f"; from source {' '.join(stack.build_from_source)}"
    return inputs


class _MalformedError(Exception):
    """A value of versions.lock that is not what `inv lock` writes: its key path and what is wrong."""


def _artifact(raw: object, where: str) -> Artifact:
    """One artifact, checked: versions.lock is input from anyone who can open a pull request, and its sha256
    and file names become paths in the cache."""
    if not isinstance(raw, dict):
        raise _MalformedError(f"{where}: must be a mapping with url and sha256")
    url, sha256, size = raw.get("url"), raw.get("sha256"), raw.get("size")
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
        raise _MalformedError(f"{where}.url: must be an http://, https:// or file:// URL "
                              f"(got {redact.url(str(url))!r})")
    problem = artifact_url_problem(url)
    if problem:
        raise _MalformedError(f"{where}.url: {problem}")
    problem = sha256_problem(sha256)
    if problem:
        raise _MalformedError(f"{where}.sha256: {problem}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _MalformedError(f"{where}.size: must be a number of bytes (got {size!r})")
    return Artifact(url=url, sha256=sha256, size=size)


def _artifacts(raw: object, where: str) -> tuple[Artifact, ...]:
    if not isinstance(raw, list):
        raise _MalformedError(f"{where}: must be a list")
    return tuple(_artifact(item, f"{where}[{index}]") for index, item in enumerate(raw))


def _entry(image_id: object, raw: object) -> LockedImage:
    if not isinstance(image_id, str) or text_problems(image_id):
        raise _MalformedError(f"{image_id!r}: not an image id")
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), str):
        raise _MalformedError(f"{image_id}: must be a mapping with inputs, installer, wheels and closure")
    closure, stack, tools = raw.get("closure"), raw.get("stack"), raw.get("tools")
    epoch = raw.get("source_date_epoch", DEFAULT_SOURCE_DATE_EPOCH)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 1 << 32:
        raise _MalformedError(f"{image_id}.source_date_epoch: must be seconds since 1970 (got {epoch!r})")
    return LockedImage(
        inputs=raw["inputs"],
        installer=_artifact(raw.get("installer"), f"{image_id}.installer"),
        wheels=_artifacts(raw.get("wheels"), f"{image_id}.wheels"),
        closure=None if closure is None else _artifacts(closure, f"{image_id}.closure"),
        stack=None if stack is None else _artifacts(stack, f"{image_id}.stack"),
        build_deps=_artifacts(raw.get("build_deps", []), f"{image_id}.build_deps"),
        tools=None if tools is None else _artifacts(tools, f"{image_id}.tools"),
        source_date_epoch=epoch,
    )


def read(path: Path) -> dict[str, LockedImage]:
    """The lock's entries, every value checked; ConfigError naming the key (and `inv lock` as the way out)."""
    if not path.exists():
        return {}
    try:
        document = yamlio.read(path)
    except ConfigError as error:
        raise ConfigError(f"{error}; delete it and run `inv lock`") from None
    try:
        if document is None:
            return {}
        if not isinstance(document, dict) or not isinstance(document.get("images"), dict):
            raise _MalformedError("must be a mapping with an 'images:' mapping")
        return {str(image_id): _entry(image_id, entry) for image_id, entry in document["images"].items()}
    except _MalformedError as problem:
        raise ConfigError(f"{path.name}: {problem}; delete the entry (or the file) and run `inv lock`") from None


def render(entries: Mapping[str, LockedImage]) -> str:
    def one(artifact: Artifact) -> dict[str, str | int | None]:
        return {"url": artifact.url, "sha256": artifact.sha256,
                **({"size": artifact.size} if artifact.size is not None else {})}

    def listed(artifacts: tuple[Artifact, ...]) -> list[dict[str, str | int | None]]:
        return [one(artifact) for artifact in sorted(artifacts, key=lambda a: a.url)]

    body = {
        "images": {
            image_id: {
                "inputs": entry.inputs,
                "installer": one(entry.installer),
                "wheels": listed(entry.wheels),
                "closure": None if entry.closure is None else listed(entry.closure),
                **({"stack": listed(entry.stack)} if entry.stack is not None else {}),
                **({"build_deps": listed(entry.build_deps)} if entry.build_deps else {}),
                **({"tools": listed(entry.tools)} if entry.tools is not None else {}),
                "source_date_epoch": entry.source_date_epoch,
            }
            for image_id, entry in sorted(entries.items())
        }
    }
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=200)


def write(path: Path, entries: Mapping[str, LockedImage]) -> None:
    """Replace the file atomically, so an interrupted run never leaves half a lock behind."""
    write_atomic(path, render(entries), what="lock file")


def update(path: Path, changes: Mapping[str, LockedImage], *, guard: Path) -> None:
    """Merge `changes` into the file under an flock on `guard`, so concurrent fetches keep each other's entries."""
    guard.parent.mkdir(parents=True, exist_ok=True)
    with locked(guard):
        write(path, {**read(path), **changes})
