"""A distributed verification on a real engine: N containers of the image on an internal network of their own,
started as ModelArts starts a distributed job's workers, with the plain boot command and with torchrun; the
containers and the network are gone afterwards, whatever happened."""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.contract import SCRIPT_NAME
from modelarts_images.declared import Launcher
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.containers import LABEL
from modelarts_images.options import Device, VerifyOptions
from modelarts_images.paths import VERIFY_DIR
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.report import DeviceRun, ImageReport
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
    assert re.fullmatch(rf"{nodes} nodes × 1, gloo: all_reduce, broadcast, barrier ok \(\d+\.\d\d s\)",
                        report.distributed()["cpu"]), report.distributed()
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
        engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions, good_image: str,
        tmp_path: Path) -> None:
    # every worker holds past the timeout, however fast the machine runs the script itself
    options = dataclasses.replace(verify_options, nodes=2, timeout=1.5,
                                  script_dir=stand_in(tmp_path / "slow", EVERY_WORKER_HOLDS))
    report = verify_image(engine, entry(tag=good_image.split(":")[-1]), options=options, reference=good_image,
                          devices=(Device.CPU,), check_conformance=False)
    assert not report.ok
    assert all(run.timed_out for run in report.runs), [run.outcomes for run in report.runs]
    assert leftovers(docker_client) == ([], [])


# --------------------------------------------------------------------------------------------------------------
# Faults. Each is injected by the check folder the workers mount: a stand-in for the script that misbehaves on
# one worker and otherwise runs the real script (copied beside it), or by the test killing a worker's container.

BOUND = 5  # --rendezvous-timeout of the fault runs
GRACE = 3  # the script's watchdog grace past a deadline
LOOKUP = 2  # the script's PEERS_LOOKUP_S: after a failure, how long it looks up the other workers
SCRIPT = VERIFY_DIR / SCRIPT_NAME
STAND_IN = """\
import os
import runpy
import sys
import time

INDEX = os.environ.get("VC_TASK_INDEX")
{fault}
sys.argv[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real-verification.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# the master's container exits at once: its name leaves the network's DNS before the others look it up
MASTER_NEVER_STARTS = 'if INDEX == "0":\n    sys.exit(3)'
# the master's container runs, but nothing listens on the port
MASTER_PORT_CLOSED = 'if INDEX == "0":\n    time.sleep({hold})\n    sys.exit(0)'
# worker 1's torch has no gloo backend
BACKEND_HIDDEN = ('if INDEX == "1":\n    import torch.distributed as dist\n'
                  '    dist.is_gloo_available = lambda: False')
# every worker sleeps past any run timeout a test sets
EVERY_WORKER_HOLDS = "time.sleep(60)"
# worker 2 comes late, so that the rendezvous is still open when worker 1 is killed in it
LATE_WORKER = 'if INDEX == "2":\n    time.sleep(6)'


def stand_in(folder: Path, fault: str) -> Path:
    folder.mkdir()
    shutil.copyfile(SCRIPT, folder / "real-verification.py")
    (folder / SCRIPT_NAME).write_text(STAND_IN.format(fault=fault), encoding="utf-8")
    return folder


def fault_run(engine: DockerEngine, options: VerifyOptions, image: str, folder: Path, nodes: int = 2) -> ImageReport:
    options = dataclasses.replace(options, nodes=nodes, rendezvous_timeout=BOUND, script_dir=folder)
    return verify_image(engine, entry(tag=image.split(":")[-1]), options=options, reference=image,
                        devices=(Device.CPU,), check_conformance=False)


def failed_check(run: DeviceRun) -> CheckOutcome:
    """The one distributed check a worker failed, within the bound; its run failed on it."""
    assert run.result is not None, run.outcomes
    failed = [check for check in run.result.checks if not check.ok]
    assert len(failed) == 1 and failed[0].name.startswith("distributed:"), run.result.checks
    seconds = float(failed[0].detail.rsplit("(", 1)[1].split(" ")[0])
    assert seconds <= BOUND + GRACE + LOOKUP + 1, failed[0].detail
    assert not run.ok and run.exit_code == 1
    assert "Traceback" not in "\n".join(check.detail for check in run.result.checks)
    return failed[0]


def test_a_worker_killed_in_the_rendezvous_is_named_by_the_others(
        engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions, good_image: str,
        tmp_path: Path) -> None:
    killed: list[str] = []

    def kill_worker_1_once_it_waits() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for container in docker_client.containers.list(filters={"label": LABEL}):
                if container.name.endswith("-1") and b"distributed:master" in container.logs(stdout=True):
                    container.kill()
                    killed.append(container.name)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_worker_1_once_it_waits)
    killer.start()
    report = fault_run(engine, verify_options, good_image, stand_in(tmp_path / "checks", LATE_WORKER), nodes=3)
    killer.join()
    assert killed, "worker 1 never reached the rendezvous"
    master, gone, late = report.runs
    assert gone.exit_code == 137 and not gone.ok
    for survivor in (master, late):
        failed = failed_check(survivor)
        assert failed.name in COLLECTIVES[2:], failed
        assert "-worker-1.modelarts-verify-" in failed.detail and "(worker 1) no longer resolves" in failed.detail, \
            failed.detail
    assert leftovers(docker_client) == ([], [])


def test_a_master_name_that_does_not_resolve(engine: DockerEngine, docker_client: Any,
                                              verify_options: VerifyOptions, good_image: str, tmp_path: Path) -> None:
    report = fault_run(engine, verify_options, good_image, stand_in(tmp_path / "checks", MASTER_NEVER_STARTS))
    master, worker = report.runs
    assert master.exit_code == 3 and not master.ok
    failed = failed_check(worker)
    assert failed.name == "distributed:master"
    assert re.match(r"modelarts-verify-\w+-worker-0\.modelarts-verify-\w+ does not resolve \(tried for \d+ s\)",
                    failed.detail), failed.detail
    assert leftovers(docker_client) == ([], [])


def test_the_master_port_closed(engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions,
                                good_image: str, tmp_path: Path) -> None:
    folder = stand_in(tmp_path / "checks", MASTER_PORT_CLOSED.format(hold=BOUND + GRACE + 30))
    report = fault_run(engine, verify_options, good_image, folder)
    _, worker = report.runs
    failed = failed_check(worker)
    assert failed.name == "distributed:rendezvous"
    assert re.match(rf"could not rendezvous with modelarts-verify-\w+-worker-0\.modelarts-verify-\w+:6060 within "
                    rf"{BOUND} s: nothing accepted a connection there \(.*refused", failed.detail), failed.detail
    assert leftovers(docker_client) == ([], [])


def test_a_worker_without_the_backend(engine: DockerEngine, docker_client: Any, verify_options: VerifyOptions,
                                      good_image: str, tmp_path: Path) -> None:
    report = fault_run(engine, verify_options, good_image, stand_in(tmp_path / "checks", BACKEND_HIDDEN))
    master, worker = report.runs
    failed = failed_check(worker)
    assert failed.name == "distributed:available"
    assert failed.detail.startswith("this torch has no gloo backend"), failed.detail
    waited = failed_check(master)  # the master waited for it, within the bound, and says where it went
    assert waited.name == "distributed:rendezvous"
    assert "(worker 1) no longer resolves" in waited.detail or "every other worker's name still resolves" in \
        waited.detail, waited.detail
    assert report.failure() and leftovers(docker_client) == ([], [])
