"""invoke.yaml's `modelarts` section, checked and merged over the built-in values (options.resolve adds flags)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from modelarts_images import declared
from modelarts_images.config.versions import schema_problems, split_ids, suggest, text_problems
from modelarts_images.declared import SECTION, Kind
from modelarts_images.errors import ConfigError
from modelarts_images.shared import redact
from modelarts_images.shared.yamlio import key_path

# Built-in values; invoke.yaml beats them and flags beat invoke.yaml (declared once, with every other setting).
BUILTIN = declared.BUILTIN
# invoke.yaml keys that fill a versions.yaml key the file itself leaves out.
IMAGE_FALLBACKS = tuple(key for key, setting in declared.BY_KEY.items() if setting.kind is Kind.IMAGE)


class Settings(declared.Values):
    """The section's values, checked: one per declared key (the IMAGE keys together as `fallbacks`, the
    invoke.yaml values for versions.yaml keys an entry leaves out)."""

    NAMES: ClassVar[Mapping[str, Any]] = {"fallbacks": {}, **{key: None for key in BUILTIN
                                                                if key not in IMAGE_FALLBACKS}}


def where(key: str, env: Mapping[str, str] | None = None) -> str:
    """Where a setting came from, for messages: the environment variable that set it, else invoke.yaml."""
    variable = declared.variable_name(key)
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
    for key, setting in declared.BY_KEY.items():
        if setting.choices and values[key] not in setting.choices:
            source = f"--{key}" if key == "backend" and backend is not None else where(key, env)
            raise ConfigError(f"{source}: must be one of {', '.join(setting.choices)}"
                              f"{suggest(str(values[key]), setting.choices)}")
    checked = {key: _CONVERT[setting.kind](values[key], where(key, env), root)
               for key, setting in declared.BY_KEY.items() if setting.kind is not Kind.IMAGE}
    return Settings(fallbacks=fallbacks, **checked)


def _check_types(values: Mapping[str, Any], env: Mapping[str, str] | None) -> None:
    """Wrong types are caught here, before a str() or a split turns them into something else or a traceback."""
    for key, setting in declared.BY_KEY.items():
        value = values[key]
        if setting.kind in (Kind.TEXT, Kind.PATH) and not isinstance(value, str):
            raise ConfigError(f"{where(key, env)}: must be a string (got {redact.excerpt(value)})")
        if setting.kind is Kind.WORDS and not (
                isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"{where(key, env)}: must be a list of strings or one comma-separated string "
                              f"(got {redact.excerpt(value)})")


def _positive(value: object, source: str, root: Path) -> int:
    try:
        number = int(str(value))
    except ValueError:  # not a number, or more digits than Python converts
        number = 0
    if number < 1:
        raise ConfigError(f"{source}: must be a whole number of at least 1 "
                          f"(got {redact.excerpt(str(value), limit=40)})")
    return number


def _mirrors(value: object, source: str, root: Path) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k.split(":", 1)[0] in ("http", "https", "file")
        for k, v in value.items()
    ):
        raise ConfigError(f"{source}: must map URL prefixes to replacement prefixes, "
                          "e.g. https://download.pytorch.org/whl/: https://mirror.example.com/pytorch/whl/")
    return dict(value)


_RUNNER_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _runners(value: object, source: str, root: Path) -> Mapping[str, tuple[str, ...]]:
    """{tag: label or [labels]} -> {tag: (labels,)}."""
    example = "e.g. {cpu: ubuntu-latest, cuda12: [self-hosted, gpu], default: ubuntu-latest}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: must map cell tags (cpu, cuda11, cuda12, npu, aarch64, gpu, default) to runner "
                          "labels, "
                          f"{example}")
    runners = {}
    for key, labels in value.items():
        if not isinstance(key, str) or not _RUNNER_KEY.match(key):
            raise ConfigError(f"{source}: {redact.excerpt(str(key))} is not a cell tag (cpu, cudaNN, gpu or default), "
                              f"{example}")
        listed = [labels] if isinstance(labels, str) else labels
        if not isinstance(listed, list) or not listed or not all(
                isinstance(label, str) and label.strip() for label in listed):
            raise ConfigError(f"{source}.{key}: must be a runner label or a list of them "
                              f"(got {redact.excerpt(labels)}), {example}")
        runners[key] = tuple(label.strip() for label in listed)
    return runners


def _flag(value: object, source: str, root: Path) -> bool:
    # Environment overrides arrive as strings ("1", "true"); invoke.yaml gives booleans.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _text(value: object, source: str, root: Path) -> str:
    return str(value or "").strip()


def _path(value: object, source: str, root: Path) -> Path:
    return root / str(value)


def _words(value: object, source: str, root: Path) -> tuple[str, ...]:
    return split_ids(value)  # type: ignore[arg-type]  # _check_types made it text or a list of texts


# How each kind of key is turned into its value (each names its source in a refusal).
_CONVERT: Mapping[Kind, Callable[[Any, str, Path], Any]] = {
    Kind.TEXT: _text, Kind.PATH: _path, Kind.SWITCH: _flag, Kind.COUNT: _positive, Kind.WORDS: _words,
    Kind.MIRRORS: _mirrors, Kind.RUNNERS: _runners,
}
