"""The first errors a real engine gives a new user: a base on Docker Hub from a host that cannot reach it (the unit
tier's tests/unit/test_first_errors.py quotes the engine's words; here the engine says them itself)."""

from __future__ import annotations

import uuid

import pytest

from modelarts_images.build import builder
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import BaseImageSource
from modelarts_images.errors import BuildError


def test_a_docker_hub_base_out_of_reach_points_at_base_prefix(engine: DockerEngine) -> None:
    reference = f"ubuntu:modelarts-{uuid.uuid4().hex[:12]}"  # a tag nowhere: the engine must ask Docker Hub
    base = engine.base_image(reference)
    if base.source is not BaseImageSource.UNREACHABLE:
        pytest.skip(f"this engine reaches Docker Hub (the base is {base.source}): base_prefix is not needed here")
    problem = builder.base_image_problem(base)
    assert isinstance(problem, BuildError), base.reason
    message = str(problem)
    assert message.startswith(f"base image {reference}: the engine cannot reach Docker Hub ("), base.reason
    assert "; set base_prefix (modelarts.base_prefix in invoke.yaml, or --base-prefix) to a mirror of Docker Hub" \
        in message and f"pulls mirror.example.com/library/{reference}" in message
    assert "\n" not in message and "dial tcp" not in message  # the tool's words, not the engine's
