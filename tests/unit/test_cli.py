"""Flags and environment values the tasks check before any work: exit 2 naming the flag, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modelarts_images.errors import ConfigError
from modelarts_images.options import positive_number
from tests.conftest import ROOT


def run_inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (("fetch", "--offline", "--jobs", "two"), "error: --jobs: 'two' is not a whole number"),
    (("lock", "--jobs", "0"), "error: --jobs: must be above 0, got 0"),
    (("verify", "--timeout", "-1"), "error: --timeout: must be above 0, got -1"),
    (("verify", "--size-budget", "big"), "error: --size-budget: 'big' is not a number"),
    (("verify", "--size-budget", "nan"), "error: --size-budget: must be above 0, got nan"),
    (("verify", "--reports", "/etc/passwd/x"), "error: cannot write to the reports directory /etc/passwd/x: "
     "Not a directory (--reports, or modelarts.reports_dir in invoke.yaml)"),
])
def test_a_bad_number_is_a_clear_error(args: tuple[str, ...], message: str) -> None:
    result = run_inv(*args)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_numbers_parse_and_default() -> None:
    assert positive_number("--jobs", None, 4, int) == 4
    assert positive_number("--jobs", "8", 4, int) == 8
    assert positive_number("--timeout", "2.5", 600.0, float) == 2.5
    with pytest.raises(ConfigError, match=r"--jobs: '2\.5' is not a whole number"):
        positive_number("--jobs", "2.5", 4, int)


def test_environment_values_reach_the_checks() -> None:
    # invoke converts INVOKE_MODELARTS_* to the type the key has in invoke.yaml; the shipped file keeps them text.
    env = {**os.environ, "INVOKE_MODELARTS_JOBS": "many", "INVOKE_MODELARTS_EXTRA_TAGS": "{tag}-{date}"}
    result = subprocess.run([sys.executable, "-m", "invoke", "fetch", "--offline"], cwd=ROOT, capture_output=True,
                            text=True, check=False, timeout=120, env=env)
    assert (result.returncode, result.stderr.strip()) == (
        2, "error: INVOKE_MODELARTS_JOBS (environment): must be a whole number of at least 1 (got 'many')")
