"""The wheels an image's torch wheels depend on, resolved by pip for the image's Python and platform.

pip is the client of the package index here: it runs with the host's own configuration (PIP_INDEX_URL,
pip.conf), so a company index works too, and answers with a report of what it would install."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelarts_images.errors import FetchError
from modelarts_images.model import Artifact, FetchedFile, ImageSpec, filename_problem, sha256_problem
from modelarts_images.shared import redact
from modelarts_images.shared.files import link_or_copy

log = logging.getLogger(__name__)

# glibc of the base images the shipped entries use; pip needs it to pick manylinux wheels that will load.
GLIBC_OF_BASE = {"ubuntu:18.04": (2, 27), "ubuntu:20.04": (2, 31), "ubuntu:22.04": (2, 35), "ubuntu:24.04": (2, 39),
                 "debian:bullseye": (2, 31), "debian:bookworm": (2, 36)}
DEFAULT_GLIBC = (2, 28)


def platform_tags(base_image: str) -> list[str]:
    """Every Linux x86_64 platform tag a base image can load, newest first."""
    # Built here: packaging's manylinux tag generator is private and reads the running machine's glibc, not the image's.
    major, minor = next((glibc for base, glibc in GLIBC_OF_BASE.items() if base_image.endswith(base)), DEFAULT_GLIBC)
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def pip_command(image: ImageSpec, wheels: Sequence[Path], target: Path, report: Path) -> list[str]:
    minor = image.python.replace(".", "")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--only-binary=:all:", "--python-version", image.python,
               "--implementation", "cp", "--abi", f"cp{minor}", "--abi", f"cp{minor}m", "--abi", "abi3",
               "--abi", "none"]
    for tag in platform_tags(image.base_image):
        command += ["--platform", tag]
    return [*command, "--target", str(target), "--report", str(report), *map(str, wheels)]


def resolve(image: ImageSpec, wheels: Sequence[FetchedFile], *, scratch_parent: Path | None = None,
            ) -> tuple[Artifact, ...] | None:
    """URL and sha256 of every dependency wheel, or None (with the reason logged) when pip cannot find them.

    pip reads the host's own configuration (PIP_INDEX_URL, pip.conf), so a company index works here too.
    `scratch_parent` should be inside the cache, so the wheels can be hardlinked rather than copied.
    """
    with tempfile.TemporaryDirectory(prefix="modelarts-closure-", dir=scratch_parent) as scratch:
        report = Path(scratch) / "report.json"
        # pip reads what a wheel is from its file name; cached files are named by their hash.
        named = [_named_copy(image, wheel, Path(scratch)) for wheel in wheels]
        command = pip_command(image, named, Path(scratch) / "target", report)
        log.debug("+ %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            log.warning("%s: the dependency wheels cannot be fetched for Python %s (%s); the build will install "
                        "them from %s", image.id, image.python, reason, redact.url(image.pip_index) or "(no pip_index)")
            return None
        try:
            items = json.loads(report.read_text("utf-8"))["install"]
            found = [_artifact(item["download_info"]) for item in items]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise FetchError(f"{image.id}: pip's report of the dependency wheels cannot be read ({error!r})") from None
    own = {wheel.filename for wheel in wheels}
    closure = [artifact for artifact in found if artifact.filename not in own]
    return tuple(sorted(closure, key=lambda artifact: artifact.filename))


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
