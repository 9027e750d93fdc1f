"""The test images the verification tests run, built with the docker SDK from TEST_BASE (the fixtures that build
them once per session and remove them at the end are in tests/engine/conftest.py):

- `good`: the product's layout: ma-user 1000:100 with home /home/ma-user, /home/ma-user/miniconda3 a venv of
  the base's Python 3.11 with a REAL torch 2.13.0+cpu installed with --no-index from wheels fetched on the host
  (containers cannot reach an HTTPS index), PATH and PYTHONUNBUFFERED set, USER ma-user, WORKDIR
  /home/ma-user, the base named in the org.opencontainers.image.base.name label;
- `no_torch`: `good` with torch deleted;
- `nonconforming`: `good` plus a setuid-root binary, a ~/.netrc, a pip.conf with credentials in its URL, and
  conda metadata naming Anaconda's `defaults` channel (a warning only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelarts_images.contract import DEFAULT_USER
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import ImageConfig
from modelarts_images.model import Artifact, ImageSpec
from tests.support.engine_tier import TEST_BASE, TORCH_VERSION, remove_image

REPOSITORY = "modelarts-verify-test"
TIMEOUT = 300.0  # seconds a test container may run (the verification's own default is longer)
GOOD_DOCKERFILE = f"""\
ARG BASE
FROM ${{BASE}} AS packages
COPY wheels/ /tmp/wheels/
RUN python3 -m venv {DEFAULT_USER.conda_prefix} \\
 && PIP_DISABLE_PIP_VERSION_CHECK=1 {DEFAULT_USER.conda_prefix}/bin/pip install --no-cache-dir --no-index \\
        --find-links /tmp/wheels /tmp/wheels/torch-*.whl \\
 && rm -rf /tmp/wheels

FROM ${{BASE}}
ARG BASE
RUN useradd -m -d /home/ma-user -s /bin/bash -g 100 -u 1000 ma-user
COPY --from=packages --chown=1000:100 {DEFAULT_USER.conda_prefix} {DEFAULT_USER.conda_prefix}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{DEFAULT_USER.conda_prefix}/bin \\
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.base.name=${{BASE}}
USER ma-user
WORKDIR /home/ma-user
"""

NO_TORCH_DOCKERFILE = """\
ARG GOOD
FROM ${GOOD}
USER root
RUN rm -rf {prefix}/lib/python3.11/site-packages/torch
USER ma-user
""".replace("{prefix}", DEFAULT_USER.conda_prefix)

NONCONFORMING_DOCKERFILE = """\
ARG GOOD
FROM ${GOOD}
USER root
RUN cp /bin/true /usr/local/bin/escalate && chmod 4755 /usr/local/bin/escalate \\
 && printf 'machine pypi.example.com login robot password t0ken\\n' > /home/ma-user/.netrc \\
 && chown 1000:100 /home/ma-user/.netrc \\
 && printf '[global]\\nindex-url = https://robot:t0ken@pypi.example.com/simple\\n' > /etc/pip.conf \\
 && mkdir -p {prefix}/conda-meta \\
 && printf '{"name": "python", "version": "3.11.2", "channel": "https://repo.anaconda.com/pkgs/main/linux-64"}' \\
        > {prefix}/conda-meta/python-3.11.2-h0.json
USER ma-user
""".replace("{prefix}", DEFAULT_USER.conda_prefix)


def entry(*, tag: str, torch: str = TORCH_VERSION, python: str = "3.11", cuda: str = "cpu") -> ImageSpec:
    """The versions.yaml entry the test images stand for."""
    return ImageSpec(
        id="verify-test", default=True, python=python, cuda=cuda, torch=torch, torchvision=None, torchaudio=None,
        tag=tag, registry="localhost:5999", organization="engine-tests", repository=REPOSITORY,
        base_image=TEST_BASE, pip_index="", apt_mirror="", wheels=(),
        installer=Artifact(url="https://example.invalid/stand-in-installer.sh", sha256=None),
    )


def build(client: Any, context_dir: Path, dockerfile: str, tag: str, buildargs: dict[str, str]) -> str:
    """Build `dockerfile` in `context_dir` with the SDK's low-level API, checking every event for an error."""
    (context_dir / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    tail: list[str] = []
    for event in client.api.build(path=str(context_dir), tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                                  decode=True):
        if "error" in event or "errorDetail" in event:
            detail = event.get("error") or event.get("errorDetail", {}).get("message")
            raise AssertionError(f"building {tag} failed: {detail}\n" + "".join(tail[-30:]))
        if "stream" in event:
            tail.append(str(event["stream"]))
    client.images.get(tag)  # really there
    return tag


def derived_image(client: Any, good: str, tmp: Path, dockerfile: str, tag: str) -> Iterator[str]:
    try:
        yield build(client, tmp, dockerfile, tag, {"GOOD": good})
    finally:
        remove_image(client, tag)


def image_config(engine: DockerEngine, reference: str) -> ImageConfig:
    """The engine's config of a test image, which the conformance checks take (the verifier reads it once)."""
    config = engine.image(reference)
    assert config is not None, f"{reference} is not in the engine"
    return config


def container_exists(client: Any, name: str) -> bool:
    return bool(client.containers.list(all=True, filters={"name": f"^/{name}$"}))
