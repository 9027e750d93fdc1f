"""invoke.yaml's `modelarts` section, checked and merged over the built-in values (options.resolve adds flags)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelarts_images.config.versions import key_path, schema_problems, split_ids, suggest, text_problems
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError

SECTION = "modelarts"

# Built-in values; invoke.yaml beats them and flags beat invoke.yaml.
BUILTIN: Mapping[str, Any] = {
    "versions": "versions.yaml",
    "only": "",
    "all": False,
    "registry": None,
    "organization": None,
    "repository": None,
    "pip_index": None,
    "apt_mirror": None,
    "cache_dir": "cache",
    "backend": "buildkit",
    "jobs": 4,
    "min_speed": 1024,
    "max_file_size": 20_000_000_000,
    "mirrors": {},
    "reports_dir": "reports",
    "base_prefix": "",
    "extra_tags": [],
    "swr_project": "",
    "ci_runners": {},
}
# invoke.yaml keys that fill a versions.yaml key the file itself leaves out.
IMAGE_FALLBACKS = ("registry", "organization", "repository", "pip_index", "apt_mirror")


@dataclass(frozen=True, kw_only=True)
class Settings:
    versions: Path
    only: tuple[str, ...]
    all_images: bool
    fallbacks: Mapping[str, str]
    cache_dir: Path
    backend: str
    jobs: int
    min_speed: int  # bytes per second, averaged over a download's last minute, below which it is cut
    max_file_size: int  # bytes: a download whose size nothing else says stops here
    mirrors: Mapping[str, str]
    reports_dir: Path
    base_prefix: str
    extra_tags: tuple[str, ...]
    swr_project: str  # the IAM project of SWR's long-term login; "" for the region's own
    ci_runners: Mapping[str, tuple[str, ...]]  # cell tag (cpu, cuda12), `gpu` or `default` -> CI runner labels


def where(key: str, env: Mapping[str, str] | None = None) -> str:
    """Where a setting came from, for messages: the environment variable that set it, else invoke.yaml."""
    variable = f"INVOKE_{SECTION.upper()}_{key.upper()}"
    if variable in (os.environ if env is None else env):
        return f"{variable} (environment)"
    return f"invoke.yaml: {SECTION}.{key}"


def resolve(section: Mapping[str, Any] | None, *, root: Path, backend: str | None = None,
            env: Mapping[str, str] | None = None) -> Settings:
    """Merge the invoke.yaml section over the built-in values; paths are taken from the project root.

    `backend` is the --backend flag, checked here with the configured one so both get the same message; `env`
    (default: the process environment) only says, in messages, which INVOKE_MODELARTS_* variable set a value.
    """
    given = dict(section or {})
    unknown = sorted(set(given) - set(BUILTIN))
    if unknown:
        raise ConfigError("\n".join(f"{where(key, env)}: unknown key{suggest(key, BUILTIN)}" for key in unknown))
    untidy = [(path, message) for key, value in given.items() for path, message in text_problems(value, (key,))]
    if untidy:
        raise ConfigError("\n".join(f"{where(str(path[0]), env)}{key_path(path[1:]) and '.' + key_path(path[1:])}: "
                                    f"{message}" for path, message in untidy))
    values = {**BUILTIN, **{k: v for k, v in given.items() if v is not None}}
    _check_types(values, env)
    if backend is not None:
        values["backend"] = backend
    fallbacks = {key: values[key] for key in IMAGE_FALLBACKS if values[key] not in (None, "")}
    problems = schema_problems({"images": [{"id": "x"}], "defaults": fallbacks})
    if problems:
        raise ConfigError("\n".join(f"{where(str(path[1]), env)}{key_path(path[2:]) and '.' + key_path(path[2:])}: "
                                    f"{message}" for path, message in problems))
    if values["backend"] not in Backend.names():
        source = "--backend" if backend is not None else where("backend", env)
        raise ConfigError(f"{source}: must be one of {', '.join(Backend.names())}"
                          f"{suggest(str(values['backend']), Backend.names())}")
    return Settings(
        versions=root / str(values["versions"]),
        only=split_ids(values["only"]),
        all_images=_flag(values["all"]),
        fallbacks=fallbacks,
        cache_dir=root / str(values["cache_dir"]),
        backend=str(values["backend"]),
        jobs=_positive(values["jobs"], where("jobs", env)),
        min_speed=_positive(values["min_speed"], where("min_speed", env)),
        max_file_size=_positive(values["max_file_size"], where("max_file_size", env)),
        mirrors=_mirrors(values["mirrors"]),
        reports_dir=root / str(values["reports_dir"]),
        base_prefix=str(values["base_prefix"] or ""),
        extra_tags=split_ids(values["extra_tags"]),
        swr_project=str(values["swr_project"]).strip(),
        ci_runners=_runners(values["ci_runners"], where("ci_runners", env)),
    )


TEXT_KEYS = ("versions", "cache_dir", "reports_dir", "base_prefix", "backend", "swr_project")
LIST_KEYS = ("only", "extra_tags")  # a list of strings, or one string of comma- or space-separated words


def _check_types(values: Mapping[str, Any], env: Mapping[str, str] | None) -> None:
    """Wrong types are caught here, before a str() or a split turns them into something else or a traceback."""
    for key in TEXT_KEYS:
        if not isinstance(values[key], str):
            raise ConfigError(f"{where(key, env)}: must be a string (got {values[key]!r})")
    for key in LIST_KEYS:
        value = values[key]
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"{where(key, env)}: must be a list of strings or one comma-separated string "
                              f"(got {value!r})")


def _positive(value: object, source: str) -> int:
    try:
        number = int(str(value))
    except ValueError:  # not a number, or more digits than Python converts
        number = 0
    if number < 1:
        raise ConfigError(f"{source}: must be a whole number of at least 1 (got {str(value)[:40]!r})")
    return number


def _mirrors(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k.split(":", 1)[0] in ("http", "https", "file")
        for k, v in value.items()
    ):
        raise ConfigError(f"{where('mirrors')}: must map URL prefixes to replacement prefixes, "
                          "e.g. https://download.pytorch.org/whl/: https://mirror.example.com/pytorch/whl/")
    return dict(value)


_RUNNER_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _runners(value: object, source: str) -> Mapping[str, tuple[str, ...]]:
    """{tag: label or [labels]} -> {tag: (labels,)}."""
    example = "e.g. {cpu: ubuntu-latest, cuda12: [self-hosted, gpu], default: ubuntu-latest}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: must map cell tags (cpu, cuda11, cuda12, gpu, default) to runner labels, "
                          f"{example}")
    runners = {}
    for key, labels in value.items():
        if not isinstance(key, str) or not _RUNNER_KEY.match(key):
            raise ConfigError(f"{source}: {key!r} is not a cell tag (cpu, cudaNN, gpu or default), {example}")
        listed = [labels] if isinstance(labels, str) else labels
        if not isinstance(listed, list) or not listed or not all(
                isinstance(label, str) and label.strip() for label in listed):
            raise ConfigError(f"{source}.{key}: must be a runner label or a list of them (got {labels!r}), {example}")
        runners[key] = tuple(label.strip() for label in listed)
    return runners


def _flag(value: object) -> bool:
    # Environment overrides arrive as strings ("1", "true"); invoke.yaml gives booleans.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
