"""What the two front ends (tasks.py and the matrix) share: the settings as invoke sees them, the selected
images, the engine's log on stderr, the tool's errors turned into exit codes without a traceback, and the invoke
tasks made from their declaration (declared_task, Call)."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from invoke.exceptions import Exit

from modelarts_images import declared
from modelarts_images.config import settings, versions
from modelarts_images.errors import ConfigError, Interrupted, ModelArtsImagesError
from modelarts_images.model import ImageSpec
from modelarts_images.options import Flags, Options, resolve
from modelarts_images.paths import ROOT
from modelarts_images.shared import redact, yamlio

P = ParamSpec("P")
R = TypeVar("R")

SIGPIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
OUTPUT_ERROR_EXIT = 74  # EX_IOERR (sysexits.h): the output itself could not be written


def plain(value: Any) -> Any:
    """invoke's config proxies as plain dicts, so the library never sees invoke types."""
    if hasattr(value, "keys"):
        return {key: plain(value[key]) for key in value.keys()}  # noqa: SIM118 - proxies are not Mappings
    return value


def section_of(config: Any) -> Mapping[str, Any] | None:
    """The `modelarts` section of an invoke Config (a task's ctx.config, or one load_section() builds)."""
    section = plain(config.get(declared.SECTION, None))
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"invoke.yaml: {declared.SECTION}: must be a mapping of settings (got "
                          f"{type(section).__name__}); see the keys in the shipped invoke.yaml")
    return section


class _MaskedRecords(logging.Filter):
    """invoke's own --debug log prints every config file it merged: URL credentials masked there as well."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact.text(record.getMessage()), None
        return True


def guard_invoke() -> None:
    """Have invoke read its config files (invoke.yaml, `-f` files) the tool's way, before it merges them: bounded
    (an alias bomb would hang invoke's merge), and with a bad file an exit-2 message instead of a traceback; and
    mask credentials in invoke's --debug output. invoke imports tasks.py before it reads any config file, so
    calling this there covers every file it reads."""
    from invoke.config import Config
    from invoke.exceptions import Exit

    if getattr(Config._load_yaml, "guarded", False):
        return

    def load_yaml(self: Config, path: os.PathLike[Any]) -> Any:
        if not Path(path).exists():  # invoke skips a missing file only on its own errno
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        try:
            document = yamlio.read(Path(path), label=str(path))
            if document is not None and not isinstance(document, dict):
                raise ConfigError(f"{path}: must be a mapping of config sections (got {type(document).__name__})")
            section = (document or {}).get(declared.SECTION)
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{path}: {declared.SECTION}: must be a mapping of settings (got "
                                  f"{type(section).__name__}); see the keys in the shipped invoke.yaml")
            _check_settings(path, section)
        except ConfigError as error:
            raise Exit(f"error: {error}", code=ConfigError.exit_code) from None
        return document

    load_yaml.guarded = True  # type: ignore[attr-defined]
    Config._load_yaml = Config._load_yml = load_yaml  # type: ignore[method-assign]
    logging.getLogger("invoke").addFilter(_MaskedRecords())


def _check_settings(path: os.PathLike[Any], section: Mapping[str, Any] | None) -> None:
    """The file's own `modelarts` values, checked as the merged section will be, so that a bad one names the
    file it is in: once invoke has merged the files, nothing says which one a value came from, and the merged
    section's messages name invoke.yaml. (It also keeps a list where invoke.yaml has a mapping away from invoke's
    merge, which would fail with a traceback.)"""
    if not section:
        return
    try:
        settings.resolve(section, root=ROOT, env={})  # env={}: the value is the file's, whatever the environment
    except ConfigError as error:
        merged = settings.where("", env={})  # "invoke.yaml: modelarts.", how the merged section's messages begin
        lines = str(error).splitlines()
        raise ConfigError("\n".join(f"{path}: {declared.SECTION}.{line.removeprefix(merged)}"
                                    if line.startswith(merged) else line for line in lines)) from None


def load_section(config_file: str | None) -> Mapping[str, Any] | None:
    """invoke.yaml's `modelarts` section as invoke sees it: the project file, a runtime file (the matrix's
    --config, like `inv -f`), then INVOKE_MODELARTS_* from the environment."""
    from invoke.config import Config
    from invoke.exceptions import Exit

    guard_invoke()
    runtime = _runtime_file(config_file)
    loaded = Config(project_location=ROOT, runtime_path=runtime)
    try:
        loaded.load_project()
    except Exit as error:
        raise ConfigError(str(error.message).removeprefix("error: ")) from None
    if runtime is not None:
        try:
            loaded.load_runtime()
        except Exit as error:
            problem = str(error.message).removeprefix(f"error: {runtime}: ")
            if not problem.startswith(declared.SECTION):  # a value names its key; the file as a whole is unreadable
                problem = f"cannot be read: {problem}"
            raise ConfigError(f"--config {config_file}: {problem}") from None
        except Exception as error:  # invoke's own errors name no file
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


def file_images(options: Options, only: Sequence[str] = ()) -> tuple[tuple[ImageSpec, ...], tuple[ImageSpec, ...]]:
    """Every image of the versions file, in its order, and those `only` names (all of them when it names none):
    the matrix's cells, which it selects itself."""
    loaded = versions.load_versions(options.selection.versions, fallbacks=options.fallbacks)
    return loaded.images, versions.select(loaded, only=versions.split_ids(only), all_images=not only)


def show_engine_log() -> None:
    """Build and push output (the engine's INFO lines) and every warning, live on stderr, unless logging is set
    up already (`inv --debug`)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("modelarts_images.engine").setLevel(logging.INFO)


# The library turns its own failed writes into the tool's errors (WriteError, FetchError): an OSError of this kind
# that reaches a task is its output (`inv plan > /dev/full`, a terminal gone away).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG}


def _drop_stdout() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def output_failure(error: OSError) -> tuple[int, str | None] | None:
    """The exit code, and the message if any, of a front end whose output failed with `error`; None when
    `error` is not about the output. Either way stdout is left pointing at /dev/null, so that the interpreter's
    final flush cannot fail again."""
    if isinstance(error, BrokenPipeError):
        # The reader went away (`inv plan | head`): stop quietly, as command-line tools do on SIGPIPE.
        _drop_stdout()
        return SIGPIPE_EXIT, None
    if error.errno not in _OUTPUT_ERRNOS:
        return None
    _drop_stdout()  # what is left in its buffer can never be written
    return OUTPUT_ERROR_EXIT, f"error: cannot write the output: {error.strerror or error}"


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
        except Interrupted:  # what it interrupted said so, and stopped what it had started
            raise Exit("interrupted (SIGTERM)", code=Interrupted.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except OSError as error:
            failure = output_failure(error)
            if failure is None:
                raise
            code, message = failure
            raise Exit(message, code=code) from None

    return wrapper


# --------------------------------------------------------------------------------------------------------------
# invoke tasks whose flags are the declared settings


@dataclass(frozen=True, kw_only=True)
class Call:
    """A task's call: the Flags its command line fills, every flag's value by its name, and the steps declared
    for the task."""

    flags: Flags
    given: Mapping[str, Any]
    steps: tuple[declared.StepName, ...]  # what the task runs


def _flag_value(setting: declared.Setting, value: Any) -> Any:
    return tuple(value or ()) if setting.takes is declared.Takes.REPEAT else value


def declared_task(name: str) -> Callable[[Callable[[Any, Call], None]], Any]:
    """An invoke task named `name` taking the flags declared for it (declared.TASKS), in that order, with their
    declared help; the body gets the context and a Call, whose Flags hold what the command fixes itself too."""
    from invoke.tasks import task

    command = declared.TASKS[name]
    flags = declared.flags_of(command.flags, name)
    parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter(str(setting.parameter), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=None if setting.takes is declared.Takes.REPEAT else declared.flag_default(setting))
        for setting in flags]

    def make(body: Callable[[Any, Call], None]) -> Any:
        def run(c: Any, **given: Any) -> None:
            filled = {str(s.fills): _flag_value(s, given[str(s.parameter)]) for s in flags if s.fills}
            body(c, Call(flags=Flags(**filled, **command.fixed), given=given, steps=command.steps))

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # what invoke reads
        run.__name__, run.__doc__, run.__module__ = name, body.__doc__, body.__module__
        return task(exits_cleanly(run), name=name,
                    iterable=[str(s.parameter) for s in flags if s.takes is declared.Takes.REPEAT],
                    help={str(s.parameter): s.help_in(name) for s in flags})

    return make
