"""invoke.yaml's `modelarts` section, checked and merged over the built-in values (options.resolve adds flags)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelarts_images.config.versions import key_path, schema_problems, split_ids, suggest
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
    "mirrors": {},
    "reports_dir": "reports",
    "base_prefix": "",
    "extra_tags": [],
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
    mirrors: Mapping[str, str]
    reports_dir: Path
    base_prefix: str
    extra_tags: tuple[str, ...]


def resolve(section: Mapping[str, Any] | None, *, root: Path, backend: str | None = None) -> Settings:
    """Merge the invoke.yaml section over the built-in values; paths are taken from the project root.

    `backend` is the --backend flag, checked here with the configured one so both get the same message.
    """
    given = dict(section or {})
    unknown = sorted(set(given) - set(BUILTIN))
    if unknown:
        raise ConfigError("\n".join(f"invoke.yaml: {SECTION}.{key}: unknown key{suggest(key, BUILTIN)}"
                                    for key in unknown))
    values = {**BUILTIN, **{k: v for k, v in given.items() if v is not None}}
    _check_types(values)
    if backend is not None:
        values["backend"] = backend
    fallbacks = {key: values[key] for key in IMAGE_FALLBACKS if values[key] not in (None, "")}
    problems = schema_problems({"images": [{"id": "x"}], "defaults": fallbacks})
    if problems:
        raise ConfigError("\n".join(f"invoke.yaml: {SECTION}.{key_path(path[1:])}: {message}"
                                    for path, message in problems))
    if values["backend"] not in Backend.names():
        where = "--backend" if backend is not None else f"invoke.yaml: {SECTION}.backend"
        raise ConfigError(f"{where}: must be one of {', '.join(Backend.names())}"
                          f"{suggest(str(values['backend']), Backend.names())}")
    return Settings(
        versions=root / str(values["versions"]),
        only=split_ids(values["only"]),
        all_images=_flag(values["all"]),
        fallbacks=fallbacks,
        cache_dir=root / str(values["cache_dir"]),
        backend=str(values["backend"]),
        jobs=_positive(values["jobs"], "jobs"),
        mirrors=_mirrors(values["mirrors"]),
        reports_dir=root / str(values["reports_dir"]),
        base_prefix=str(values["base_prefix"] or ""),
        extra_tags=split_ids(values["extra_tags"]),
    )


TEXT_KEYS = ("versions", "cache_dir", "reports_dir", "base_prefix", "backend")
LIST_KEYS = ("only", "extra_tags")  # a list of strings, or one string of comma- or space-separated words


def _check_types(values: Mapping[str, Any]) -> None:
    """Wrong types are caught here, before a str() or a split turns them into something else or a traceback."""
    for key in TEXT_KEYS:
        if not isinstance(values[key], str):
            raise ConfigError(f"invoke.yaml: {SECTION}.{key}: must be a string (got {values[key]!r})")
    for key in LIST_KEYS:
        value = values[key]
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"invoke.yaml: {SECTION}.{key}: must be a list of strings or one comma-separated "
                              f"string (got {value!r})")


def _positive(value: object, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"invoke.yaml: {SECTION}.{key}: must be a whole number of at least 1 (got {value!r})")
    return number


def _mirrors(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k.split(":", 1)[0] in ("http", "https", "file")
        for k, v in value.items()
    ):
        raise ConfigError(f"invoke.yaml: {SECTION}.mirrors: must map URL prefixes to replacement prefixes, "
                          "e.g. https://download.pytorch.org/whl/: https://mirror.example.com/pytorch/whl/")
    return dict(value)


def _flag(value: object) -> bool:
    # Environment overrides arrive as strings ("1", "true"); invoke.yaml gives booleans.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
