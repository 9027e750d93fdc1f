"""Which torch_npu / torch / CANN / Python / chip combinations exist, and which CANN ModelArts runs.

The facts live in data/ascend.yaml; this module only reads and compares them, as compat.py does for CUDA."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from packaging.version import InvalidVersion, Version

from modelarts_images.config.compat import Problem, span
from modelarts_images.errors import ConfigError
from modelarts_images.shared import yamlio

TABLE_RESOURCE = "ascend.yaml"
TABLE = f"modelarts_images/config/data/{TABLE_RESOURCE}"


@dataclass(frozen=True, kw_only=True)
class TorchNpuRelease:
    torch_npu: str
    torch: str  # the torch release its wheels pin
    cann: tuple[str, ...]  # the CANN releases it is built for
    python: tuple[str, ...]  # CPython minors with wheels on PyPI
    source: str


@dataclass(frozen=True, kw_only=True)
class AscendTable:
    releases: Mapping[str, TorchNpuRelease]
    modelarts_cann: tuple[str, ...]  # what ModelArts' Ascend drivers accept
    modelarts_drivers: tuple[str, ...]
    modelarts_source: str
    chips: tuple[str, ...]


def _order(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


@functools.cache
def load_table() -> AscendTable:
    text = resources.files(__package__).joinpath("data").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    raw = yamlio.safe_load(text)
    try:
        return AscendTable(
            releases={name: TorchNpuRelease(torch_npu=name, torch=row["torch"], cann=tuple(row["cann"]),
                                            python=tuple(row["python"]), source=row["source"])
                      for name, row in raw["torch_npu"].items()},
            modelarts_cann=tuple(raw["modelarts"]["cann"]),
            modelarts_drivers=tuple(raw["modelarts"]["drivers"]),
            modelarts_source=raw["modelarts"]["source"],
            chips=tuple(raw["chips"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:  # a broken package, not a user mistake
        raise ConfigError(f"{TABLE} is malformed: {exc!r}") from exc


def _listing(releases: list[TorchNpuRelease]) -> str:
    return ", ".join(f"{release.torch_npu} (torch {release.torch}, CANN {'/'.join(release.cann)})"
                     for release in sorted(releases, key=lambda release: _order(release.torch_npu), reverse=True))


def derive_torch_npu(*, torch: str, cann: str, table: AscendTable | None = None) -> str | None:
    """The newest torch_npu release that pins this torch and is built for this CANN; None when there is none."""
    table = load_table() if table is None else table
    fitting = [release for release in table.releases.values() if release.torch == torch and cann in release.cann]
    return max(fitting, key=lambda release: _order(release.torch_npu)).torch_npu if fitting else None


def check(*, torch: str, python: str, cann: str, chip: str, torch_npu: str | None,
          table: AscendTable | None = None) -> list[Problem]:
    """Every way an Ascend entry departs from what was published, or from what ModelArts runs."""
    table = load_table() if table is None else table
    problems: list[Problem] = []
    if chip not in table.chips:
        problems.append(Problem(key="npu", message=f"'{chip}' is not an Ascend chip CANN images are published for "
                                                   f"(chips: {', '.join(table.chips)}; ModelArts' Snt9B is 910b)"))
    if cann not in table.modelarts_cann:
        problems.append(Problem(key="cann", message=(
            f"CANN {cann} is not one ModelArts' Ascend drivers run ({', '.join(table.modelarts_drivers)} take "
            f"CANN {', '.join(table.modelarts_cann)}; {table.modelarts_source}): a training job with it fails as it "
            "starts")))
    for_cann = [release for release in table.releases.values() if cann in release.cann]
    if torch_npu is None:
        derived = derive_torch_npu(torch=torch, cann=cann, table=table)
        if derived is None:
            for_torch = [release for release in table.releases.values() if release.torch == torch]
            problems.append(Problem(key="torch", message=(
                f"no torch_npu release pins torch {torch} for CANN {cann} (for CANN {cann}: "
                f"{_listing(for_cann) or 'none known'}; for torch {torch}: {_listing(for_torch) or 'none'}; "
                f"see {TABLE})")))
            return problems
        torch_npu = derived
    release = table.releases.get(torch_npu)
    if release is None:
        known = sorted(table.releases, key=_order)
        return [*problems, Problem(key="torch_npu", message=(
            f"torch_npu {torch_npu} is not a release this tool knows (known: {known[0]} to {known[-1]}; "
            f"see {TABLE})"))]
    if release.torch != torch:
        problems.append(Problem(key="torch", message=f"torch_npu {torch_npu} pins torch {release.torch}, not {torch}"))
    if cann not in release.cann:
        problems.append(Problem(key="cann", message=(
            f"torch_npu {torch_npu} is built for CANN {', '.join(release.cann)}, not {cann} (for CANN {cann}: "
            f"{_listing(for_cann) or 'none known'})")))
    if python not in release.python:
        problems.append(Problem(key="python", message=(
            f"torch_npu {torch_npu} has no wheels for Python {python} (available: {span(release.python)})")))
    return problems
