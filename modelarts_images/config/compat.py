"""Which torch / torchvision / torchaudio / Python / CUDA combinations have wheels.

The facts live in data/compat.yaml; this module only reads and compares them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from modelarts_images.errors import ConfigError
from modelarts_images.model import CPU, Accelerator
from modelarts_images.shared import yamlio

TABLE_RESOURCE = "compat.yaml"


@dataclass(frozen=True, kw_only=True)
class Release:
    """One torch release and what was published beside it."""

    torch: str
    torchvision: str | None
    torchaudio: str | None  # the one the PyTorch index serves beside this torch
    python: tuple[str, ...]
    cuda: tuple[str, ...]  # CUDA variants besides the CPU build, e.g. ("10.2", "11.1")
    index: Literal["flat", "simple"]
    torchaudio_also: tuple[str, ...] = ()  # documented to work too, but not on the PyTorch index (PyPI only)
    source: str = ""  # where these facts were checked

    @property
    def accelerators(self) -> tuple[Accelerator, ...]:
        """The builds published for this torch: the CPU one, then one for each CUDA release."""
        return (Accelerator(), *(Accelerator(cuda) for cuda in self.cuda))


@dataclass(frozen=True, kw_only=True)
class Problem:
    """A combination that does not exist, pinned to the key that asks for it."""

    key: str
    message: str


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def span(versions: tuple[str, ...]) -> str:
    """'3.8–3.11' for a run of consecutive minors, else a comma list."""
    if not versions:
        return "none"
    ordered = sorted(versions, key=version_key)
    minors = [version_key(v) for v in ordered]
    consecutive = all(b[0] == a[0] and b[1] == a[1] + 1 for a, b in itertools.pairwise(minors))
    if consecutive and len(ordered) > 2:
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(ordered)


@functools.cache
def load_table() -> Mapping[str, Release]:
    text = resources.files(__package__).joinpath("data").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    raw = yamlio.safe_load(text)
    try:
        return {
            torch: Release(
                torch=torch,
                torchvision=entry.get("torchvision"),
                torchaudio=entry.get("torchaudio"),
                python=tuple(entry["python"]),
                cuda=tuple(entry["cuda"]),
                index=entry["index"],
                torchaudio_also=tuple(entry.get("torchaudio_also", ())),
                source=entry["source"],
            )
            for torch, entry in raw["releases"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:  # a broken package, not a user mistake
        raise ConfigError(f"modelarts_images/config/data/{TABLE_RESOURCE} is malformed: {exc!r}") from exc


def check(
    *,
    torch: str,
    python: str,
    cuda: str,
    torchvision: str | None,
    torchaudio: str | None,
    wheels_listed: bool = False,
    table: Mapping[str, Release] | None = None,
) -> list[Problem]:
    """Every way the requested combination departs from what was published. `wheels_listed`: the entry lists
    its wheels itself, so a release the PyTorch index does not serve may be asked for."""
    table = load_table() if table is None else table
    release = table.get(torch)
    if release is None:
        known = sorted(table, key=version_key)
        return [
            Problem(
                key="torch",
                message=f"torch {torch} is not a release this tool knows "
                f"(known: {known[0]} to {known[-1]}; see modelarts_images/config/data/{TABLE_RESOURCE})",
            )
        ]
    problems: list[Problem] = []
    if python not in release.python:
        problems.append(
            Problem(
                key="python",
                message=f"torch {torch} has no wheels for Python {python} (available: {span(release.python)})",
            )
        )
    if Accelerator.of(cuda) not in release.accelerators:
        available = ", ".join([*sorted(release.cuda, key=version_key), CPU])
        problems.append(
            Problem(
                key="cuda",
                message=f"torch {torch} has no wheels for CUDA {cuda} (available: {available})",
            )
        )
    for name, asked, published in (
        ("torchvision", torchvision, release.torchvision),
        ("torchaudio", torchaudio, release.torchaudio),
    ):
        if asked is None or asked == published:
            continue
        if name == "torchaudio" and asked in release.torchaudio_also:
            if not wheels_listed:
                problems.append(Problem(key=name, message=(
                    f"torchaudio {asked} works with torch {torch}, but the PyTorch index does not serve it (it is "
                    f"on PyPI only; beside torch {torch} the index serves torchaudio {published}): use "
                    f"torchaudio: \"{published}\", or list the torchaudio {asked} wheel under wheels:")))
            continue
        if published is None:
            message = f"torch {torch} has no matching {name} release; leave {name} out"
        else:
            also = release.torchaudio_also if name == "torchaudio" else ()
            message = f"torch {torch} goes with {name} {' or '.join((published, *also))}, not {asked}"
        problems.append(Problem(key=name, message=message))
    return problems
