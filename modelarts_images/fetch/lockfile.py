"""versions.lock: the sha256 of every artifact, the derived wheels and the dependency closure, per image."""

from __future__ import annotations

import fcntl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelarts_images.errors import ConfigError
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.shared import yamlio
from modelarts_images.shared.files import write_atomic

HEADER = """\
# versions.lock: written by `inv lock`; do not edit by hand.
# For each image: the inputs it was resolved from, and the URL and sha256 of every artifact the build
# installs (installer, wheels, and the wheels they depend on). `inv fetch --locked` refuses anything else.
"""


@dataclass(frozen=True, kw_only=True)
class LockedImage:
    inputs: str  # what the entry asked for when it was locked; a different value means the entry is stale
    installer: Artifact
    wheels: tuple[Artifact, ...]
    closure: tuple[Artifact, ...] | None  # None: the closure could not be resolved for this image


def inputs_of(image: ImageSpec) -> str:
    """A readable summary of everything that decides what an image's artifacts are."""
    listed = " ".join(wheel.url for wheel in image.wheels) or "derived"
    packages = " ".join(f"{name}=={version}" for name, version in image.packages)
    return f"python {image.python}; {image.variant}; {packages}; base {image.base_image}; " \
           f"installer {image.installer.url}; wheels {listed}"


def _artifact(raw: Mapping[str, str], where: str) -> Artifact:
    try:
        return Artifact(url=str(raw["url"]), sha256=str(raw["sha256"]))
    except (KeyError, TypeError):
        raise ConfigError(f"versions.lock: {where}: needs url and sha256; run `inv lock` again") from None


def read(path: Path) -> dict[str, LockedImage]:
    if not path.exists():
        return {}
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); delete it and run `inv lock`") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        raw = yamlio.safe_load(text) or {"images": {}}
        entries = raw["images"]
        return {
            image_id: LockedImage(
                inputs=str(entry["inputs"]),
                installer=_artifact(entry["installer"], f"{image_id}.installer"),
                wheels=tuple(_artifact(w, f"{image_id}.wheels") for w in entry["wheels"]),
                closure=None if entry.get("closure") is None
                else tuple(_artifact(w, f"{image_id}.closure") for w in entry["closure"]),
            )
            for image_id, entry in entries.items()
        }
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path.name}: unreadable ({exc.__class__.__name__}); delete it and run `inv lock`") from None


def render(entries: Mapping[str, LockedImage]) -> str:
    def listed(artifacts: tuple[Artifact, ...]) -> list[dict[str, str | None]]:
        return [{"url": a.url, "sha256": a.sha256} for a in sorted(artifacts, key=lambda a: a.url)]

    body = {
        "images": {
            image_id: {
                "inputs": entry.inputs,
                "installer": {"url": entry.installer.url, "sha256": entry.installer.sha256},
                "wheels": listed(entry.wheels),
                "closure": None if entry.closure is None else listed(entry.closure),
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
    with guard.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        write(path, {**read(path), **changes})
