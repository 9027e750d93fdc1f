"""What doctor reads of this machine itself, with no network and no engine: the installed distribution's
requirements (importlib.metadata, packaging), free disk, which pinned files the cache holds (read only: the
cache is never written or re-hashed), the host's pip index, and the ModelArts keys' presence and shape (never
their values)."""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from modelarts_images.doctor.needs import PYPI
from modelarts_images.errors import ConfigError
from modelarts_images.fetch.cache import Cache
from modelarts_images.model import sha256_problem
from modelarts_images.platform.code import ObsDir
from modelarts_images.publish import swr

DISTRIBUTION = "modelarts-images"
# The SDKs `inv verify --on modelarts` imports (the project's dev extra), by module and distribution.
PLATFORM_SDKS = (("huaweicloudsdkcore", "huaweicloudsdkcore"), ("huaweicloudsdkmodelarts", "huaweicloudsdkmodelarts"),
                 ("obs", "esdk-obs-python"))
# Huawei Cloud's keys: an AK is 20 capital letters and digits, an SK 40 letters and digits (lenient bounds).
_AK = re.compile(r"^[A-Z0-9]{16,32}$")
_SK = re.compile(r"^[A-Za-z0-9]{30,64}$")


# --------------------------------------------------------------------------------------------------------------
# Python and the package's requirements


@dataclass(frozen=True, kw_only=True)
class PythonFacts:
    version: str  # this interpreter's, e.g. 3.11.7
    executable: str
    distribution: str  # 'modelarts-images 0.1.0'; '' when it is not installed
    requires_python: str  # its Requires-Python
    python_ok: bool
    checked: int  # requirements that apply here (no extra, markers true)
    unmet: tuple[str, ...]  # 'docker>=7.1: 6.1.3 is installed', 'rich>=13: not installed'


def unmet_requirements(requirements: Iterable[str], installed: Callable[[str], str | None],
                       environment: Mapping[str, str] | None = None) -> tuple[int, tuple[str, ...]]:
    """(how many requirements apply, those not satisfied): a requirement applies when it names no extra and its
    markers hold in `environment` (this interpreter's by default); `installed` gives a distribution's version."""
    marker_env = dict(environment) if environment else {key: str(value) for key, value in default_environment().items()}
    checked, unmet = 0, []
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            unmet.append(f"{text}: not a requirement pip can read")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({**marker_env, "extra": ""}):
            continue
        checked += 1
        version = installed(requirement.name)
        if version is None:
            unmet.append(f"{requirement}: not installed")
            continue
        try:
            if not requirement.specifier.contains(Version(version), prereleases=True):
                unmet.append(f"{requirement}: {version} is installed")
        except InvalidVersion:
            unmet.append(f"{requirement}: the installed version {version!r} cannot be read")
    return checked, tuple(unmet)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_facts(distribution: str = DISTRIBUTION) -> PythonFacts:
    version = ".".join(str(part) for part in sys.version_info[:3])
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return PythonFacts(version=version, executable=sys.executable, distribution="", requires_python="",
                           python_ok=True, checked=0, unmet=())
    requires_python = (found.metadata.get_all("Requires-Python") or [""])[0]
    try:
        python_ok = not requires_python or SpecifierSet(requires_python).contains(version)
    except InvalidSpecifier:
        python_ok = True
    checked, unmet = unmet_requirements(found.requires or (), _installed)
    return PythonFacts(version=version, executable=sys.executable,
                       distribution=f"{distribution} {found.version}", requires_python=requires_python,
                       python_ok=python_ok, checked=checked, unmet=unmet)


# --------------------------------------------------------------------------------------------------------------
# Disk


@dataclass(frozen=True, kw_only=True)
class DiskFacts:
    path: str  # the directory asked about
    measured: str  # the nearest existing directory, where the free space was read
    free: int | None  # bytes this user can write there; None: it could not be read
    device: int | None  # st_dev, to tell whether two paths share a file system
    writable: bool
    problem: str = ""


def existing_parent(path: Path) -> Path:
    """The path itself when it exists, else its nearest existing parent (where it would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def disk_facts(path: Path) -> DiskFacts:
    measured = existing_parent(path.absolute())
    try:
        usage = shutil.disk_usage(measured)
        device = measured.stat().st_dev
    except OSError as error:
        return DiskFacts(path=str(path), measured=str(measured), free=None, device=None, writable=False,
                         problem=error.strerror or str(error))
    writable = os.access(measured, os.W_OK | os.X_OK) if measured.is_dir() else False
    return DiskFacts(path=str(path), measured=str(measured), free=usage.free, device=device, writable=writable)


def cached_digests(cache_dir: Path, digests: Sequence[str]) -> frozenset[str]:
    """Which of the sha256 values the cache holds a blob of (a regular file at blobs/sha256/<hex>), read without
    creating, hashing or changing anything."""
    blobs = Cache(cache_dir).blobs
    found = set()
    for digest in digests:
        if sha256_problem(digest) is not None:
            continue
        try:
            if stat.S_ISREG((blobs / digest).lstat().st_mode):
                found.add(digest)
        except OSError:
            continue
    return frozenset(found)


# --------------------------------------------------------------------------------------------------------------
# The host's pip index


def pip_config_files(env: Mapping[str, str]) -> list[Path]:
    """pip's configuration files in the order pip reads them (a later one wins): global, user, site, then
    PIP_CONFIG_FILE."""
    home = Path(env.get("HOME") or Path.home())
    xdg_dirs = (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    files = [*(Path(directory) / "pip" / "pip.conf" for directory in xdg_dirs if directory), Path("/etc/pip.conf"),
             home / ".pip" / "pip.conf", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf",
             Path(sys.prefix) / "pip.conf"]
    if env.get("PIP_CONFIG_FILE"):
        files.append(Path(env["PIP_CONFIG_FILE"]))
    return files


def host_pip_index(env: Mapping[str, str]) -> tuple[str, str]:
    """(the index the host's pip resolves from, where that was set): PIP_INDEX_URL, else index-url in pip's
    configuration files ([install] over [global]), else PyPI."""
    if env.get("PIP_INDEX_URL"):
        return env["PIP_INDEX_URL"].split()[0], "PIP_INDEX_URL"
    found, where = PYPI, "pip's default"
    for path in pip_config_files(env):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            value = parser.get(section, "index-url", fallback="").strip()
            if value:
                found, where = value.split()[0], str(path)
    return found, where


# --------------------------------------------------------------------------------------------------------------
# ModelArts and OBS


@dataclass(frozen=True, kw_only=True)
class PlatformFacts:
    keys: str  # the variables that hold the AK/SK ('' when none is set)
    problem: str = ""  # a pair set by half
    shape: tuple[str, ...] = ()  # how the keys are not shaped like Huawei Cloud's (never their values)
    temporary: bool = False  # a security token is set beside them
    obs_dir: str = ""  # as configured
    obs_problem: str = ""
    sdks_missing: tuple[str, ...] = ()  # distributions to install

    @property
    def configured(self) -> bool:
        return bool(self.keys or self.problem or self.obs_dir)


def platform_facts(env: Mapping[str, str], obs_dir: str | None,
                   find: Callable[[str], object | None] = importlib.util.find_spec) -> PlatformFacts:
    keys, problem, shape, temporary = "", "", [], False
    for access, secret, token in swr.AK_SK_SOURCES:
        ak, sk = env.get(access, "").strip(), env.get(secret, "")
        if ak and sk:
            keys, temporary = f"{access}/{secret}", bool(env.get(token))
            if not _AK.match(ak):
                shape.append(_shape(access, ak, "an AK is 20 capital letters and digits"))
            if not _SK.match(sk):
                shape.append(_shape(secret, sk, "an SK is 40 letters and digits"))
            break
        if ak or sk:
            problem = f"{access if ak else secret} is set but {secret if ak else access} is not: set both"
            break
    obs_problem = ""
    if obs_dir:
        try:
            ObsDir.parse(obs_dir, source="obs_dir")
        except ConfigError as error:
            obs_problem = str(error)
    missing = tuple(distribution for module, distribution in PLATFORM_SDKS if _found(find, module) is None)
    return PlatformFacts(keys=keys, problem=problem, shape=tuple(shape), temporary=temporary, obs_dir=obs_dir or "",
                         obs_problem=obs_problem, sdks_missing=missing)


def _shape(name: str, value: str, expected: str) -> str:
    """How a key is not shaped as expected: its length and kind of characters, never the value."""
    kind = "" if value.isalnum() else ", not all letters and digits"
    return f"{name} has {len(value)} characters{kind} ({expected})"


def _found(find: Callable[[str], object | None], module: str) -> object | None:
    try:
        return find(module)
    except (ImportError, ValueError):
        return None
