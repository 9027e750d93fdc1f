"""What the stack's source distributions need: their build requirements, read from the sdist itself, and which
project a stack file belongs to."""

from __future__ import annotations

import email.parser
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename

from modelarts_images.config.wheels import parse_wheel_name
from modelarts_images.errors import FetchError
from modelarts_images.model import FetchedFile

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

# PEP 517: a source tree without [build-system] builds with setuptools' legacy backend.
LEGACY_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")
MAX_PYPROJECT = 1 << 20


def is_sdist(filename: str) -> bool:
    return not filename.endswith(".whl")


def project_of(filename: str) -> str:
    """The canonical project name of a wheel or sdist file name ('' when it names none)."""
    wheel = parse_wheel_name(filename)
    if wheel is not None:
        return canonicalize_name(wheel.distribution)
    try:
        return str(parse_sdist_filename(filename)[0])
    except InvalidSdistFilename:
        return ""


def wheel_requires(wheel: FetchedFile) -> tuple[str, ...]:
    """The Requires-Dist lines of a wheel's METADATA, read without unpacking it."""
    try:
        with zipfile.ZipFile(wheel.path) as archive:
            names = [name for name in archive.namelist()
                     if name.count("/") == 1 and name.endswith(".dist-info/METADATA")]
            if not names:
                raise FetchError(f"{wheel.filename}: the wheel has no .dist-info/METADATA")
            text = archive.read(names[0])[:MAX_PYPROJECT * 16].decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile) as error:
        raise FetchError(f"{wheel.filename}: the wheel cannot be read: {error}") from None
    metadata = email.parser.HeaderParser().parsestr(text)
    return tuple(metadata.get_all("Requires-Dist") or ())


def build_requirements(sdists: Sequence[FetchedFile]) -> list[str]:
    """The build-system requirements of every sdist (each one's pyproject.toml, or setuptools' legacy default)."""
    found: dict[str, None] = {}
    for sdist in sdists:
        for requirement in _build_requires(sdist):
            found.setdefault(requirement)
    return list(found)


def _build_requires(sdist: FetchedFile) -> Sequence[str]:
    try:
        text = _pyproject(sdist.path, sdist.filename)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise FetchError(f"{sdist.filename}: the source distribution cannot be read: {error}") from None
    if text is None:
        return LEGACY_BUILD_REQUIRES
    try:
        system = tomllib.loads(text).get("build-system")
    except tomllib.TOMLDecodeError as error:
        raise FetchError(f"{sdist.filename}: its pyproject.toml is not TOML: {error}") from None
    if not isinstance(system, dict) or "requires" not in system:
        return LEGACY_BUILD_REQUIRES
    requires = system["requires"]
    if not isinstance(requires, list) or not all(isinstance(item, str) for item in requires):
        raise FetchError(f"{sdist.filename}: build-system.requires in its pyproject.toml is not a list of strings")
    return requires


def _pyproject(path: Path, filename: str) -> str | None:
    """<top>/pyproject.toml of the archive, read without unpacking anything."""
    if filename.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/pyproject.toml")]
            return archive.read(names[0])[:MAX_PYPROJECT].decode("utf-8", "replace") if names else None
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and member.name.count("/") == 1 and member.name.endswith("/pyproject.toml"):
                stream = archive.extractfile(member)
                return stream.read(MAX_PYPROJECT).decode("utf-8", "replace") if stream else None
    return None
