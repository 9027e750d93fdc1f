"""What artifact file names say about themselves, and whether that fits the image."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import BuildTag, InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from modelarts_images.model import X86_64, Accelerator

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
TORCH_NPU = "torch_npu"  # Ascend's adapter, beside torch on an Ascend image (its wheels' distribution name)
IMAGE_ARCH = X86_64  # the architecture of an entry that names none
# How conda installers name an architecture (Miniconda and Miniforge: Linux-x86_64, Linux-aarch64).
_INSTALLER_ARCH = {"x86_64": ("x86_64",), "aarch64": ("aarch64", "arm64")}
_WHEEL_LAYOUT = "name-version[-build]-python-abi-platform.whl"
_INSTALLER = re.compile(r"^(?P<family>Miniconda3|Miniforge3|Mambaforge|Anaconda3)-(?P<rest>.*)\.sh$")
_INSTALLER_PYTHON = re.compile(r"^py(?P<major>3)(?P<minor>\d+)_")
_INSTALLER_PLATFORM = re.compile(r"-(?P<os>Linux|MacOSX|Windows)-(?P<arch>[A-Za-z0-9_]+)$")


@dataclass(frozen=True, kw_only=True)
class WheelName:
    """The fields of a wheel file name (PEP 427), as packaging reads them."""

    distribution: str  # normalised: lowercase, '_' for '-' and '.'
    version: str  # public part, without the local '+cu102'
    local: str | None  # 'cu102', 'cpu' or None
    build: BuildTag  # () or (1, 'abc') for a '-1abc-' build tag
    # The next three keep the name's own order for messages; `tags` is what compatibility is decided on.
    python_tags: tuple[str, ...]
    abi: str
    platforms: tuple[str, ...]
    tags: frozenset[Tag]


def distribution_name(name: str) -> str:
    """A project name as WheelName.distribution spells it, so 'Typing-Extensions' matches 'typing_extensions'."""
    return canonicalize_name(name).replace("-", "_")


def _read_wheel_name(filename: str) -> WheelName:
    """The fields of a wheel file name; raises InvalidWheelFilename for anything else."""
    name, version, build, tags = parse_wheel_filename(filename)
    # packaging has validated the layout, so the last three dash-separated fields are the tag set as written.
    python_tag, abi, platform = filename.removesuffix(".whl").rsplit("-", 3)[-3:]
    return WheelName(
        distribution=distribution_name(name),
        version=version.public,
        local=version.local,
        build=build,
        python_tags=tuple(python_tag.split(".")),
        abi=abi,
        platforms=tuple(platform.split(".")),
        tags=tags,
    )


def parse_wheel_name(filename: str) -> WheelName | None:
    try:
        return _read_wheel_name(filename)
    except InvalidWheelFilename:
        return None


def python_version(python: str) -> tuple[int, int]:
    major, minor = python.split(".")[:2]
    return int(major), int(minor)


def _interpreter(python: str) -> str:
    major, minor = python_version(python)
    return f"cp{major}{minor}"


def _supported_tags(python: str, platforms: Iterable[str]) -> frozenset[Tag]:
    """The tags CPython `python` loads on these platforms, pure-Python and stable-ABI wheels included."""
    version = python_version(python)
    interpreter = _interpreter(python)
    # 3.7 and older name the pymalloc build 'cp37m'; pip is asked for both spellings too (closure.pip_command).
    abis = [interpreter, f"{interpreter}m"] if version < (3, 8) else [interpreter]
    platforms = list(platforms)
    if not platforms:
        # packaging 23 reads an empty list as "the running machine's platforms"; no platform means no tag.
        return frozenset()
    return frozenset([*cpython_tags(version, abis, platforms), *compatible_tags(version, interpreter, platforms)])


def loads_on(platform: str, arch: str) -> bool:
    """Whether a wheel with this platform tag loads on the images' glibc Linux of this architecture."""
    # musllinux wheels link musl, which the Ubuntu and Debian base images do not have.
    return platform in ("any", f"linux_{arch}") or (platform.startswith("manylinux") and platform.endswith(f"_{arch}"))


def _fits_python(wheel: WheelName, python: str) -> bool:
    return not wheel.tags.isdisjoint(_supported_tags(python, wheel.platforms))


def _python_label(wheel: WheelName, python: str) -> str:
    """The wheel's Python tags, with its ABI when that is what does not fit (a 'cp313t' free-threaded build)."""
    tags = ".".join(wheel.python_tags)
    return f"{tags}-{wheel.abi}" if _interpreter(python) in wheel.python_tags else tags


def _fits_platform(wheel: WheelName, python: str, arch: str) -> bool:
    loadable = [platform for platform in wheel.platforms if loads_on(platform, arch)]
    return not wheel.tags.isdisjoint(_supported_tags(python, loadable))


def wheel_problem(filename: str, *, python: str, cuda: str, versions: Mapping[str, Any],
                  arch: str = IMAGE_ARCH) -> str | None:
    """Why this wheel cannot go into an image with this Python, CUDA and package versions, or None."""
    try:
        wheel = _read_wheel_name(filename)
    except InvalidWheelFilename as error:
        return f"'{filename}' is not a wheel file name ({_WHEEL_LAYOUT}): {error}"
    if not _fits_python(wheel, python):
        return f"'{filename}' is a wheel for {_python_label(wheel, python)}, but the image's python is {python}"
    if not _fits_platform(wheel, python, arch):
        return (f"'{filename}' is a wheel for {'.'.join(wheel.platforms)}, "
                f"but images are built for Linux {arch}")
    if wheel.distribution in TORCH_FAMILY:
        return _torch_problem(filename, wheel, cuda=cuda, versions=versions)
    wanted = versions.get(TORCH_NPU)
    if wheel.distribution == TORCH_NPU and wanted is not None and wheel.version != wanted:
        return f"'{filename}' is torch_npu {wheel.version}, but torch_npu: {wanted} is set"
    return None


def _torch_problem(filename: str, wheel: WheelName, *, cuda: str, versions: Mapping[str, Any]) -> str | None:
    wanted = versions.get(wheel.distribution)
    if wanted is not None and wheel.version != wanted:
        return f"'{filename}' is {wheel.distribution} {wheel.version}, but {wheel.distribution}: {wanted} is set"
    variant = Accelerator.of(cuda).tag
    built_for = wheel.local if wheel.local and Accelerator.is_tag(wheel.local) else None
    if built_for is not None and built_for != variant:
        return f"'{filename}' is built for {built_for}, but the image's cuda is {cuda} ({variant})"
    return None


def wheel_distribution(filename: str) -> str | None:
    wheel = parse_wheel_name(filename)
    return wheel.distribution if wheel else None


def installer_problem(filename: str, *, python: str, arch: str = IMAGE_ARCH) -> str | None:
    """Why a conda installer of this name does not fit the image, or None when it fits or cannot tell."""
    match = _INSTALLER.match(filename)
    if match is None:
        return None
    rest = match["rest"]
    platform = _INSTALLER_PLATFORM.search(rest)
    if platform and (platform["os"] != "Linux" or platform["arch"] not in _INSTALLER_ARCH.get(arch, (arch,))):
        return (f"'{filename}' is an installer for {platform['os']}-{platform['arch']}, "
                f"but the image is built for Linux {arch} (its installer is named ...-Linux-{arch}.sh)")
    bundled = _INSTALLER_PYTHON.match(rest)
    if bundled and f"{bundled['major']}.{bundled['minor']}" != python:
        return (f"'{filename}' installs Python {bundled['major']}.{bundled['minor']}, "
                f"but the image's python is {python}")
    return None


def marker_environment(*, python: str, arch: str) -> dict[str, str]:
    """PEP 508's marker variables as the image's interpreter has them (CPython `python` on Linux `arch`)."""
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": arch, "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def cuda_build_problem(filename: str, requires: Iterable[str], *, python: str, arch: str) -> str | None:
    """Why a torch wheel meant for an image without CUDA (CPU or Ascend) is a CUDA build: it depends on NVIDIA's
    CUDA wheels on the image's platform (PyPI's aarch64 torch does from about 2.10 on), or None."""
    environment = {**marker_environment(python=python, arch=arch), "extra": ""}
    cuda = []
    for text in requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.name.lower().startswith("nvidia-") and (
                requirement.marker is None or requirement.marker.evaluate(environment)):
            cuda.append(requirement.name)
    if not cuda:
        return None
    return (f"'{filename}' is a CUDA build (on Linux {arch} it requires {', '.join(sorted(cuda)[:3])}"
            f"{', ...' if len(cuda) > 3 else ''}); an image without CUDA needs torch's CPU build, from PyTorch's CPU "
            "index (https://download.pytorch.org/whl/cpu), which torch_npu also requires")
