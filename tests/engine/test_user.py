"""versions.yaml's `user:`: an image built for another training user runs, verifies and conforms as that user."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.build import builder as build
from modelarts_images.contract import RunUser
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import Backend
from modelarts_images.model import FetchedImage
from modelarts_images.options import BuildOptions, VerifyOptions
from modelarts_images.verify.verifier import verify_image
from tests.support.engine_tier import remove_image, run_in

USER = RunUser(name="trainer", uid=1101, gid=1101)  # an older ModelArts variant's uid, in a group of its own


@pytest.mark.engine
@pytest.mark.parametrize("backend", [Backend.BUILDKIT, Backend.DOCKER])
def test_an_image_for_another_user_verifies_as_that_user(backend: Backend, engine: DockerEngine, docker_client: Any,
                                                          fetched_torch: FetchedImage, tmp_path: Path) -> None:
    image = dataclasses.replace(fetched_torch.image, tag=f"{fetched_torch.image.tag}-user-{backend}", user=USER)
    fetched = dataclasses.replace(fetched_torch, image=image)
    try:
        result = build.build_image(fetched, BuildOptions(backend=backend, work_dir=tmp_path / "work"), engine)
        config = docker_client.images.get(result.reference).attrs["Config"]
        assert (config["User"], config["WorkingDir"]) == ("trainer", "/home/trainer")
        assert config["Env"][[v.split("=")[0] for v in config["Env"]].index("PATH")].endswith(
            ":/home/trainer/miniconda3/bin")
        status, output = run_in(docker_client, result.reference,
                                "id -u; id -g; stat -c %u:%g /home/trainer/miniconda3/bin/python3.11 /home/trainer")
        assert status == 0 and output.split() == ["1101", "1101", "1101:1101", "1101:1101"], output
        report = verify_image(engine, image, options=VerifyOptions(reports_dir=tmp_path / "reports"),
                              reference=result.reference)
        outcomes = {outcome.name: outcome for outcome in report.conformance}
        assert report.ok, report.failure()
        assert outcomes["ma-user"].detail.startswith("trainer uid 1101 gid 1101 (trainer), home /home/trainer")
        assert "/home/trainer/miniconda3/bin/python" in outcomes["boot-python"].detail
        (run,) = report.runs
        assert run.command[0] == "/home/trainer/miniconda3/bin/python" and run.result is not None
        assert (run.result.uid, run.result.gid, run.result.cwd) == (1101, 1101, "/home/trainer")
        # the same image judged for the default user fails that check, naming what differs
        default = verify_image(engine, dataclasses.replace(image, user=RunUser()),
                               options=VerifyOptions(reports_dir=tmp_path / "other"), reference=result.reference)
        assert not default.ok
        assert {outcome.name for outcome in default.conformance if outcome.blocking} >= {"ma-user", "boot-python"}
    finally:
        remove_image(docker_client, image.reference)
