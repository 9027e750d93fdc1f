"""A distributed verification on a real engine: N containers of the image on an internal network of their own,
started as ModelArts starts a distributed job's workers, with the plain boot command and with torchrun; the
containers and the network are gone afterwards, whatever happened."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modelarts_images.declared import Launcher
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.containers import LABEL
from modelarts_images.options import Device, VerifyOptions
from modelarts_images.verify.verifier import verify_image
from tests.support.verify_images import entry

pytestmark = pytest.mark.engine

COLLECTIVES = ["distributed:available", "distributed:master", "distributed:rendezvous", "distributed:all_reduce",
               "distributed:broadcast", "distributed:barrier"]


def leftovers(docker_client: Any) -> tuple[list[Any], list[Any]]:
    return (docker_client.containers.list(all=True, filters={"label": LABEL}),
            docker_client.networks.list(filters={"label": LABEL}))


@pytest.mark.parametrize(("nodes", "launcher"), [(2, Launcher.BOOT), (3, Launcher.BOOT), (2, Launcher.TORCHRUN)])
def test_workers_meet_and_reduce(engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions,
                                 good_image: str, nodes: int, launcher: Launcher) -> None:
    options = dataclasses.replace(verify_options, nodes=nodes, launcher=launcher)
    report = verify_image(engine, entry(tag=good_image.split(":")[-1]), options=options, reference=good_image,
                          devices=(Device.CPU,), check_conformance=False)
    assert report.ok, report.failure()
    assert [run.worker.index for run in report.runs if run.worker] == list(range(nodes))
    for index, run in enumerate(report.runs):
        assert run.result is not None
        names = [check.name for check in run.result.checks]
        assert names[-len(COLLECTIVES):] == COLLECTIVES, names
        environment = dict(run.result.environment)
        assert environment["MA_NUM_HOSTS"] == environment["VC_WORKER_NUM"] == str(nodes)
        assert environment["VC_TASK_INDEX"] == str(index)
        hosts = environment["VC_WORKER_HOSTS"].split(",")
        assert len(hosts) == nodes and hosts[index].startswith(environment["MA_CURRENT_INSTANCE_NAME"] + ".")
        assert environment["MA_CURRENT_IP"].count(".") == 3
    assert leftovers(docker_client) == ([], [])


def test_a_run_past_its_timeout_kills_every_worker_and_removes_the_network(
        engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions, good_image: str) -> None:
    options = dataclasses.replace(verify_options, nodes=2, timeout=1.5)
    report = verify_image(engine, entry(tag=good_image.split(":")[-1]), options=options, reference=good_image,
                          devices=(Device.CPU,), check_conformance=False)
    assert not report.ok
    assert all(run.timed_out for run in report.runs), [run.outcomes for run in report.runs]
    assert leftovers(docker_client) == ([], [])
