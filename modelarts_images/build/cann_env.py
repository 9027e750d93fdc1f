"""CANN's environment, read from the base image's own set_env.sh at build time and put into the image as ENV.

ModelArts starts the boot command without a shell, so nothing sources set_env.sh: without these variables torch_npu
cannot find CANN's libraries. The base image is run once with a POSIX shell that sources the file and prints the
environment before and after; what the file set or changed becomes the image's ENV. The shell starts from the
image's own PATH (the base's, then conda's bin), so a PATH the file extends keeps conda's python reachable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Where CANN's installers put set_env.sh: the toolkit (CANN 8.x and older, and Ascend's CANN images) and the newer
# versioned layout's link.
SET_ENV_CANDIDATES = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", "/usr/local/Ascend/cann/set_env.sh",
                      "/usr/local/Ascend/ascend-toolkit/latest/set_env.sh")
# What any shell sets for itself: never CANN's.
_SHELL_OWN = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "HOME", "HOSTNAME", "TERM", "SHELL", "USER", "LOGNAME"})
_BEFORE, _AFTER, _FOUND, _NONE = "=before=", "=after=", "=set_env=", "=no-set_env="
# $1: conda's bin directory; $2...: the candidates, the first that exists is sourced. Each part of the output is
# NUL-separated (env -0), so a value may hold a newline.
PROBE_SCRIPT = (
    'bin="$1"; shift; PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}:$bin"; '
    "export PATH; "
    'for f in "$@"; do if [ -f "$f" ]; then found="$f"; break; fi; done; '
    f'if [ -z "${{found:-}}" ]; then printf "{_NONE}\\0"; exit 0; fi; '
    f'printf "{_FOUND}\\0%s\\0{_BEFORE}\\0" "$found"; env -0; '
    '. "$found" >/dev/null 2>&1 || exit 3; '
    f'printf "{_AFTER}\\0"; env -0'
)


@dataclass(frozen=True, kw_only=True)
class CannEnvironment:
    set_env: str | None  # the file that was sourced; None: the base has none where CANN puts it
    variables: tuple[tuple[str, str], ...]  # (name, value) the file set or changed, in name order


def probe_command(conda_bin: str, candidates: Sequence[str]) -> tuple[str, ...]:
    return ("/bin/sh", "-c", PROBE_SCRIPT, "sh", conda_bin, *candidates)


def candidates(configured: str | None) -> tuple[str, ...]:
    """The entry's cann_set_env alone, or where CANN installs the file."""
    return (configured,) if configured else SET_ENV_CANDIDATES


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables `after` sets or changes compared with `before` (a shell's own left out), by name."""
    return tuple(sorted((name, value) for name, value in after.items()
                        if name not in _SHELL_OWN and before.get(name) != value))


def _environment(records: Sequence[str]) -> dict[str, str]:
    pairs = (record.partition("=") for record in records if "=" in record)
    return {name: value for name, _, value in pairs}


def parse(output: str) -> CannEnvironment:
    """What the probe printed, as the file it found and the variables it set. ValueError for anything else."""
    records = output.split("\0")
    if records and records[0] == _NONE:
        return CannEnvironment(set_env=None, variables=())
    if len(records) < 3 or records[0] != _FOUND or records[2] != _BEFORE or _AFTER not in records:
        raise ValueError("not the probe's output")
    after_at = records.index(_AFTER)
    before = _environment(records[3:after_at])
    after = _environment(records[after_at + 1:])
    return CannEnvironment(set_env=records[1], variables=changes(before, after))
