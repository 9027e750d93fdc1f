"""Doctor's rows and their verdict: each check ok, warning or missing, with a one-line detail and the fix; the
table a terminal shows, the JSON a machine reads, and the error a missing check ends the task with (exit 8)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from modelarts_images.errors import DoctorError
from modelarts_images.shared import redact
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.text import one_line

Fact = str | int | float | bool | None
DETAIL_WIDTH = 500  # a detail or a fix is one line, cut here


class Level(Choice):
    OK = "ok"  # works, or is not needed by the selected work
    WARNING = "warning"  # does not work, but the selected work can run without it (or with less)
    MISSING = "missing"  # the selected work needs it and it does not work: doctor exits 8


class Need(Choice):
    """How much the selected work needs something."""

    REQUIRED = "required"  # it cannot run without: a failure is missing
    WANTED = "wanted"  # it runs with less without (a CUDA image verified on the CPU only): a failure is a warning
    NOT_NEEDED = "not needed"  # reported, never a failure


@dataclass(frozen=True, kw_only=True)
class Row:
    check: str  # what was checked: 'engine', 'disk: cache', 'source https://repo.anaconda.com', ...
    level: Level
    detail: str  # what was found, one line
    fix: str = ""  # what to do about it ('' when there is nothing to do)
    required: bool = True  # whether the selected work needs it (then a failure is missing)
    seconds: float = 0.0  # how long the check took
    facts: tuple[tuple[str, Fact], ...] = ()  # for machines (--json): the stage reached, sizes, versions, ...

    def __post_init__(self) -> None:
        # One line each, credentials masked, whoever built the row.
        object.__setattr__(self, "detail", redact.text(one_line(self.detail, DETAIL_WIDTH)))
        object.__setattr__(self, "fix", redact.text(one_line(self.fix, DETAIL_WIDTH)))


def failure(need: Need | bool) -> Level:
    """The level of a check that failed, by how much the selected work needs it."""
    required = need is Need.REQUIRED if isinstance(need, Need) else need
    if required:
        return Level.MISSING
    return Level.WARNING if need is not Need.NOT_NEEDED else Level.OK


def row(check: str, *, ok: bool, detail: str, fix: str = "", need: Need | bool = True, seconds: float = 0.0,
        facts: Mapping[str, Fact] | None = None) -> Row:
    """A row whose level follows from whether the check passed and how much the work needs it."""
    required = need is Need.REQUIRED if isinstance(need, Need) else need
    level = Level.OK if ok else failure(need)
    return Row(check=check, level=level, detail=detail, fix="" if level is Level.OK else fix, required=required,
               seconds=seconds, facts=tuple((facts or {}).items()))


@dataclass(frozen=True, kw_only=True)
class Report:
    images: tuple[str, ...]  # the selected images' ids
    rows: tuple[Row, ...]
    elapsed: float  # seconds, all checks together
    deadline: float  # the bound the checks ran under

    @property
    def missing(self) -> tuple[Row, ...]:
        return tuple(one for one in self.rows if one.level is Level.MISSING)

    @property
    def warnings(self) -> tuple[Row, ...]:
        return tuple(one for one in self.rows if one.level is Level.WARNING)

    @property
    def ok(self) -> bool:
        """Whether the selected work can run: nothing it needs is missing."""
        return not self.missing

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else DoctorError.exit_code


def error(report: Report) -> DoctorError | None:
    """The error the task ends with when something is missing (exit 8), naming each missing check."""
    if report.ok:
        return None
    named = "; ".join(f"{one.check} ({one_line(one.detail, 100)})" for one in report.missing)
    return DoctorError(f"the selected work cannot run here, {len(report.missing)} missing: {named}")


def summary(report: Report) -> str:
    counts = {level: sum(1 for one in report.rows if one.level is level) for level in Level}
    verdict = "the selected work can run" if report.ok else "the selected work cannot run"
    return (f"doctor: {', '.join(report.images)}: {verdict} ({counts[Level.OK]} ok, {counts[Level.WARNING]} "
            f"warning, {counts[Level.MISSING]} missing; {report.elapsed:.1f} s)")


def as_table(report: Report) -> str:
    """One line per check, aligned: level, check, detail; the fix on the next line under the detail."""
    level_width = max(len(level.value) for level in Level)
    check_width = max((len(one.check) for one in report.rows), default=5)
    lines = [summary(report), ""]
    for one in report.rows:
        lines.append(f"{one.level.value:<{level_width}}  {one.check:<{check_width}}  {one.detail}".rstrip())
        if one.fix:
            lines.append(f"{'':<{level_width}}  {'':<{check_width}}  fix: {one.fix}")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    document = {
        "images": list(report.images),
        "ok": report.ok,
        "exit_code": report.exit_code,
        "elapsed_s": round(report.elapsed, 3),
        "deadline_s": report.deadline,
        "rows": [{"check": one.check, "level": one.level.value, "detail": one.detail, "fix": one.fix,
                  "required": one.required, "seconds": round(one.seconds, 3),
                  "facts": {key: _fact(value) for key, value in one.facts}} for one in report.rows],
    }
    return json.dumps(document, indent=2)


def _fact(value: Fact) -> Fact:
    return redact.text(value) if isinstance(value, str) else value


def shown(report: Report, *, in_json: bool) -> str:
    return as_json(report) if in_json else as_table(report)

