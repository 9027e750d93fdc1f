"""Verification on a real engine with a real torch: the run as ModelArts does it, failures, cleanup, conformance.

Images come from the fixtures in tests/engine/conftest.py (built once per session from
tests/support/verify_images.py, removed at the end).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.engine import containers
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import ContainerRun
from modelarts_images.errors import EngineError, VerifyError
from modelarts_images.options import Device, DeviceChoice, VerifyOptions
from modelarts_images.pipeline import stage
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.report import ImageReport, raise_for_reports, save_report
from modelarts_images.verify.runs import resolve_devices, run_spec
from modelarts_images.verify.verifier import verify_image
from tests.support.verify_images import TIMEOUT, container_exists, entry

pytestmark = pytest.mark.engine


def stray_containers(client: Any) -> list[str]:
    """Containers the verification started that still exist (there should be none)."""
    return [str(container.name) for container in client.containers.list(all=True,
                                                                         filters={"label": containers.LABEL})]


def _by_name(outcomes: list[tuple[str, CheckOutcome]] | list[CheckOutcome]) -> dict[str, CheckOutcome]:
    found: dict[str, CheckOutcome] = {}
    for item in outcomes:
        if isinstance(item, tuple):
            where, outcome = item
            found[f"{where}/{outcome.name}"] = outcome
        else:
            found[item.name] = item
    return found


# --------------------------------------------------------------------------------------------------------------
# CPU verification, as ModelArts runs it


def test_cpu_verification_of_a_good_image_passes(engine: DockerEngine, verify_options: VerifyOptions,
                                                 good_image: str, tmp_path: Path) -> None:
    image = entry(tag=good_image.split(":")[-1])
    report = verify_image(engine, image, options=verify_options, reference=good_image, devices=(Device.CPU,))
    raise_for_reports([report])  # nothing failed
    assert report.ok and report.failure() is None
    (run,) = report.runs
    assert run.device is Device.CPU
    assert run.exit_code == 0 and not run.timed_out
    result = run.result
    assert result is not None and result.ok
    assert result.torch == "2.13.0+cpu" and result.torch_cuda is None
    assert result.python is not None and result.python.startswith("3.11.")
    assert (result.uid, result.gid, result.user) == (1000, 100, "ma-user")
    assert result.cwd == "/home/ma-user"
    assert result.python_executable == "/home/ma-user/miniconda3/bin/python"
    assert result.device == "cpu" and not result.cuda_available
    env = dict(result.environment)
    assert env["MA_JOB_DIR"] == "/home/ma-user/modelarts/user-job-dir"
    assert env["MA_NUM_GPUS"] == "0" and env["VC_TASK_INDEX"] == "0" and env["VC_WORKER_NUM"] == "1"
    assert [check.name for check in result.checks] == ["import-torch", "tensor", "matmul", "autograd-sgd"]
    # the original recipe's human output is still there for people reading the log
    assert any(line.startswith("tensor([[") for line in run.output_tail)
    assert run.command == ("/home/ma-user/miniconda3/bin/python",
                           "/home/ma-user/modelarts/user-job-dir/code/pytorch-verification.py")
    # the report as saved, and read back
    saved = json.loads(save_report(report, tmp_path).read_text(encoding="utf-8"))
    assert saved["ok"] is True and saved["runs"][0]["result"]["torch"] == "2.13.0+cpu"
    # the saved report rounds each run's seconds to milliseconds; otherwise it reads back as it was
    rounded = tuple(dataclasses.replace(each, seconds=round(each.seconds, 3)) for each in report.runs)
    assert ImageReport.from_json(saved) == dataclasses.replace(report, runs=rounded)


def test_an_entry_expecting_another_torch_fails_naming_the_check(engine: DockerEngine, verify_options: VerifyOptions,
                                                                   good_image: str) -> None:
    image = entry(tag="x", torch="2.12.0")
    report = verify_image(engine, image, options=verify_options, reference=good_image, devices=(Device.CPU,),
                          check_conformance=False)
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([report])
    assert raised.value.exit_code == 5
    message = str(raised.value)
    assert "cpu/torch-version" in message and "expected 2.12.0" in message
    assert "cpu/python-version" not in message  # only what failed is named


def test_an_image_without_torch_fails_with_exit_5(engine: DockerEngine, verify_options: VerifyOptions,
                                                  no_torch_image: str) -> None:
    image = entry(tag="x")
    report = verify_image(engine, image, options=verify_options, reference=no_torch_image, devices=(Device.CPU,),
                          check_conformance=False)
    (run,) = report.runs
    assert run.exit_code == 1  # the script's verdict
    assert run.result is not None and run.result.torch is None
    failed = {name for name, outcome in _by_name(report.outcomes()).items() if outcome.blocking}
    assert {"cpu/script:import-torch", "cpu/torch-version", "cpu/exit-status"} <= failed
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([report])
    assert raised.value.exit_code == 5
    assert "cpu/script:import-torch" in str(raised.value) and "No module named 'torch'" in str(raised.value)


# --------------------------------------------------------------------------------------------------------------
# GPU on an engine without a GPU runtime


def test_gpu_mode_on_this_engine_is_a_clear_error(engine: DockerEngine, docker_client: Any,
                                                 verify_options: VerifyOptions, good_image: str) -> None:
    if engine.gpu_support().available:
        pytest.skip("this engine has a GPU runtime")
    before = set(stray_containers(docker_client))
    spec = run_spec(good_image, device=Device.GPU, timeout=TIMEOUT)
    # the engine says so with an EngineError (it has no stage and no exit code of its own: 1) ...
    with pytest.raises(EngineError) as raised:
        engine.run(spec)
    message = str(raised.value)
    assert not isinstance(raised.value, VerifyError)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in message
    assert "NVIDIA Container Toolkit" in message and "--device cpu" in message
    # ... which the verify step turns into a VerifyError (exit 5) with the same message
    with pytest.raises(VerifyError) as in_the_step, stage(VerifyError):
        engine.run(spec)
    assert in_the_step.value.exit_code == 5 and str(in_the_step.value) == message

    report = verify_image(engine, entry(tag="x"), options=verify_options, reference=good_image,
                          devices=(Device.GPU,), check_conformance=False)
    with pytest.raises(VerifyError) as whole:
        raise_for_reports([report])
    assert "gpu/run" in str(whole.value) and "no GPU runtime" in str(whole.value)
    assert set(stray_containers(docker_client)) <= before  # the failed GPU runs left no container


def test_auto_falls_back_to_the_cpu_with_a_skipped_line(engine: DockerEngine, good_image: str) -> None:
    support = engine.gpu_support(good_image)  # the real try: a container asking for a GPU
    if support.available:
        pytest.skip("this engine has a GPU runtime")
    assert "could not select device driver" in support.reason
    devices, skipped = resolve_devices(DeviceChoice.AUTO, support)
    assert devices == (Device.CPU,)
    assert skipped and skipped[0].startswith("GPU: skipped, no GPU runtime")


# --------------------------------------------------------------------------------------------------------------
# The container is always removed


def test_a_container_past_its_timeout_is_killed_and_removed(docker_client: Any, good_image: str,
                                                            run_id: str) -> None:
    name = f"{containers.NAME_PREFIX}timeout-{run_id}"
    spec = ContainerRun(image=good_image, command=("sleep", "3600"), user="1000:100", working_dir="/home/ma-user",
                        network=False, timeout=2)
    started = time.monotonic()
    output = containers.run_container(docker_client, spec, name=name)
    assert output.timed_out and output.exit_code is None
    assert time.monotonic() - started < 600  # killed, not waited for: the sleep would take an hour
    assert not container_exists(docker_client, name)


def test_a_failing_run_leaves_no_container(docker_client: Any, good_image: str, run_id: str) -> None:
    name = f"{containers.NAME_PREFIX}fail-{run_id}"
    spec = ContainerRun(image=good_image, command=("sh", "-c", "echo oops >&2; exit 3"), user="1000:100",
                        working_dir="/home/ma-user", network=False, timeout=60)
    output = containers.run_container(docker_client, spec, name=name)
    assert output.exit_code == 3 and "oops" in output.stderr
    assert not container_exists(docker_client, name)
    # and one that cannot even start (no such executable): an EngineError now (a VerifyError before)
    broken = ContainerRun(image=good_image, command=("/nonexistent",), user="1000:100", working_dir="/", timeout=60)
    with pytest.raises(EngineError, match=f"could not start a container of {good_image}"):
        containers.run_container(docker_client, broken, name=name)
    assert not container_exists(docker_client, name)


def test_ctrl_c_removes_the_container(docker_client: Any, good_image: str, run_id: str) -> None:
    name = f"{containers.NAME_PREFIX}interrupt-{run_id}"
    spec = ContainerRun(image=good_image, command=("sleep", "60"), user="1000:100", working_dir="/home/ma-user",
                        network=False, timeout=50)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            containers.run_container(docker_client, spec, name=name)
    finally:
        timer.cancel()
    assert not container_exists(docker_client, name)


# --------------------------------------------------------------------------------------------------------------
# ModelArts conformance


def test_the_good_image_conforms(engine: DockerEngine, verify_options: VerifyOptions, good_image: str) -> None:
    report = verify_image(engine, entry(tag="x"), options=verify_options, reference=good_image, devices=(Device.CPU,))
    outcomes = _by_name(list(report.conformance))
    assert list(outcomes) == ["ma-user", "boot-python", "default-user", "setuid-setgid", "credentials",
                              "image-size", "conda-channel"]
    failed = {name: outcome.detail for name, outcome in outcomes.items() if not outcome.ok}
    assert not failed
    assert outcomes["conda-channel"].skipped and "no conda metadata" in outcomes["conda-channel"].detail
    assert "from the base image" in outcomes["setuid-setgid"].detail
    assert "User ma-user" in outcomes["default-user"].detail


def test_a_setuid_file_and_a_netrc_fail_conformance_and_defaults_warns(engine: DockerEngine,
                                                                       verify_options: VerifyOptions,
                                                                       nonconforming_image: str) -> None:
    report = verify_image(engine, entry(tag="x"), options=verify_options, reference=nonconforming_image,
                          devices=(Device.CPU,))
    outcomes = _by_name(list(report.conformance))
    assert not outcomes["setuid-setgid"].ok and "/usr/local/bin/escalate" in outcomes["setuid-setgid"].detail
    credentials = outcomes["credentials"]
    assert not credentials.ok
    assert "/home/ma-user/.netrc (netrc)" in credentials.detail
    assert "/etc/pip.conf (pip-config with a URL with user:password@)" in credentials.detail
    assert "t0ken" not in credentials.detail  # facts, never the secret
    assert outcomes["ma-user"].ok and outcomes["boot-python"].ok and outcomes["default-user"].ok
    conda = outcomes["conda-channel"]  # read from the image's conda-meta: a warning, not a failure
    assert conda.warning and not conda.blocking and "1 of 1 conda packages" in conda.detail
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([report])
    assert "conformance/setuid-setgid" in str(raised.value) and "conformance/credentials" in str(raised.value)
    assert report.runs[0].result is not None and report.runs[0].result.ok  # torch itself is fine
