"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    """Engine-tier tests carry `tier=engine` into the JUnit report, where CI counts them (.ci/check_junit.py)."""
    for item in items:
        if item.get_closest_marker("engine"):
            item.user_properties.append(("tier", "engine"))
