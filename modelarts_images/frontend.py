"""What the two front ends (tasks.py and the matrix) share: the settings as invoke sees them, the selected
images, the engine's log on stderr, and the tool's errors turned into exit codes without a traceback."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from invoke.exceptions import Exit

from modelarts_images.config import settings, versions
from modelarts_images.errors import ConfigError, ModelArtsImagesError
from modelarts_images.model import ImageSpec
from modelarts_images.options import Flags, Options, resolve
from modelarts_images.paths import ROOT

P = ParamSpec("P")
R = TypeVar("R")

SIGPIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def plain(value: Any) -> Any:
    """invoke's config proxies as plain dicts, so the library never sees invoke types."""
    if hasattr(value, "keys"):
        return {key: plain(value[key]) for key in value.keys()}  # noqa: SIM118 - proxies are not Mappings
    return value


def section_of(config: Any) -> Mapping[str, Any] | None:
    """The `modelarts` section of an invoke Config (a task's ctx.config, or one load_section() builds)."""
    section = plain(config.get(settings.SECTION, None))
    return section if isinstance(section, dict) else None


def load_section(config_file: str | None) -> Mapping[str, Any] | None:
    """invoke.yaml's `modelarts` section as invoke sees it: the project file, a runtime file (the matrix's
    --config, like `inv -f`), then INVOKE_MODELARTS_* from the environment."""
    from invoke.config import Config

    runtime = _runtime_file(config_file)
    loaded = Config(project_location=ROOT, runtime_path=runtime)
    loaded.load_project()
    if runtime is not None:
        try:
            loaded.load_runtime()
        except Exception as error:  # invoke's own errors, and the YAML parser's, name no flag
            raise ConfigError(f"--config {config_file}: cannot be read: {error}") from error
    loaded.load_shell_env()
    return section_of(loaded)


def _runtime_file(config_file: str | None) -> Path | None:
    """--config's file; ConfigError when it is missing (invoke would skip it and run with the defaults)."""
    if not config_file:
        return None
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"--config {config_file}: no such file" + (" (a directory)" if path.is_dir() else ""))
    return path


def git_revision(root: Path = ROOT, length: int = 12) -> str | None:
    """The commit HEAD names in the git checkout at `root`, read from .git without running git; None if none."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text("utf-8").strip().removeprefix("gitdir:").strip()).resolve()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text("utf-8").strip()).resolve()
        head = (git / "HEAD").read_text("utf-8").strip()
        if head.startswith("ref:"):
            ref = head.removeprefix("ref:").strip()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text("utf-8").strip()[:length]
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text("utf-8").splitlines():
                    sha, _, name = line.partition(" ")
                    if name.strip() == ref:
                        return sha[:length]
            return None
    except OSError:
        return None
    return head[:length] if all(c in "0123456789abcdef" for c in head) and head else None


def options_for(section: Mapping[str, Any] | None, flags: Flags) -> Options:
    """The run's options, merged once; the git revision is read only when a push template may need it."""
    return resolve(section, flags, root=ROOT, revision=git_revision())


def selected_images(options: Options) -> tuple[ImageSpec, ...]:
    selection = options.selection
    loaded = versions.load_versions(selection.versions, fallbacks=options.fallbacks)
    return versions.select(loaded, only=selection.only, all_images=selection.all_images)


def show_engine_log() -> None:
    """Build and push output (the engine's INFO lines) and every warning, live on stderr, unless logging is set
    up already (`inv --debug`)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("modelarts_images.engine").setLevel(logging.INFO)


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
