"""Glue between invoke tasks and the library: settings from the context, errors turned into exits."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

from . import config, settings
from .errors import ConfigError, ModelArtsImagesError
from .model import ImageSpec

P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N", int, float)

ROOT = Path(__file__).resolve().parent.parent

SIGPIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe

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
            result = task_body(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return result
        except ModelArtsImagesError as error:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            raise Exit(f"error: {error}", code=error.exit_code) from None
        except BrokenPipeError:
            # The reader went away (`inv plan | head`): stop quietly, as command-line tools do on SIGPIPE, and
            # point stdout at /dev/null so the interpreter's final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=SIGPIPE_EXIT) from None

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


def positive_number(flag: str, text: str | None, default: N, kind: type[N]) -> N:
    """A numeric flag, taken as text because invoke turns a bad number into a traceback: above 0, or an error."""
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not value > 0:  # also refuses nan
        raise ConfigError(f"{flag}: must be above 0, got {text}")
    return value
