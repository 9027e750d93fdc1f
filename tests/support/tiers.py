"""The closing lines of a test run: which tiers ran, and why the others did not (`tiers: ...`, after pytest's short
summary); and, with MODELARTS_IMAGES_REQUIRE_ENGINE=1, a failed run when the engine tier did not run. The hooks are
tests/conftest.py's."""

from __future__ import annotations

import collections
import os
from collections.abc import Generator
from typing import Any

import pytest

TIERS = ("unit", "engine")
REQUIRE_ENGINE = "MODELARTS_IMAGES_REQUIRE_ENGINE"
# What tests/support/engine_tier.py unavailable() appends when it fails a test instead of skipping it.
REQUIRED_SUFFIX = f" ({REQUIRE_ENGINE}=1: the engine tier must run)"
REASON_CHARS = 320
# pytest shows a failure's chained exceptions before it, even for pytest.fail(pytrace=False): the message is last.
CHAINED = ("During handling of the above exception, another exception occurred:",
           "The above exception was the direct cause of the following exception:")


def _tier(report_or_item: pytest.TestReport | pytest.Item) -> str:
    if isinstance(report_or_item, pytest.Item):
        return "engine" if report_or_item.get_closest_marker("engine") else "unit"
    return "engine" if ("tier", "engine") in report_or_item.user_properties else "unit"


def _reason(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def tier_outcomes(stats: dict[str, list[Any]]) -> dict[str, dict[str, tuple[str, str]]]:
    """Per tier, per test id: its outcome (passed, failed, error, skipped, unavailable: failed by
    MODELARTS_IMAGES_REQUIRE_ENGINE=1, xfailed, xpassed, deselected) and, for the last kinds, the reason."""
    tests: dict[str, dict[str, tuple[str, str]]] = {tier: {} for tier in TIERS}
    rank = {"passed": 0, "xpassed": 1, "xfailed": 1, "skipped": 2, "unavailable": 3, "failed": 4, "error": 4}
    for reports in stats.values():
        for report in reports:
            if isinstance(report, pytest.Item):  # stats["deselected"]
                tests[_tier(report)][report.nodeid] = ("deselected", "")
                continue
            if not isinstance(report, pytest.TestReport):
                continue
            if report.passed and report.when != "call":
                outcome, reason = "", ""  # setup and teardown that passed say nothing
            elif hasattr(report, "wasxfail"):
                outcome, reason = ("xfailed" if report.skipped else "xpassed"), ""
            elif report.skipped:
                longrepr = report.longrepr
                text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
                outcome, reason = "skipped", _reason(text.removeprefix("Skipped: "))
            elif report.failed and REQUIRED_SUFFIX in report.longreprtext:
                text = report.longreprtext.split(REQUIRED_SUFFIX, 1)[0]
                for separator in CHAINED:
                    text = text.rsplit(separator, 1)[-1]
                outcome, reason = "unavailable", _reason(text)
            elif report.failed:
                outcome, reason = ("failed" if report.when == "call" else "error"), ""
            else:
                outcome, reason = "passed", ""
            seen = tests[_tier(report)]
            if outcome and rank[outcome] >= rank.get(seen.get(report.nodeid, ("passed", ""))[0], 0):
                seen[report.nodeid] = (outcome, reason)
    return tests


def tier_lines(stats: dict[str, list[Any]], *, required: bool = False) -> list[str]:
    """The closing lines: `tiers: unit 812 passed; engine 0 of 51 ran: skipped: <reason>`, one more line per reason
    where a tier has several."""
    parts, more = [], []
    for tier, tests in tier_outcomes(stats).items():
        counts = collections.Counter(outcome for outcome, _ in tests.values())
        deselected = counts.pop("deselected", 0)
        total = sum(counts.values())
        if total == 0:
            parts.append(f"{tier} {deselected} deselected" if deselected else f"{tier}: none selected")
            continue
        groups = collections.Counter((outcome, reason) for outcome, reason in tests.values()
                                     if outcome in ("skipped", "unavailable"))
        did_not_run = sum(groups.values())
        ran = ", ".join(f"{counts[outcome]} {outcome}" for outcome in ("passed", "failed", "error", "xfailed",
                                                                       "xpassed") if counts[outcome])
        ran += f", {deselected} deselected" if deselected else ""
        if not groups:
            parts.append(f"{tier} {ran}")
            continue
        part = f"{tier} {total - did_not_run} of {total} ran" + (f" ({ran})" if ran else "")
        labels = {"skipped": "skipped", "unavailable": f"failed, as {REQUIRE_ENGINE}=1 requires"}
        if len(groups) == 1:
            ((outcome, reason), count), = groups.items()
            label = labels[outcome] if count == total else f"{count} {labels[outcome]}"
            parts.append(f"{part}: {label}: {reason}")
            continue
        parts.append(f"{part}, for these {len(groups)} reasons:")
        more += [f"tiers:   {tier}, {count} {labels[outcome]}: {reason}"
                 for (outcome, reason), count in groups.most_common()]
    lines = ["tiers: " + "; ".join(parts), *more]
    if not required and engine_tier_missed(stats):
        lines.append(f"tiers: the engine tier did not run; {REQUIRE_ENGINE}=1 makes that a failure")
    return lines


def engine_tier_missed(stats: dict[str, list[Any]]) -> bool:
    """Whether engine-tier tests were selected and none of them ran."""
    engine = [outcome for outcome, _ in tier_outcomes(stats)["engine"].values() if outcome != "deselected"]
    return bool(engine) and all(outcome in ("skipped", "unavailable") for outcome in engine)


def _stats(config: pytest.Config) -> dict[str, list[Any]] | None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return None if reporter is None else dict(reporter.stats)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """With MODELARTS_IMAGES_REQUIRE_ENGINE=1, a run whose engine tests were selected but none ran fails, whatever
    skipped them (unavailable() already fails each test it stops)."""
    stats = _stats(session.config)
    if (os.environ.get(REQUIRE_ENGINE) == "1" and stats is not None and session.exitstatus == pytest.ExitCode.OK
            and engine_tier_missed(stats)):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Generator[None]:
    """The tier lines, last before pytest's closing count (after its short summary, which pytest writes when the
    hooks inside this wrapper are done)."""
    try:
        return (yield)
    finally:
        required = os.environ.get(REQUIRE_ENGINE) == "1"
        stats = dict(terminalreporter.stats)
        if any(isinstance(report, pytest.TestReport) for reports in stats.values() for report in reports) \
                or stats.get("deselected"):
            terminalreporter.write_sep("-", "tiers")
            for line in tier_lines(stats, required=required):
                terminalreporter.write_line(line)
            if required and engine_tier_missed(stats):
                terminalreporter.write_line(f"tiers: the engine tier did not run, and {REQUIRE_ENGINE}=1 requires it: "
                                            "the run fails")
