"""An entry's own stack: its pip requirements, apt packages, environment and check scripts, read from versions.yaml
(the entry and `defaults:` combined) and checked before anything is downloaded.

How an entry combines with `defaults:` — one common stack on every image, with per-image additions or pins:
- requirements: the defaults' requirements file, then the defaults' `packages`, then the entry's requirements
  file, then its `packages`; a later requirement of a project replaces an earlier one (a different pin);
- apt_packages, checks and build_from_source: the defaults' list, then the entry's additions;
- env: one mapping, the entry's value winning for a name both set.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement as Pep508
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from modelarts_images.config.wheels import TORCH_FAMILY
from modelarts_images.errors import ConfigError
from modelarts_images.model import Accelerator, Requirement, Stack, sha256_problem
from modelarts_images.shared import files, redact
from modelarts_images.shared.text import size

Where = tuple[str | int, ...]
Problems = list[tuple[Where, str]]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What ModelArts and the image itself rely on: the conda python on PATH, unbuffered output, the NVIDIA runtime's
# variables, the user's home, and the variables the platform injects into every job.
PROTECTED_ENV = ("PATH", "HOME", "PYTHONUNBUFFERED", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
PROTECTED_PREFIXES = ("MA_", "VC_")
_HASH_OPTION = re.compile(r"--hash[= ](?P<algorithm>[a-z0-9]+):(?P<digest>\S+)")
# Bounds on the files versions.yaml names: real requirements files and check scripts are a few kilobytes.
MAX_REQUIREMENTS_BYTES = 1_000_000
MAX_CHECK_BYTES = 1_000_000
# Lines of one requirements file quoted before the rest are only counted: a file that is not a requirements
# file (a key, an environment dump) is then refused without being shown line by line.
_QUOTED_LINES = 3
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def read_stack(defaults: Mapping[str, Any], entry: Mapping[str, Any], *, base: Path,
               at: Where) -> tuple[Stack, Problems]:
    """The entry's stack with the defaults' combined, and every problem with its key path (at: the entry's)."""
    problems: Problems = []
    requirements: dict[str, tuple[Requirement, Where]] = {}
    for source, where in ((defaults, ("defaults",)), (entry, at)):
        found: list[tuple[Requirement, Where]] = []
        if "requirements" in source:
            found += _requirements_file(base, str(source["requirements"]), (*where, "requirements"), problems)
        for index, text in enumerate(source.get("packages", ())):
            spot = (*where, "packages", index)
            requirement = _requirement(str(text), spot, problems)
            if requirement is not None:
                found.append((requirement, spot))
        for requirement, spot in found:
            requirements.pop(requirement.name, None)  # a later pin of a project replaces the earlier one
            requirements[requirement.name] = (requirement, spot)
    stack = Stack(
        requirements=tuple(requirement for requirement, _ in requirements.values()),
        apt_packages=tuple(_merged(defaults.get("apt_packages", ()), entry.get("apt_packages", ()),
                                   key=lambda name: name.split("=", 1)[0])),
        env=tuple(_env({**defaults.get("env", {}), **entry.get("env", {})}, at, problems).items()),
        checks=tuple(_checks(base, [*defaults.get("checks", ()), *entry.get("checks", ())], at, problems)),
        build_from_source=tuple(_merged((canonicalize_name(str(name)) for name in defaults.get(
            "build_from_source", ())), (canonicalize_name(str(name)) for name in entry.get("build_from_source", ())))),
    )
    problems += _torch_problems(requirements.values(), entry)
    for name in stack.build_from_source:
        if name not in requirements:
            problems.append(((*at, "build_from_source"), f"'{name}' is not a requirement of this image's stack"))
    return stack, problems


def _requirement(text: str, where: Where, problems: Problems,
                 hashes: Sequence[str] = ()) -> Requirement | None:
    try:
        parsed = Pep508(text)
    except InvalidRequirement as error:
        # packaging's message goes on with the line and a caret under it: its first line is the reason.
        reason = str(error).splitlines()[0] if str(error) else "not PEP 508"
        problems.append((where, f"{redact.excerpt(text)} is not a pip requirement (PEP 508): {redact.text(reason)}"))
        return None
    if parsed.url:
        problems.append((where, f"{redact.excerpt(text)} names a URL; list the project and its version instead "
                                "(the file it resolves to is pinned in versions.lock)"))
        return None
    return Requirement(text=str(parsed), name=canonicalize_name(parsed.name), hashes=tuple(hashes))


def named_file(base: Path, name: str, *, limit: int, what: str) -> tuple[Path | None, str | None]:
    """The file `name` (relative to the versions file's folder `base`) as a path that may be read, or why not:
    it must be a regular file of at most `limit` bytes inside `base`, links followed and the target checked, so
    that a changed versions.yaml cannot make the tool read (and quote, or mount into a container) what lies
    elsewhere, nor wait forever on a FIFO."""
    folder = Path(os.path.realpath(base))
    if Path(name).is_absolute():
        return None, f"{name}: {what} is named relative to the versions file's folder ({folder}), not absolutely"
    path = Path(os.path.realpath(folder / name))  # not Path.resolve(): a link loop is a RuntimeError in 3.11
    if not path.is_relative_to(folder):
        return None, (f"{name}: resolves to {path}, outside the versions file's folder ({folder}); {what} must "
                      "be a file inside it (links are followed and checked too)")
    try:
        status = path.stat()
    except OSError as error:
        return None, f"{name}: {'no such file' if isinstance(error, FileNotFoundError) else error.strerror}"
    if not stat.S_ISREG(status.st_mode):
        kind = _KINDS.get(stat.S_IFMT(status.st_mode), "not a regular file")
        return None, f"{name}: is {kind}; {what} must be a regular file"
    if status.st_size > limit:
        return None, f"{name}: is {size(status.st_size)}; {what} may be at most {size(limit)}"
    return path, None


def _requirements_file(base: Path, name: str, where: Where, problems: Problems) -> list[tuple[Requirement, Where]]:
    """The requirements of a pip requirements file: one per line (a trailing backslash continues it), comments
    dropped, `--hash=sha256:...` kept; other options refused (the index is pip_index, the file's pins are ours)."""
    path, problem = named_file(base, name, limit=MAX_REQUIREMENTS_BYTES, what="a requirements file")
    if path is None:
        problems.append((where, str(problem)))
        return []
    try:
        data = files.read_bounded(path, limit=MAX_REQUIREMENTS_BYTES, what="requirements file")
        text = data.decode("utf-8")
    except ConfigError as error:
        problems.append((where, str(error)))
        return []
    except UnicodeDecodeError as error:
        problems.append((where, f"{name}: not a text file (byte {error.start} is not UTF-8)"))
        return []
    if "\0" in text:
        problems.append((where, f"{name}: holds NUL bytes, so it is not a requirements file"))
        return []
    found: list[tuple[Requirement, Where]] = []
    file_problems: Problems = []
    for number, line in _logical_lines(text):
        spot = (*where[:-1], f"{where[-1]} ({path.name} line {number})")
        hashes = []
        for option in _HASH_OPTION.finditer(line):
            problem = sha256_problem(option["digest"]) if option["algorithm"] == "sha256" else \
                f"--hash={option['algorithm']}:... is not sha256"
            if problem:
                file_problems.append((spot, problem))
            hashes.append(option["digest"])
        requirement = _HASH_OPTION.sub("", line).strip()
        if requirement.startswith("-"):
            file_problems.append((spot, f"{redact.excerpt(requirement.split()[0], limit=30)}: only requirements "
                                        "and --hash are read from a requirements file here (the index comes "
                                        "from pip_index)"))
            continue
        parsed = _requirement(requirement, spot, file_problems, hashes)
        if parsed is not None:
            found.append((parsed, spot))
    problems += file_problems[:_QUOTED_LINES]
    if len(file_problems) > _QUOTED_LINES:
        problems.append((where, f"{name}: {len(file_problems) - _QUOTED_LINES} more lines are not requirements; "
                                "is it a pip requirements file?"))
    return found


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            yield start, line
    if pending.strip():
        yield start, pending.strip()


def _merged(first: Iterable[str], second: Iterable[str], *, key: Any = None) -> list[str]:
    """Both lists, first one's order, later duplicates (by key) left out."""
    seen: dict[str, str] = {}
    for item in (*first, *second):
        seen.setdefault(key(item) if key else item, str(item))
    return list(seen.values())


def _env(env: Mapping[str, Any], at: Where, problems: Problems) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in env.items():
        where = (*at, "env", str(name))
        if not _ENV_NAME.fullmatch(str(name)):
            problems.append((where, "is not a variable name (letters, digits and '_', not starting with a digit)"))
        elif name in PROTECTED_ENV or str(name).startswith(PROTECTED_PREFIXES):
            problems.append((where, "is set by the image or by ModelArts itself and cannot be replaced"))
        elif redact.secret_name(str(name)) or redact.has_credentials(str(value)) or redact.has_token(str(value)):
            problems.append((where, "looks like a credential, which would be stored in the image's config for "
                                    "anyone who pulls it; give it to the training job at run time instead"))
        else:
            checked[str(name)] = str(value)
    return checked


def _checks(base: Path, names: Sequence[Any], at: Where, problems: Problems) -> list[Path]:
    found: dict[str, Path] = {}
    for index, name in enumerate(names):
        where = (*at, "checks", index)
        if not str(name).endswith(".py"):
            problems.append((where, f"{name}: a check is a Python script (*.py), run as the boot command would"))
            continue
        path, problem = named_file(base, str(name), limit=MAX_CHECK_BYTES, what="a check script")
        if path is None:
            problems.append((where, str(problem)))
        elif path.name in found and found[path.name] != path:
            problems.append((where, f"{name}: another check is also named {path.name}; checks share one code "
                                    "directory in the container"))
        else:
            found[path.name] = path
    return list(found.values())


def excludes_entry_build(specifier: SpecifierSet, wanted: str | None, variant: str) -> bool:
    """Whether a requirement of torch, torchvision or torchaudio leaves out the entry's own build of it: the
    version with or without the local label of the build ('2.9.1' or '2.9.1+cu128' for a cu128 entry of 2.9.1);
    an entry without the project (no torchaudio) is left out by any requirement of it."""
    return wanted is None or not any(specifier.contains(version, prereleases=True)
                                     for version in (wanted, f"{wanted}+{variant}"))


def _torch_problems(requirements: Iterable[tuple[Requirement, Where]], entry: Mapping[str, Any]) -> Problems:
    """A requirement that names torch, torchvision or torchaudio directly must allow the entry's own build; one
    that needs another through a dependency is refused when the stack is resolved."""
    problems: Problems = []
    cuda = str(entry.get("cuda", ""))
    variant = Accelerator.of(cuda).tag
    for requirement, where in requirements:
        if requirement.name not in TORCH_FAMILY:
            continue
        wanted = entry.get(requirement.name)
        if excludes_entry_build(SpecifierSet(str(Pep508(requirement.text).specifier)),
                                None if wanted is None else str(wanted), variant):
            has = f"{requirement.name} {wanted}" if wanted else f"no {requirement.name}"
            problems.append((where, f"'{requirement.text}' asks for another {requirement.name} than "
                                    f"the entry's ({has}); the entry's torch family is fixed by its "
                                    "torch, torchvision, torchaudio and cuda keys"))
    return problems
