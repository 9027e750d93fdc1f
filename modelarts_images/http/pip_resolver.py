"""The wheels an image's torch wheels depend on, resolved by pip for the image's Python and platform.

pip is the client of the package index here: it runs with the host's own configuration (PIP_INDEX_URL,
pip.conf), so a company index works too, and answers with a report of what it would install."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement as Pep508
from packaging.utils import canonicalize_name

from modelarts_images.config.stack import excludes_entry_build
from modelarts_images.config.wheels import TORCH_FAMILY, marker_environment, parse_wheel_name, python_version
from modelarts_images.errors import ConfigError, FetchError, ModelArtsImagesError
from modelarts_images.http import failures
from modelarts_images.model import (
    X86_64,
    Artifact,
    FetchedFile,
    ImageSpec,
    Requirement,
    filename_problem,
    sha256_problem,
)
from modelarts_images.shared import redact
from modelarts_images.shared.files import link_or_copy

log = logging.getLogger(__name__)

# The installer the build runs for the dependency wheels where it can (context/packages-install.sh): it unpacks
# a wheel on every CPU, in about half of pip's time for torch. Pinned here, resolved like a wheel for the image's
# platform, its sha256 locked; it runs from the build's context and never reaches the image. uv serves Python 3.8
# and newer; pip installs the others.
INSTALL_TOOL = "uv==0.13.9"
INSTALL_TOOL_PYTHON = (3, 8)

# glibc of the base images the shipped entries use; pip needs it to pick manylinux wheels that will load.
GLIBC_OF_BASE = {"ubuntu:18.04": (2, 27), "ubuntu:20.04": (2, 31), "ubuntu:22.04": (2, 35), "ubuntu:24.04": (2, 39),
                 "debian:bullseye": (2, 31), "debian:bookworm": (2, 36)}
# The same for the operating systems Ascend's CANN images are tagged with (<cann>-<chip>-<os>-py<python>).
GLIBC_OF_CANN_OS = {"ubuntu20.04": (2, 31), "ubuntu22.04": (2, 35), "ubuntu24.04": (2, 39),
                    "openeuler22.03": (2, 34), "openeuler24.03": (2, 38)}
DEFAULT_GLIBC = (2, 28)
# pip with the image's dependency markers, not this machine's (see the script).
_PIP_FOR_TARGET = "modelarts_images.http.pip_for_target"
_TARGET_MARKERS = "MODELARTS_IMAGES_TARGET_MARKERS"


def glibc_of(base_image: str) -> tuple[int, int]:
    """The glibc release of a base image, where its name says; DEFAULT_GLIBC otherwise."""
    known = next((glibc for base, glibc in GLIBC_OF_BASE.items() if base_image.endswith(base)), None)
    cann_os = re.search(r"-(?P<os>(?:ubuntu|openeuler)[0-9.]+)-py3\.\d+$", base_image)
    return known or (GLIBC_OF_CANN_OS.get(cann_os["os"], DEFAULT_GLIBC) if cann_os else DEFAULT_GLIBC)


def platform_tags(base_image: str, arch: str = X86_64) -> list[str]:
    """Every Linux platform tag of this architecture a base image can load, newest first."""
    # Built here: packaging's manylinux tag generator is private and reads the running machine's glibc, not the image's.
    major, minor = glibc_of(base_image)
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    # manylinux2010 and manylinux1 were defined for x86 only.
    legacy = ["manylinux2014", "manylinux2010", "manylinux1"] if arch == X86_64 else ["manylinux2014"]
    return [*tags, *(f"{name}_{arch}" for name in legacy), f"linux_{arch}"]


def target_options(image: ImageSpec) -> list[str]:
    """pip's options for the image's interpreter and platform, not the host's."""
    minor = image.python.replace(".", "")
    options = ["--only-binary=:all:", "--python-version", image.python, "--implementation", "cp",
               "--abi", f"cp{minor}", "--abi", f"cp{minor}m", "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(image.base_image, image.arch):
        options += ["--platform", tag]
    return options


def pip_for(image: ImageSpec) -> tuple[list[str], dict[str, str]]:
    """The command that starts pip for the image's target (its markers), and the variables it needs."""
    target = marker_environment(python=image.python, arch=image.arch)
    environment = {**os.environ, _TARGET_MARKERS: json.dumps(target)}
    return [sys.executable, "-m", _PIP_FOR_TARGET], environment


def pip_command(image: ImageSpec, requirements: Sequence[str | Path], target: Path, report: Path) -> list[str]:
    """pip resolving `requirements` (local wheel files or requirement texts) for the image, writing a report."""
    return [*pip_for(image)[0], "install", "--dry-run", "--ignore-installed",
            "--disable-pip-version-check", *target_options(image), "--target", str(target), "--report", str(report),
            *map(str, requirements)]


@dataclass(frozen=True, kw_only=True)
class Report:
    """What pip would install, each file with its project name and declared dependencies."""

    items: tuple[tuple[str, Artifact, tuple[str, ...]], ...]  # (canonical name, file, requires_dist)

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return tuple(artifact for _, artifact, _ in self.items)


class PipFailed(Exception):  # noqa: N818 - an outcome, not an error of this module
    """pip could not resolve: its last words, and whether they say the requirements cannot be met (as opposed to
    the index failing). `failure`: the connection failure that kept pip from its index, when its output shows
    one; its one line is then pip's last word (pip's "no matching distribution" only means it read no page)."""

    def __init__(self, lines: Sequence[str], failure: failures.Failure | None = None) -> None:
        self.failure = failure
        self.lines = (failure.text,) if failure is not None else tuple(lines)
        super().__init__("\n".join(self.lines))
        self.unsatisfiable = failure is None and any(_UNSATISFIABLE.search(line) for line in lines)


_UNSATISFIABLE = re.compile(r"ResolutionImpossible|conflict is caused by|depends on|The user requested|"
                            r"Could not find a version|No matching distribution|Cannot install", re.IGNORECASE)
# Words only an index that answered gives: a conflict between what it listed. A failed connection beside them (one
# index of several down) is not why the resolution failed.
_CONFLICT = re.compile(r"ResolutionImpossible|conflict is caused by|Cannot install", re.IGNORECASE)


def unreachable_index(output: str) -> failures.Failure | None:
    """The connection failure pip's output reports (its retries' warnings, its last error), unless what failed is
    the resolution itself."""
    if _CONFLICT.search(output):
        return None
    return failures.classify_text(output, failures.PIP)


def _run(image: ImageSpec, requirements: Sequence[str | Path], scratch: Path, *, what: str,
         command: list[str] | None = None) -> Report:
    report = scratch / "report.json"
    command = command or pip_command(image, requirements, scratch / "target", report)
    log.debug("+ %s", redact.command(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=pip_for(image)[1])
    if result.returncode != 0:  # pip explains a conflict on stdout and states it on stderr
        output = result.stdout + "\n" + result.stderr
        lines = [redact.text(line.strip()) for line in output.splitlines() if line.strip()]
        raise PipFailed([line for line in lines if _UNSATISFIABLE.search(line)] or lines[-3:] or ["pip failed"],
                        unreachable_index("\n".join(lines)))
    try:
        items = json.loads(report.read_text("utf-8"))["install"]
        return Report(items=tuple(
            (canonicalize_name(str(item["metadata"]["name"])), _artifact(item["download_info"]),
             tuple(str(requirement) for requirement in item["metadata"].get("requires_dist") or ()))
            for item in items))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FetchError(f"{image.id}: pip's report of {what} cannot be read ({error!r})") from None


def resolve(image: ImageSpec, wheels: Sequence[FetchedFile], *, scratch_parent: Path | None = None,
            ) -> tuple[Artifact, ...] | None:
    """URL and sha256 of every dependency wheel, or None (with the reason logged) when pip cannot find them.

    pip reads the host's own configuration (PIP_INDEX_URL, pip.conf), so a company index works here too.
    `scratch_parent` should be inside the cache, so the wheels can be hardlinked rather than copied.
    """
    with tempfile.TemporaryDirectory(prefix="modelarts-closure-", dir=scratch_parent) as scratch:
        # pip reads what a wheel is from its file name; cached files are named by their hash.
        named = [_named_copy(image, wheel, Path(scratch)) for wheel in wheels]
        try:
            report = _run(image, named, Path(scratch), what="the dependency wheels")
        except PipFailed as failed:
            log.warning("%s: the dependency wheels cannot be fetched for Python %s (%s); the build will install "
                        "them from %s", image.id, image.python, failed.lines[-1],
                        redact.url(image.pip_index) or "(no pip_index)")
            return None
    own = {wheel.filename for wheel in wheels}
    return tuple(sorted((artifact for artifact in report.artifacts if artifact.filename not in own),
                        key=lambda artifact: artifact.filename))


def resolve_wheel(image: ImageSpec, requirement: str, *, scratch_parent: Path | None = None) -> Artifact:
    """The one wheel of `requirement` (pinned, `name==version`) for the image's Python and platform, from the index
    pip uses (PyPI unless the host's pip configuration says otherwise), without its dependencies: torch_npu, which
    PyTorch's own index does not serve."""
    with tempfile.TemporaryDirectory(prefix="modelarts-wheel-", dir=scratch_parent) as scratch:
        command = [*pip_command(image, [requirement], Path(scratch) / "target", Path(scratch) / "report.json"),
                   "--no-deps"]
        try:
            report = _run(image, (), Path(scratch), what=requirement, command=command)
        except PipFailed as failed:
            raise _refusal(image, failed, what=f"the {requirement} wheel") from None
    (artifact,) = report.artifacts
    return artifact


def serves_tool(image: ImageSpec) -> bool:
    """Whether the install tool serves the image's Python: only then is it looked up on the index."""
    return python_version(image.python) >= INSTALL_TOOL_PYTHON


def resolve_tools(image: ImageSpec, *, scratch_parent: Path | None = None) -> tuple[Artifact, ...]:
    """The wheel of the install tool for the image's platform, or () (logged) where it does not serve the image's
    Python or the index does not have it: the build then installs with pip, as fast as pip is."""
    if not serves_tool(image):
        return ()
    with tempfile.TemporaryDirectory(prefix="modelarts-tools-", dir=scratch_parent) as scratch:
        try:
            report = _run(image, [INSTALL_TOOL], Path(scratch), what="the install tool")
        except PipFailed as failed:
            log.info("%s: no %s for its platform from the index (%s); the build installs the wheels with pip",
                     image.id, INSTALL_TOOL, failed.lines[-1])
            return ()
    return report.artifacts


@dataclass(frozen=True, kw_only=True)
class StackResolution:
    """Where every file of an image with a stack goes: the torch layer's dependencies (at the versions the whole
    resolution chose, so the stack's layer never replaces a file below it) and the stack's own files."""

    closure: tuple[Artifact, ...]
    stack: tuple[Artifact, ...]  # wheels, and the sdists of build_from_source projects


def resolve_stack(image: ImageSpec, wheels: Sequence[FetchedFile], closure: Sequence[Artifact], *,
                  scratch_parent: Path | None = None) -> StackResolution:
    """Resolve the stack together with the entry's torch family (its wheel files, so nothing can replace them) for
    the image's Python and platform. ConfigError naming what cannot be met: a requirement that needs another torch,
    a project without a wheel for the target (unless build_from_source allows its sdist)."""
    stack = image.stack
    from_source = [requirement for requirement in stack.requirements if requirement.name in stack.build_from_source]
    with tempfile.TemporaryDirectory(prefix="modelarts-stack-", dir=scratch_parent) as scratch:
        sources = [_sdist(image, requirement, Path(scratch) / f"sdist-{index}")
                   for index, requirement in enumerate(from_source)]
        wanted = [requirement.text for requirement in stack.requirements if requirement.name not in
                  stack.build_from_source]
        wanted += [dependency for _, _, requires in sources for dependency in _for_target(image, requires)
                   if canonicalize_name(Pep508(dependency).name) not in stack.build_from_source]
        named = [_named_copy(image, wheel, Path(scratch)) for wheel in wheels]
        try:
            report = _run(image, [*named, *wanted], Path(scratch), what="the stack")
        except PipFailed as failed:
            raise _refusal(image, failed) from None
    own = {wheel.filename for wheel in wheels}
    below = {Artifact(url=a.url, sha256=None).filename for a in closure}
    below_names = {name for name, artifact, _ in report.items if artifact.filename in below}
    below_names |= {_name_of(a) for a in closure}
    joint_closure: list[Artifact] = []
    stack_files: list[Artifact] = []
    for name, artifact, _ in report.items:
        if artifact.filename in own:
            continue
        (joint_closure if name in below_names else stack_files).append(artifact)
    stack_files += [artifact for _, artifact, _ in sources]
    return StackResolution(closure=tuple(sorted(joint_closure, key=lambda a: a.filename)),
                           stack=tuple(sorted(stack_files, key=lambda a: a.filename)))


def refuse_pinned_torch_needs(image: ImageSpec, *, scratch_parent: Path | None = None) -> None:
    """Before the torch family is downloaded: a requirement of the stack pinned to one release (`==`) whose own
    metadata asks for another torch, torchvision or torchaudio than the entry's is refused, ConfigError naming it,
    what it needs and what the entry has. pip reads only those requirements' metadata (--no-deps). Requirements
    that are not pinned are left to the whole resolution: an older release of theirs may fit the entry."""
    stack = image.stack
    pinned = [requirement.text for requirement in stack.requirements
              if requirement.name not in stack.build_from_source and requirement.name not in TORCH_FAMILY
              and _one_release(requirement.text)]
    if not pinned:
        return
    with tempfile.TemporaryDirectory(prefix="modelarts-stack-pins-", dir=scratch_parent) as scratch:
        command = [*pip_command(image, pinned, Path(scratch) / "target", Path(scratch) / "report.json"), "--no-deps"]
        try:
            report = _run(image, (), Path(scratch), what="the stack's pinned requirements", command=command)
        except PipFailed as failed:
            raise _refusal(image, failed) from None
    wanted = {"torch": image.torch, "torchvision": image.torchvision, "torchaudio": image.torchaudio}
    needs = []
    for _, artifact, requires in report.items:
        for dependency in map(Pep508, _for_target(image, requires)):
            project = canonicalize_name(dependency.name)
            if project in TORCH_FAMILY and excludes_entry_build(dependency.specifier, wanted[project], image.variant):
                has = f"{project} {wanted[project]}+{image.variant}" if wanted[project] else f"no {project}"
                needs.append(f"  {artifact.filename} requires {dependency}; the entry has {has}")
    if needs:
        raise ConfigError(f"{image.id}: the stack needs another torch family than the entry's (its torch, "
                          "torchvision, torchaudio and cuda keys fix it):\n" + "\n".join(needs))


def _one_release(text: str) -> bool:
    specifiers = list(Pep508(text).specifier)
    return len(specifiers) == 1 and specifiers[0].operator in ("==", "===") and "*" not in specifiers[0].version


def resolve_build_requirements(image: ImageSpec, requirements: Sequence[str], *,
                               scratch_parent: Path | None = None) -> tuple[Artifact, ...]:
    """The wheels (for the image's target) that building the stack's sdists needs: their build-system requires."""
    if not requirements:
        return ()
    with tempfile.TemporaryDirectory(prefix="modelarts-build-requires-", dir=scratch_parent) as scratch:
        try:
            report = _run(image, requirements, Path(scratch), what="the build requirements")
        except PipFailed as failed:
            raise _refusal(image, failed, what="the build requirements of build_from_source projects") from None
    return tuple(sorted(report.artifacts, key=lambda artifact: artifact.filename))


def _sdist(image: ImageSpec, requirement: Requirement, scratch: Path) -> tuple[str, Artifact, tuple[str, ...]]:
    """The source distribution of a build_from_source project, with the dependencies it declares. An sdist is the
    same file for every target, so the host's own pip finds it (it reads the sdist's metadata to answer)."""
    scratch.mkdir()
    report = scratch / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:", "--report", str(report),
               requirement.text]
    try:
        (found,) = _run(image, (), scratch, what=f"the sdist of {requirement.name}", command=command).items
    except PipFailed as failed:
        raise _refusal(image, failed, what=f"the source distribution of {requirement.name}") from None
    return found


def _for_target(image: ImageSpec, requires: Sequence[str]) -> list[str]:
    """The declared dependencies that apply to the image (their markers evaluated for its Python on Linux)."""
    environment = {**marker_environment(python=image.python, arch=image.arch), "extra": ""}
    kept = []
    for text in requires:
        requirement = Pep508(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            kept.append(str(requirement))
    return kept


def _name_of(artifact: Artifact) -> str:
    parsed = parse_wheel_name(artifact.filename)
    return parsed.distribution.replace("_", "-") if parsed else artifact.filename


def _refusal(image: ImageSpec, failed: PipFailed, *, what: str = "the stack") -> ModelArtsImagesError:
    """pip's own words on why it cannot resolve: a ConfigError when the requirements cannot be met (exit 2), a
    FetchError when the index failed (exit 3), in one line when pip could not reach it."""
    if failed.failure is not None:  # pip never read its index: one line, the cause and the next step
        return FetchError(f"{image.id}: {what} cannot be looked up on pip's index: {failed.failure.text}")
    target = f"Python {image.python}, Linux {image.arch}, {image.variant}, torch {image.torch}"
    hint = ""
    if any("No matching distribution" in line or "Could not find a version" in line for line in failed.lines):
        hint = ("\n  a project without a wheel for this target can be built from its sdist: list it under "
                "build_from_source")
    body = "\n".join(f"  {line}" for line in failed.lines)
    message = f"{image.id}: {what} cannot be resolved for {target}:\n{body}{hint}"
    return ConfigError(message) if failed.unsatisfiable else FetchError(message)


def _artifact(info: dict[str, Any]) -> Artifact:
    """One wheel of pip's report, checked like any input: its URL becomes a file name in the cache (and goes into
    versions.lock without credentials: a private index's login belongs to a mirror or ~/.netrc), its sha256 a
    cache path."""
    url = info["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"not a URL: {url!r}")
    url = redact.without_credentials(url)
    problem = filename_problem(Artifact(url=url, sha256=None).filename)
    sha256 = info.get("archive_info", {}).get("hashes", {}).get("sha256")
    problem = problem or (sha256_problem(sha256) if sha256 is not None else None)
    if problem:
        raise ValueError(f"{redact.url(url)}: {problem}")
    return Artifact(url=url, sha256=sha256)


def _named_copy(image: ImageSpec, wheel: FetchedFile, scratch: Path) -> Path:
    """The wheel under its own name in `scratch`: a hardlink, or a copy where the cache is on another filesystem."""
    named = scratch / wheel.filename
    try:
        link_or_copy(wheel.path, named)
    except OSError as error:
        raise FetchError(f"{image.id}: cannot put {wheel.filename} into {scratch} for pip: {error.strerror or error}"
                         ) from None
    return named
