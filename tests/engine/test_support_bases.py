"""tests/support/bases.py against the real engine, where it is cheap: the test base is there (the fixture
skips otherwise), so the decision is to leave it; nothing is built."""

from __future__ import annotations

from typing import Any

import pytest

from modelarts_images.engine.adapter import DockerEngine
from tests.support import bases

pytestmark = pytest.mark.engine


def test_a_present_base_is_left_as_it_is(engine: DockerEngine, docker_client: Any, test_base: str) -> None:
    wanted = bases.bases(bases.engine_spelling(engine.architecture()))
    state = bases.engine_state(docker_client, engine.endpoint, [base.name for base in wanted])
    assert state.local == docker_client.api.base_url.startswith("http+docker://local")
    decision = bases.decide(wanted[0], state, bases.Host.probe())
    assert (decision.base.name, decision.way) == (test_base, bases.PRESENT), decision.why
    assert decision.why == f"present ({state.arch})"
