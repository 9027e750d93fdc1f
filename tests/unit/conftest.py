"""Unit tests never ask the host's package index for the install tool (uv): fetch looks for it beside the
dependency wheels, and the index a test means is its own server. test_install_tool.py tests the lookup itself,
against a local index."""

from __future__ import annotations

import pytest

from modelarts_images.http import pip_resolver


@pytest.fixture(autouse=True)
def no_install_tool_from_the_host_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pip_resolver, "resolve_tools", lambda image, **_: ())
