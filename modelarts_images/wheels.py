"""What artifact file names say about themselves, and whether that fits the image."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
_INSTALLER = re.compile(r"^(?P<family>Miniconda3|Miniforge3|Mambaforge|Anaconda3)-(?P<rest>.*)\.sh$")
_INSTALLER_PYTHON = re.compile(r"^py(?P<major>3)(?P<minor>\d+)_")
_INSTALLER_PLATFORM = re.compile(r"-(?P<os>Linux|MacOSX|Windows)-(?P<arch>[A-Za-z0-9_]+)$")


@dataclass(frozen=True, kw_only=True)
class WheelName:
    """The fields of a wheel file name (PEP 427)."""

    distribution: str  # normalised: lowercase, '_' for '-' and '.'
    version: str  # public part, without the local '+cu102'
    local: str | None  # 'cu102', 'cpu' or None
    python_tags: tuple[str, ...]
    abi: str
    platforms: tuple[str, ...]


def parse_wheel_name(filename: str) -> WheelName | None:
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        return None
    distribution, full_version = parts[0], parts[1]
    python_tag, abi, platform = parts[-3:]
    version, _, local = full_version.partition("+")
    return WheelName(
        distribution=re.sub(r"[-_.]+", "_", distribution).lower(),
        version=version,
        local=local or None,
        python_tags=tuple(python_tag.split(".")),
        abi=abi,
        platforms=tuple(platform.split(".")),
    )


def _fits_python(wheel: WheelName, python: str) -> bool:
    minor = python.replace(".", "")
    for tag in wheel.python_tags:
        if tag in (f"cp{minor}", f"py{minor}", "py3"):
            return True
        if wheel.abi == "abi3" and tag.startswith("cp3") and int(tag[3:] or 0) <= int(minor[1:]):
            return True
    return False


def _fits_platform(wheel: WheelName) -> bool:
    return any(tag == "any" or (tag.endswith("_x86_64") and "linux" in tag) for tag in wheel.platforms)


def wheel_problem(filename: str, *, python: str, cuda: str, versions: Mapping[str, Any]) -> str | None:
    """Why this wheel cannot go into an image with this Python, CUDA and package versions, or None."""
    wheel = parse_wheel_name(filename)
    if wheel is None:
        return f"'{filename}' is not a wheel file name (name-version-python-abi-platform.whl)"
    if not _fits_python(wheel, python):
        return f"'{filename}' is a wheel for {'.'.join(wheel.python_tags)}, but the image's python is {python}"
    if not _fits_platform(wheel):
        return f"'{filename}' is a wheel for {'.'.join(wheel.platforms)}, but images are built for Linux x86_64"
    if wheel.distribution in TORCH_FAMILY:
        wanted = versions.get(wheel.distribution)
        if wanted is not None and wheel.version != wanted:
            return f"'{filename}' is {wheel.distribution} {wheel.version}, but {wheel.distribution}: {wanted} is set"
        variant = "cpu" if cuda == "cpu" else "cu" + cuda.replace(".", "")
        built_for = wheel.local if wheel.local and re.fullmatch(r"cpu|cu\d+", wheel.local) else None
        if built_for is not None and built_for != variant:
            return f"'{filename}' is built for {built_for}, but the image's cuda is {cuda} ({variant})"
    return None


def wheel_distribution(filename: str) -> str | None:
    wheel = parse_wheel_name(filename)
    return wheel.distribution if wheel else None


def installer_problem(filename: str, *, python: str) -> str | None:
    """Why a conda installer of this name does not fit the image, or None when it fits or cannot tell."""
    match = _INSTALLER.match(filename)
    if match is None:
        return None
    rest = match["rest"]
    platform = _INSTALLER_PLATFORM.search(rest)
    if platform and (platform["os"], platform["arch"]) != ("Linux", "x86_64"):
        return (f"'{filename}' is an installer for {platform['os']}-{platform['arch']}, "
                "but images are built for Linux x86_64")
    bundled = _INSTALLER_PYTHON.match(rest)
    if bundled and f"{bundled['major']}.{bundled['minor']}" != python:
        return (f"'{filename}' installs Python {bundled['major']}.{bundled['minor']}, "
                f"but the image's python is {python}")
    return None
