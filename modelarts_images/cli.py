"""Glue between invoke tasks and the library: settings from the context, errors turned into exits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

from . import config, settings
from .errors import ModelArtsImagesError
from .model import ImageSpec

P = ParamSpec("P")
R = TypeVar("R")

ROOT = Path(__file__).resolve().parent.parent

SELECTION_HELP = {
    "versions": "versions file to read (default: versions.yaml, or modelarts.versions in invoke.yaml)",
    "only": "image id to work on; repeat for several (default: the entry marked default: true)",
    "all": "work on every image in the versions file",
}


def exits_cleanly(task_body: Callable[P, R]) -> Callable[P, R]:
    """Turn the tool's errors into invoke.Exit with their exit code; `inv --debug` keeps the traceback."""

    @functools.wraps(task_body)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return task_body(*args, **kwargs)
        except ModelArtsImagesError as error:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            raise Exit(f"error: {error}", code=error.exit_code) from None

    return wrapper


def tool_settings(
    ctx: Context, *, versions: str | None = None, only: Sequence[str] = (), all_images: bool = False,
    backend: str | None = None,
) -> settings.Settings:
    section = _plain(ctx.config.get(settings.SECTION, None))
    return settings.resolve(section, root=ROOT, versions=versions, only=only, all_images=all_images, backend=backend)


def _plain(value: Any) -> Any:
    """invoke's config proxies as plain dicts, so the library never sees invoke types."""
    if hasattr(value, "keys"):
        return {key: _plain(value[key]) for key in value.keys()}  # noqa: SIM118 - proxies are not Mappings
    return value


def selected_images(resolved: settings.Settings) -> tuple[ImageSpec, ...]:
    selection = resolved.selection
    versions = config.load_versions(selection.versions, fallbacks=resolved.fallbacks)
    return config.select(versions, only=selection.only, all_images=selection.all_images)
