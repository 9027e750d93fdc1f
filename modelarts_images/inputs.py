"""What decides an image, each input hashed on its own, so a rerun can say which one changed.

A cell's input hash covers the build context template (context/), the build arguments and target, the sha256 of
every artifact fetch resolved (installer, wheels, dependency wheels, the stack's files), the stack as written, the
verification script and probes (verify/), the backend and the steps asked for (device, push, extra tags). The
same hash without the push steps is the image's label INPUTS_LABEL, set by every build (`inv build` and the
matrix alike): a cell whose tag in the registry carries it is unchanged there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelarts_images.build.builder import build_inputs
from modelarts_images.model import FetchedImage, ImageSpec
from modelarts_images.options import BuildOptions, DeviceChoice
from modelarts_images.shared import redact


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the relative names and contents of every file under root (sorted); empty tree: its name."""
    digest = hashlib.sha256()
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Steps:
    """What the matrix is asked to do with each cell, as far as it decides whether a success still counts."""

    build: BuildOptions
    device: DeviceChoice
    push: bool
    extra_tags: tuple[str, ...] = ()
    platform: bool = False  # verified on ModelArts before its release tag is written
    nodes: int | None = None  # --nodes (None: the entry's verify.nodes)
    distributed: tuple[str, ...] = ()  # how a distributed run starts: launcher, processes per node, port, bound


def cell_inputs(fetched: FetchedImage, steps: Steps, *, context_digest: str, verify_digest: str) -> dict[str, str]:
    """Each input of a cell, hashed on its own (so a rerun can say which one changed)."""
    image = fetched.image
    inputs = build_inputs(fetched, steps.build)
    return {
        "dockerfile": context_digest,
        "build-args": _digest({
            "reference": inputs.reference, "hermetic": inputs.hermetic,
            "args": inputs.build_args,
            # the index itself decides what a non-hermetic build installs; credentials only as part of a hash
            "pip_index": hashlib.sha256(image.pip_index.encode("utf-8")).hexdigest(),
            "pip_index_shown": redact.without_credentials(image.pip_index),
        }),
        # by content only, in a fixed order: a closure fresh from the resolver and the same one read back from
        # versions.lock may list (and spell) the files differently
        "artifacts": _digest({"installer": fetched.installer.sha256,
                              "wheels": sorted(item.sha256 for item in fetched.wheels),
                              "closure": None if fetched.closure is None else sorted(
                                  item.sha256 for item in fetched.closure),
                              # only when there are some: a cell without a stack keeps the hash it had before
                              **({"stack": sorted(item.sha256 for item in (*fetched.stack, *fetched.build_deps))}
                                 if fetched.stack else {}),
                              # what installed the wheels shapes the layers too (uv writes no INSTALLER file)
                              **({"tools": sorted(item.sha256 for item in fetched.tools)} if fetched.tools else {})}),
        **({"stack": _stack_digest(image)} if not image.stack.empty else {}),
        "verify-script": verify_digest,
        # the backend decides the Dockerfile's target, and the stack's variables add a stage to it
        "backend": _digest({"backend": steps.build.backend, "target": inputs.target}),
        # the node count and how the workers start: a single-node cell keeps the hash it had before
        "device": _digest({"device": steps.device, **({"nodes": nodes, "start": steps.distributed}
                                                      if (nodes := steps.nodes or image.nodes) > 1 else {})}),
        # what the cell does after verifying: not part of what its image is (REGISTRY_PARTS)
        # (the platform only when asked: a cell that never asked keeps the hash it had before)
        "publish": _digest({"push": steps.push, "extra_tags": steps.extra_tags,
                            **({"platform": "modelarts"} if steps.platform else {})}),
    }


def _stack_digest(image: ImageSpec) -> str:
    """What the stack asks for beyond its files: requirements as written, environment, and the check scripts."""
    stack = image.stack
    return _digest({"requirements": [(r.text, r.hashes) for r in stack.requirements], "env": stack.env,
                    "apt": stack.apt_packages, "from_source": stack.build_from_source,
                    "checks": [(check.name, hashlib.sha256(check.read_bytes()).hexdigest()) for check in stack.checks]})


def cell_hash(parts: Mapping[str, str]) -> str:
    return _digest(dict(parts))


# The label every image the matrix builds carries: the hash of the inputs that decide the image and its
# verification (not whether it is pushed), so a cell finds its image in the registry unchanged from any runner.
INPUTS_LABEL = "modelarts-images.inputs"
_NOT_OF_THE_IMAGE = ("publish",)


def image_hash(parts: Mapping[str, str]) -> str:
    return _digest({name: value for name, value in parts.items() if name not in _NOT_OF_THE_IMAGE})


def changed_inputs(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str]:
    """Names of the inputs that differ (all of them when nothing was recorded)."""
    if not old:
        return sorted(new)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
