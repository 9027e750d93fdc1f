"""Shared test helpers, and the hooks of the whole run: the engine marker, and the closing `tiers:` lines
(tests/support/tiers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401  (hooks of this run)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# What invoke.yaml gives in the repository; library-level tests pass it the same way the tasks do.
INVOKE_FALLBACKS = {
    "registry": "swr.cn-north-4.myhuaweicloud.com",
    "organization": "deep-learning-demo",
    "repository": "pytorch",
}


@pytest.fixture
def write_versions(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a versions file into a fresh directory and return its path."""

    def write(text: str, name: str = "versions.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Engine-tier tests carry `tier=engine` into the JUnit report, where CI counts them (.ci/check_junit.py).

    Every test under tests/engine reaches the engine (tests/engine/conftest.py checks that): one without the marker
    gets it here, so that `-m "not engine"` leaves it out and the tier lines count it where it belongs. This runs
    before pytest's own `-m` selection (a conftest's hooks are called before the built-in plugins').
    """
    engine_dir = ROOT / "tests" / "engine"
    for item in items:
        if not item.get_closest_marker("engine") and engine_dir in item.path.parents:
            item.add_marker(pytest.mark.engine)
        if item.get_closest_marker("engine"):
            item.user_properties.append(("tier", "engine"))
