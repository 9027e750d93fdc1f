"""Load versions.yaml: parse, check against versions.schema.json, apply defaults, check the meaning.

Every message names the file and the key path so the user can go straight to the line to fix.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from modelarts_images.config import ascend, compat
from modelarts_images.config.references import derived_tag
from modelarts_images.config.stack import read_stack
from modelarts_images.config.wheels import TORCH_FAMILY, installer_problem, wheel_distribution, wheel_problem
from modelarts_images.contract import RunUser
from modelarts_images.errors import ConfigError
from modelarts_images.model import (
    AARCH64,
    ARCH_SPELLINGS,
    CPU,
    X86_64,
    Accelerator,
    Artifact,
    Ascend,
    ImageSpec,
    Stack,
    VersionsFile,
    filename_problem,
)
from modelarts_images.shared import redact, yamlio
from modelarts_images.shared.yamlio import key_path

# Keys that must have a value once defaults are applied; registry, organization and repository
# may also come from invoke.yaml. An Ascend entry has no `cuda` (its torch is the CPU build) but needs its own.
REQUIRED_KEYS = ("python", "cuda", "torch", "installer", "base_image")
ASCEND = "ascend"
ASCEND_KEYS = ("cann", "npu")
ASCEND_ONLY_KEYS = ("cann", "npu", "torch_npu", "cann_set_env")
# Ascend's CANN images are tagged <cann>-<chip>-<os>-py<python> (quay.io/ascend/cann, SWR's ascendhub/cann).
_CANN_IMAGE_TAG = re.compile(r":(?P<cann>\d+\.\d+\.[0-9A-Za-z]+)-(?P<chip>[0-9a-z]+)-(?P<os>[a-z]+[0-9.]*)-py"
                             r"(?P<python>3\.\d+)$")
PUBLISHING_KEYS = ("registry", "organization", "repository")

# Used when neither versions.yaml nor invoke.yaml says otherwise: the recipe's registry and Huawei's mirrors.
BUILTIN_DEFAULTS: Mapping[str, str] = {
    "registry": "swr.cn-north-4.myhuaweicloud.com",
    "repository": "pytorch",
    "pip_index": "https://repo.huaweicloud.com/repository/pypi/simple",
    "apt_mirror": "http://repo.huaweicloud.com",
}


class _Number:
    """Mixin that keeps the text YAML read a number from, so a message can show it quoted."""

    raw: str


class _Float(float, _Number):
    pass


class _Int(int, _Number):
    pass


class _StrictLoader(yaml.SafeLoader):  # the pure-Python parser: its messages name what it expected
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _construct_float(loader: _StrictLoader, node: yaml.ScalarNode) -> float:
    value = _Float(loader.construct_yaml_float(node))
    value.raw = node.value
    return value


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    value = _Int(loader.construct_yaml_int(node))
    value.raw = node.value
    return value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data").joinpath("versions.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _type_message(error: jsonschema.ValidationError) -> str:
    expected: str | list[str] = error.validator_value  # type: ignore[assignment]
    wanted = " or ".join(["null" if t == "null" else f"a {t}" if t != "object" else "a mapping"
                          for t in ([expected] if isinstance(expected, str) else expected)])
    wanted = wanted.replace("a array", "a list").replace("a integer", "an integer")
    got = error.instance
    if isinstance(got, _Number) and "string" in expected:
        key = error.path[-1] if error.path else "value"
        return f'must be a string: YAML reads {got.raw} as a number, so quote it ({key}: "{got.raw}")'
    return f"must be {wanted} (got {_type_name(got)})"


def schema_problems(document: object) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    validator = jsonschema.Draft202012Validator(schema())
    for error in validator.iter_errors(document):
        path = tuple(error.absolute_path)
        where = error.schema if isinstance(error.schema, dict) else {}
        if error.validator == "additionalProperties":
            allowed = list(where.get("properties", {}))
            for extra in sorted(set(error.instance) - set(allowed), key=str):
                hint = suggest(str(extra), allowed)
                if not hint and path == ("defaults",) and extra in ("id", "default", "tag", "wheels"):
                    hint = f" ('{extra}' can only be set on each image)"
                problems.append(((*path, str(extra)), f"unknown key{hint}"))
        elif error.validator == "required":
            required: list[str] = list(error.validator_value)
            for missing in required:
                # A misspelt key already points here ("did you mean 'images'?"): one message is enough.
                misspelt = any(key not in where.get("properties", {}) and suggest(str(key), [missing])
                               for key in error.instance)
                if missing not in error.instance and not misspelt:
                    problems.append((path, f"missing required key '{missing}'"))
        elif error.validator == "type":
            problems.append((path, _type_message(error)))
        elif "x-message" in where:
            problems.append((path, str(where["x-message"])))
        else:
            problems.append((path, error.message))
    return problems


def _fail(label: str, problems: Sequence[tuple[tuple[str | int, ...] | str, str]]) -> ConfigError:
    lines = []
    for path, message in problems:
        where = path if isinstance(path, str) else key_path(path)
        lines.append(f"{label}: {where}: {message}" if where else f"{label}: {message}")
    # The last line of defence: whatever a check quoted, no URL credentials or token-shaped word is shown.
    return ConfigError("\n".join(dict.fromkeys(redact.text(line) for line in lines)))


def parse_yaml(path: Path) -> object:
    """Read a YAML file, turning every way that can fail into a ConfigError naming the file."""
    document = yamlio.read(path, loader=_StrictLoader)
    if document is None:
        raise ConfigError(f"{path.name}: the file is empty; it needs an 'images:' list "
                          "(see docs/reference/versions-file.md)")
    return document


def text_problems(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every key and text value that is not one clean line: a line break, a control character, or spaces at
    either end. JSON Schema patterns end with `$`, which Python lets match before a final newline, so
    `sha256: "<hex>\\n"` would pass the schema and then fail with a baffling "expected X, got X"."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):
        if value != value.strip() or any(ord(char) < 32 or ord(char) == 127 for char in value):
            # Masked whichever check fails first: a PEM key or a token with a newline fails this one.
            secret = bool(path) and redact.secret_name(str(path[-1]))
            shown = "the value" if secret else redact.excerpt(value)
            problems.append((path, f"{shown} must be one line, without control characters or spaces at either "
                                   "end"))
    elif isinstance(value, dict):
        for key, item in value.items():
            problems += text_problems(key, path) if isinstance(key, str) and key != key.strip() else []
            problems += text_problems(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += text_problems(item, (*path, index))
    return problems


def load_versions(path: Path, *, fallbacks: Mapping[str, str] | None = None) -> VersionsFile:
    """Load and check versions.yaml; fallbacks (from invoke.yaml) fill keys the file leaves out."""
    label = path.name
    document = parse_yaml(path)
    if not isinstance(document, dict):
        raise ConfigError(f"{label}: must be a mapping with an 'images:' list (got {_type_name(document)})")
    structural = text_problems(document) or schema_problems(document)
    if structural:
        raise _fail(label, sorted(structural, key=lambda p: [str(x).zfill(6) for x in p[0]]))
    defaults = document.get("defaults", {})
    inherited = {**BUILTIN_DEFAULTS, **(fallbacks or {}), **defaults}
    merged = [_accelerated({**inherited, **entry, "user": {**defaults.get("user", {}), **entry.get("user", {})}},
                           own=entry)
              for entry in document["images"]]
    problems = [p for index, entry in enumerate(merged) for p in _entry_problems(index, entry)]
    stacks = []
    for index, (entry, merged_entry) in enumerate(zip(document["images"], merged, strict=True)):
        stack, found = read_stack(defaults, {**entry, **{key: merged_entry[key] for key in TORCH_FAMILY
                                                        if key in merged_entry}},
                                  base=path.parent, at=("images", index))
        stacks.append(stack)
        problems += found
    problems += _cross_entry_problems(merged)
    if problems:
        raise _fail(label, problems)
    return VersionsFile(path=str(path), images=tuple(_to_spec(entry, stack) for entry, stack in zip(merged, stacks,
                                                                                               strict=True)))


def _accelerated(entry: dict[str, Any], *, own: Mapping[str, Any]) -> dict[str, Any]:
    """The merged entry with its accelerator and architecture spelt out: an Ascend entry's torch is the CPU build
    (a `cuda` it inherits from defaults is not its own) and it runs on aarch64."""
    if entry.get("accelerator") == ASCEND:
        if "cuda" not in own:
            entry["cuda"] = CPU
        entry.setdefault("arch", AARCH64)
    if "arch" in entry:
        entry["arch"] = ARCH_SPELLINGS.get(entry["arch"], entry["arch"])
    return entry


def _accelerator_problems(at: tuple[str | int, ...], entry: Mapping[str, Any]
                          ) -> list[tuple[tuple[str | int, ...], str]]:
    """The accelerator's keys against each other: `accelerator` and `cuda`, an Ascend entry's own keys and arch."""
    asked = entry.get("accelerator")
    cuda = entry["cuda"]
    if asked == ASCEND:
        problems = [((*at, key), f"an Ascend entry needs '{key}' (e.g. {key}: \"{example}\")")
                    for key, example in zip(ASCEND_KEYS, ("8.2.RC1", "910b"), strict=True) if key not in entry]
        if cuda != CPU:
            problems.append(((*at, "cuda"), f"an Ascend image has no CUDA (its torch is the CPU build, torch_npu runs "
                                            f"it on the NPU): leave cuda out, not \"{cuda}\""))
        if entry.get("arch") != AARCH64:
            problems.append(((*at, "arch"), "ModelArts' Ascend flavours are aarch64: an Ascend entry is arch: aarch64 "
                                            f"(leave arch out), not {entry.get('arch')}"))
        return problems
    problems = [((*at, key), f"'{key}' is for Ascend images only (accelerator: ascend)")
                for key in ASCEND_ONLY_KEYS if key in entry]
    if asked == CPU and cuda != CPU:
        problems.append(((*at, "cuda"), f"accelerator: cpu, but cuda: \"{cuda}\" asks for a CUDA build; use cuda: cpu"))
    if asked == "cuda" and cuda == CPU:
        problems.append(((*at, "cuda"), "accelerator: cuda, but cuda: cpu; give the CUDA release (e.g. \"12.1\")"))
    return problems


def _base_image_problem(entry: Mapping[str, Any]) -> str | None:
    """An Ascend CANN image tag (<cann>-<chip>-<os>-py<python>) that names another CANN, chip or Python."""
    tag = _CANN_IMAGE_TAG.search(entry["base_image"])
    if tag is None:
        return None
    wrong = [f"{what} {tag[key]} (the entry has {entry[name]})" for what, key, name in
             (("CANN", "cann", "cann"), ("chip", "chip", "npu"), ("Python", "python", "python"))
             if tag[key].lower() != str(entry[name]).lower()]
    return f"the base image's tag names {', '.join(wrong)}: pick the CANN image that matches" if wrong else None


def _entry_problems(index: int, entry: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    at: tuple[str | int, ...] = ("images", index)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for key in REQUIRED_KEYS:
        if key not in entry:
            problems.append((at, f"missing key '{key}' (set it on the image or under defaults)"))
    for key in PUBLISHING_KEYS:
        if key not in entry:
            problems.append((at, f"missing key '{key}' (set it on the image, under defaults or in invoke.yaml)"))
    problems += _accelerator_problems(at, entry)
    if problems:
        return problems
    for problem in compat.check(
        torch=entry["torch"],
        python=entry["python"],
        cuda=entry["cuda"],
        torchvision=entry.get("torchvision"),
        torchaudio=entry.get("torchaudio"),
        wheels_listed=bool(entry.get("wheels")),
    ):
        problems.append(((*at, problem.key), problem.message))
    packages: tuple[str, ...] = TORCH_FAMILY
    versions: Mapping[str, Any] = entry
    if entry.get("accelerator") == ASCEND:
        packages += ("torch_npu",)
        derived = None if entry.get("torch_npu") else ascend.derive_torch_npu(torch=entry["torch"], cann=entry["cann"])
        if derived:  # listed wheels are checked against the torch_npu the image gets, given or derived
            versions = {**entry, "torch_npu": derived}
        for problem in ascend.check(torch=entry["torch"], python=entry["python"], cann=entry["cann"],
                                    chip=entry["npu"], torch_npu=entry.get("torch_npu")):
            problems.append(((*at, problem.key), problem.message))
        message = _base_image_problem(entry)
        if message:
            problems.append(((*at, "base_image"), message))
    arch = entry.get("arch", X86_64)
    installer = Artifact(url=entry["installer"]["url"], sha256=None)
    message = artifact_url_problem(installer.url) or installer_problem(installer.filename, python=entry["python"],
                                                                       arch=arch)
    if message:
        problems.append(((*at, "installer", "url"), message))
    wheels = entry.get("wheels", [])
    listed: set[str] = set()
    for position, wheel in enumerate(wheels):
        filename = Artifact(url=wheel["url"], sha256=None).filename
        message = artifact_url_problem(wheel["url"]) or wheel_problem(filename, python=entry["python"],
                                                                      cuda=entry["cuda"], versions=versions, arch=arch)
        if message:
            problems.append(((*at, "wheels", position, "url"), message))
        listed.add(wheel_distribution(filename) or filename)
    if wheels:
        for package in packages:
            if package in versions and package not in listed:
                given = (f"{package}: {entry[package]} is set" if package in entry else
                         f"the image gets {package} {versions[package]} (derived from torch and cann)")
                problems.append(((*at, "wheels"), f"lists no {package} wheel, but {given} (add its wheel, or leave "
                                 "wheels out to derive them)"))
            elif package in listed and package not in versions:
                problems.append(((*at, "wheels"), f"lists a {package} wheel, but {package} is not set"))
    return problems


def artifact_url_problem(url: str) -> str | None:
    """Why an artifact URL cannot be fetched into the cache and recorded: credentials (they would be stored in
    versions.lock and in the image's labels) or a file name that is really a path."""
    if redact.has_credentials(url):
        return (f"{redact.url(url)} carries a user name or password, which would be stored in versions.lock and "
                "the image's labels; give them to a mirror in invoke.yaml (mirrors: {URL prefix: prefix with "
                "user:password@}) or to ~/.netrc, and list the plain URL here")
    return filename_problem(Artifact(url=url, sha256=None).filename)


def _cross_entry_problems(entries: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    first_with_id: dict[str, int] = {}
    first_with_reference: dict[str, int] = {}
    first_default: int | None = None
    for index, entry in enumerate(entries):
        known = first_with_id.setdefault(entry["id"], index)
        if known != index:
            problems.append((("images", index, "id"), f"'{entry['id']}' is already used by images[{known}]"))
        if entry.get("default"):
            if first_default is None:
                first_default = index
            else:
                problems.append((("images", index, "default"),
                                 f"only one image may be the default; images[{first_default}] already is"))
        if all(key in entry for key in ("torch", "cuda", *PUBLISHING_KEYS)):
            reference = _reference(entry)
            known = first_with_reference.setdefault(reference, index)
            if known != index:
                problems.append((("images", index), f"its image reference {reference} is the same as "
                                 f"images[{known}]'s; give one of them a different tag"))
    return problems


def _reference(entry: Mapping[str, Any]) -> str:
    tag = entry.get("tag") or derived_tag(torch=entry["torch"], accelerator=_accelerator_of(entry),
                                          arch=entry.get("arch", X86_64))
    return f"{entry['registry']}/{entry['organization']}/{entry['repository']}:{tag}"


def _accelerator_of(entry: Mapping[str, Any]) -> Accelerator:
    if entry.get("accelerator") == ASCEND:
        return Accelerator(cann=entry.get("cann"), chip=entry.get("npu"))
    return Accelerator.of(entry["cuda"])


def _ascend_of(entry: Mapping[str, Any]) -> Ascend | None:
    if entry.get("accelerator") != ASCEND:
        return None
    torch_npu = entry.get("torch_npu") or ascend.derive_torch_npu(torch=entry["torch"], cann=entry["cann"])
    assert torch_npu is not None, "checked by _entry_problems"
    return Ascend(cann=entry["cann"], chip=entry["npu"], torch_npu=torch_npu, set_env=entry.get("cann_set_env"))


def _artifact(raw: Mapping[str, Any]) -> Artifact:
    return Artifact(url=raw["url"], sha256=raw.get("sha256"))


def _to_spec(entry: Mapping[str, Any], stack: Stack) -> ImageSpec:
    return ImageSpec(
        id=entry["id"],
        default=bool(entry.get("default", False)),
        python=entry["python"],
        cuda=entry["cuda"],
        torch=entry["torch"],
        torchvision=entry.get("torchvision"),
        torchaudio=entry.get("torchaudio"),
        tag=entry.get("tag") or derived_tag(torch=entry["torch"], accelerator=_accelerator_of(entry),
                                            arch=entry.get("arch", X86_64)),
        registry=entry["registry"],
        organization=entry["organization"],
        repository=entry["repository"],
        base_image=entry["base_image"],
        pip_index=entry["pip_index"],
        apt_mirror=entry["apt_mirror"],
        installer=_artifact(entry["installer"]),
        wheels=tuple(_artifact(wheel) for wheel in entry.get("wheels", [])),
        stack=stack,
        user=RunUser(**entry["user"]),
        nodes=int(entry.get("verify", {}).get("nodes", 1)),
        arch=entry.get("arch", X86_64),
        ascend=_ascend_of(entry),
    )


def select(versions: VersionsFile, *, only: Sequence[str] = (), all_images: bool = False) -> tuple[ImageSpec, ...]:
    """The images a task works on: --all, the --only ids in file order, or the default entry."""
    if all_images and only:
        raise ConfigError("--all and --only exclude each other; use one of them")
    if all_images:
        return versions.images
    label = Path(versions.path).name
    if only:
        ids = [image.id for image in versions.images]
        unknown = [wanted for wanted in only if wanted not in ids]
        if unknown:
            raise ConfigError("\n".join(
                f"{label}: no image has id '{wanted}'{suggest(wanted, ids)} (ids: {', '.join(ids)})"
                for wanted in unknown))
        return tuple(image for image in versions.images if image.id in only)
    default = versions.default_image
    if default is None:
        raise ConfigError(f"{label}: no image is marked 'default: true'; choose with --only ID or --all")
    return (default,)


_SPLIT = re.compile(r"[\s,]+")


def split_ids(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Ids from a repeated flag, or from one comma/space separated string (environment, invoke.yaml)."""
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    return tuple(word for part in parts for word in _SPLIT.split(part) if word)
