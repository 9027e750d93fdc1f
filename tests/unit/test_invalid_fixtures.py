"""Every malformed versions file yields exactly the message its '# expect:' lines give, with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelarts_images.config import compat
from modelarts_images.config import versions as config
from modelarts_images.errors import ConfigError
from tests.conftest import FIXTURES, INVOKE_FALLBACKS, ROOT

INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))


def expected_message(path: Path) -> str:
    latest = max(compat.load_table(), key=compat.version_key)
    lines = [line.removeprefix("# expect: ") for line in path.read_text("utf-8").splitlines()
             if line.startswith("# expect: ")]
    assert lines, f"{path.name} has no '# expect:' line"
    return "\n".join(lines).replace("LATEST", latest)


def test_the_corpus_is_not_empty() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_loader_gives_the_expected_message(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load_versions(path, fallbacks=INVOKE_FALLBACKS)
    assert str(caught.value) == expected_message(path)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_plan_task_exits_2_without_traceback(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "plan", "--versions", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {expected_message(path)}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_empty_file(write_versions) -> None:  # type: ignore[no-untyped-def]
    path = write_versions("", name="empty.yaml")
    with pytest.raises(ConfigError, match=r"^empty.yaml: the file is empty; it needs an 'images:' list"):
        config.load_versions(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere.yaml: no such file$"):
        config.load_versions(tmp_path / "nowhere.yaml")


def test_debug_keeps_the_traceback() -> None:
    path = FIXTURES / "invalid" / "bad-sha256.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--debug", "plan", "--versions", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "ConfigError" in result.stderr
