"""Fixtures of the unit tier: a file server on loopback, retry pauses recorded instead of slept, no lookup of
the install tool (uv) on the host's package index, and the matrix runner with stand-in steps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelarts_images.http import pip_resolver
from modelarts_images.shared import retry
from tests.support.http_server import FileServer, serve
from tests.support.matrix_harness import make_harness
from tests.unit.test_verification_script import TORCH_PYTHON, torch_python

T = TypeVar("T")


# Fetch looks for the install tool beside the dependency wheels, and the index a test means is its own server;
# test_install_tool.py tests the lookup itself, against a local index.
@pytest.fixture(autouse=True)
def no_install_tool_from_the_host_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pip_resolver, "resolve_tools", lambda image, **_: ())


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    # download() keeps requests' trust_env; a proxy set in the environment must not capture loopback.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with serve() as running:
        yield running


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses retry.call makes, recorded instead of slept: a Retry-After of a minute must not slow the tests."""
    recorded: list[float] = []
    real = retry.call

    def call(action: Callable[[int], T], **options: Any) -> T:
        return real(action, **{**options, "wait": recorded.append})

    monkeypatch.setattr(retry, "call", call)
    return recorded


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The matrix runner with stand-in fetch and build steps (tests/support/matrix_harness.py)."""
    return make_harness(tmp_path, monkeypatch)


@pytest.fixture
def python_with_torch() -> str:
    """An interpreter with torch, for the verification script's host tests; the tests are skipped, saying how
    to run them, without one, and fail when the one named cannot import torch."""
    found, tried = torch_python()
    if found is None and os.environ.get(TORCH_PYTHON):
        pytest.fail(f"{TORCH_PYTHON}={os.environ[TORCH_PYTHON]} cannot import torch (tried {tried})", pytrace=False)
    if found is None:
        pytest.skip(f"no Python with torch (tried {tried}): set {TORCH_PYTHON}=/path/to/python of an environment with "
                    "torch installed to run these")
    return found
