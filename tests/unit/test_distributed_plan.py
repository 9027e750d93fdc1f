"""A distributed verification's plan: each worker's container, its variables as ModelArts sets them, the
launcher's command line, and the limits of the flags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from modelarts_images.contract import RunUser
from modelarts_images.declared import Launcher
from modelarts_images.engine.api import GroupNetwork
from modelarts_images.engine.containers import container_options, start_error
from modelarts_images.errors import ConfigError
from modelarts_images.options import Device, Flags, resolve
from modelarts_images.paths import VERIFY_DIR
from modelarts_images.verify.distributed import Topology, platform_command, worker_names, worker_runs

USER = RunUser()
NETWORK = GroupNetwork(name="job-x", subnet="10.213.7.0/24")


def topology(nodes: int = 3, launcher: Launcher = Launcher.BOOT) -> Topology:
    return Topology(nodes=nodes, procs_per_node=1, launcher=launcher, master_port=6060, timeout=30,
                    rendezvous_timeout=60)


def test_each_worker_gets_modelarts_variables_and_a_name_that_resolves(tmp_path: Path) -> None:
    runs = worker_runs("img:1", NETWORK, job="job-x", device=Device.CPU, topology=topology(), user=USER,
                       script_dir=tmp_path)
    names = worker_names("job-x", 3)
    assert names == ("job-x-worker-0.job-x", "job-x-worker-1.job-x", "job-x-worker-2.job-x")
    for index, run in enumerate(runs):
        env = run.env
        assert (env["MA_NUM_HOSTS"], env["VC_WORKER_NUM"], env["VC_TASK_INDEX"]) == ("3", "3", str(index))
        assert env["VC_WORKER_HOSTS"] == ",".join(names) and env["MA_TASK_NAME"] == "worker"
        assert env["MA_CURRENT_IP"] == f"10.213.7.{10 + index}" == run.address
        assert env["MA_CURRENT_INSTANCE_NAME"] == f"job-x-worker-{index}" and env["MA_NUM_GPUS"] == "0"
        assert env["MA_JOB_DIR"] == USER.job_dir  # everything the single-node run sets, too
        assert run.aliases == (names[index], f"job-x-worker-{index}")
        options = container_options(run, network="job-x")
        assert options["network"] == "job-x" and "network_mode" not in options
        assert options["networking_config"]["job-x"]["IPAMConfig"]["IPv4Address"] == run.address
    assert runs[0].command == (USER.boot_python, f"{USER.code_dir}/pytorch-verification.py", "--procs-per-node",
                               "1", "--master-port", "6060", "--rendezvous-timeout", "60")


def test_torchrun_goes_through_the_launcher_script_beside_the_verification(tmp_path: Path) -> None:
    (run, *_) = worker_runs("img:1", NETWORK, job="job-x", device=Device.CPU,
                            topology=topology(2, Launcher.TORCHRUN), user=USER, script_dir=tmp_path)
    assert run.command == ("/bin/sh", f"{USER.code_dir}/launch-torchrun.sh", USER.boot_python, "1", "6060",
                           "--procs-per-node", "1", "--master-port", "6060", "--rendezvous-timeout", "60")
    assert platform_command(USER, topology(2, Launcher.TORCHRUN), gpu=True) == (
        "/bin/sh ${MA_JOB_DIR}/code/launch-torchrun.sh /home/ma-user/miniconda3/bin/python 1 6060 --require-gpu "
        "--procs-per-node 1 --master-port 6060 --rendezvous-timeout 60")
    assert platform_command(USER, topology(2), gpu=False) == (
        "/home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py --procs-per-node 1 "
        "--master-port 6060 --rendezvous-timeout 60")


FAKE_PYTHON = """#!/bin/sh
# a python whose torch has {has_run}torch.distributed.run: prints how it was started
if [ "$1" = "-c" ]; then
    [ "{has_run}" = "" ]
    exit $?
fi
echo "argv: $*"
"""


@pytest.mark.parametrize(("has_run", "module"), [("", "torch.distributed.run"),
                                                 ("no ", "torch.distributed.launch --use_env")])
def test_the_launcher_script_starts_torchrun_or_falls_back_to_launch(tmp_path: Path, has_run: str,
                                                                     module: str) -> None:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(has_run=has_run), encoding="utf-8")
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "MA_NUM_HOSTS": "3", "VC_TASK_INDEX": "2",
           "VC_WORKER_HOSTS": "job-worker-0.job,job-worker-1.job,job-worker-2.job"}
    launcher = VERIFY_DIR / "launch-torchrun.sh"
    done = subprocess.run(["/bin/sh", str(launcher), str(python), "4", "7070", "--require-gpu"], env=env,
                          capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"argv: -m {module} --nnodes=3 --node_rank=2 --nproc_per_node=4 "
                           f"--master_addr=job-worker-0.job --master_port=7070 {VERIFY_DIR}/pytorch-verification.py "
                           "--require-gpu\n")
    assert ("does not exist in this torch (< 1.9)" in done.stderr) is bool(has_run)
    usage = subprocess.run(["/bin/sh", str(launcher), str(python)], env=env, capture_output=True, text=True,
                           check=False, timeout=30)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ")


@pytest.mark.parametrize(("flags", "message"), [
    (Flags(nodes="17"), "--nodes: 17 is more than the 16 workers"),
    (Flags(nodes="0"), "--nodes: must be above 0"),
    (Flags(master_port="80"), "--master-port: 80 must be a port from 1024 to 65535"),
    (Flags(rendezvous_timeout="2"), "--rendezvous-timeout: 2 must be from 5 to 3600 seconds"),
    (Flags(rendezvous_timeout="1.5"), "--rendezvous-timeout: '1.5' is not a whole number"),
    (Flags(launcher="mpirun"), "--launcher: 'mpirun' is not one of boot, torchrun"),
])
def test_bad_flags_are_named(flags: Flags, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve(None, flags, root=tmp_path)


def test_a_single_worker_is_not_a_distributed_topology() -> None:
    with pytest.raises(ConfigError, match="1 is the single-node run"):
        topology(1)


def test_on_a_gpu_each_worker_gets_gpus_of_its_own(tmp_path: Path) -> None:
    shape = Topology(nodes=3, procs_per_node=2, master_port=6060, timeout=30, rendezvous_timeout=60)
    runs = worker_runs("img:1", NETWORK, job="job-x", device=Device.GPU, topology=shape, user=USER,
                       script_dir=tmp_path)
    assert [run.gpu_ids for run in runs] == [("0", "1"), ("2", "3"), ("4", "5")]
    assert all(run.env["MA_NUM_GPUS"] == "2" and "--require-gpu" in run.command for run in runs)
    (request,) = container_options(runs[1], network="job-x")["device_requests"]
    assert request["DeviceIDs"] == ["2", "3"] and request["Count"] == 0
    cpu = worker_runs("img:1", NETWORK, job="job-x", device=Device.CPU, topology=shape, user=USER,
                      script_dir=tmp_path)
    assert all(run.gpu_ids == () and "device_requests" not in container_options(run) for run in cpu)


def test_a_worker_asking_for_a_gpu_the_host_lacks_is_told_how_many_fit(tmp_path: Path) -> None:
    shape = Topology(nodes=2, procs_per_node=1, master_port=6060, timeout=30, rendezvous_timeout=60)
    runs = worker_runs("img:1", NETWORK, job="job-x", device=Device.GPU, topology=shape, user=USER,
                       script_dir=tmp_path)
    # what nvidia-container-cli answers for an index the host does not have
    refused = docker.errors.APIError("500 Server Error", explanation=(
        "failed to create task for container: OCI runtime create failed: nvidia-container-cli: device error: "
        "1: unknown device: unknown"))
    message = str(start_error(refused, runs[1]))
    assert message.startswith("the host's GPU 1 was asked for, and the host does not have it")
    assert "--nodes × --procs-per-node must not exceed the host's GPUs" in message
