"""verify/pytorch-verification.py's `distributed:` checks, run for real: N local processes of the script with the
variables ModelArts gives the workers of a distributed job, on loopback.

With a real torch (found as tests/unit/test_verification_script.py finds it: $MODELARTS_IMAGES_TORCH_PYTHON, else
this Python or python3 when they have torch; skipped with the reason without one): the plain boot command
(2 nodes × 1, 2 nodes × 2 with the children it starts, 3 nodes × 1), torch.distributed.run, and the faults, each
run with --rendezvous-timeout 5 and bounded by subprocess timeouts so that a regression fails instead of hanging.
Without torch: the script parses as Python 3.7, and its new options refuse bad values.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.result import RESULT_PREFIX, VerificationResult, parse_result
from tests.unit.test_verification_script import SCRIPT

BOUND = 5  # --rendezvous-timeout of the fault tests
GRACE = 3  # the script's WATCHDOG_GRACE_S: how long past the deadline its watchdog ends a step
RUN_TIMEOUT = 120  # a whole test's processes; a hang fails the test instead of the suite
SINGLE_NODE_CHECKS = ["import-torch", "tensor", "matmul", "autograd-sgd"]
DISTRIBUTED_CHECKS = ["distributed:available", "distributed:master", "distributed:rendezvous",
                      "distributed:all_reduce", "distributed:broadcast", "distributed:barrier"]
# what a launcher or the script itself sets: never inherited from the shell that runs the tests
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MODELARTS_VERIFY_PARENT")
TIME = re.compile(r"\((\d+(?:\.\d+)?) s\)$")
PYTHON37 = "MODELARTS_IMAGES_PYTHON37"


# --------------------------------------------------------------------------------------------------------------
# Running workers


@dataclass
class Ended:
    index: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from its start until its output ended (an upper bound: the workers are read in turn)

    @property
    def output(self) -> str:
        return f"--- worker {self.index} (exit {self.returncode}) stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"

    @property
    def result(self) -> VerificationResult:
        return parse_result(self.stdout)

    def check(self, name: str) -> CheckOutcome:
        found = [check for check in self.result.checks if check.name == name]
        assert found, f"no {name} check\n{self.output}"
        return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_environment(index: int, hosts: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ModelArts sets on worker `index` of a job whose workers are `hosts`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MA_", "VC_", "PYTHON", "TORCHELASTIC_")) and key not in LAUNCH_VARIABLES}
    env.update({"MA_NUM_HOSTS": str(len(hosts)), "VC_WORKER_NUM": str(len(hosts)), "VC_TASK_INDEX": str(index),
                "VC_WORKER_HOSTS": ",".join(hosts), "MA_CURRENT_IP": "127.0.0.1",
                "MA_CURRENT_INSTANCE_NAME": f"job-worker-{index}", "MA_NUM_GPUS": "0", "MA_TASK_NAME": "worker",
                "MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir",
                "OMP_NUM_THREADS": "1"})  # a few processes share two cores
    env.update(extra or {})
    return env


def start(command: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[subprocess.Popen[str], float]:
    process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process, time.monotonic()


def collect(started: Sequence[tuple[subprocess.Popen[str], float]], timeout: float = RUN_TIMEOUT) -> list[Ended]:
    """Every worker's output; past the timeout all are killed and the test fails with what they printed."""
    deadline = time.monotonic() + timeout
    ended: list[Ended] = []
    try:
        for index, (process, since) in enumerate(started):
            try:
                stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                for other, _ in started:
                    other.kill()
                outputs = [other.communicate() for other, _ in started]
                shown = "\n".join(f"--- worker {number}:\n{out}\n{err[-3000:]}"
                                  for number, (out, err) in enumerate(outputs))
                pytest.fail(f"the workers did not end within {timeout} s (a hang):\n{shown}")
            ended.append(Ended(index=index, returncode=process.returncode, stdout=stdout, stderr=stderr,
                               seconds=time.monotonic() - since))
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return ended


def run_workers(python: str, hosts: Sequence[str], *arguments: str, cwd: Path,
                extra_env: Mapping[str, str] | None = None, only: Sequence[int] | None = None) -> list[Ended]:
    """The plain boot command on each worker (or on the workers in `only`)."""
    indices = range(len(hosts)) if only is None else only
    return collect([start([python, str(SCRIPT), *arguments], worker_environment(index, hosts, extra_env), cwd)
                    for index in indices])


def seconds_of(check: CheckOutcome) -> float:
    """The time a check's detail ends with: `(0.12 s)`."""
    found = TIME.search(check.detail)
    assert found, f"{check.name}'s detail does not end with its time: {check.detail!r}"
    return float(found.group(1))


def assert_passed(worker: Ended, world: int, shape: str, launcher: str = "boot") -> None:
    assert worker.returncode == 0, worker.output
    lines = worker.stdout.splitlines()
    assert lines[-1].startswith(RESULT_PREFIX), worker.output  # the result is still the last line
    assert sum(line.startswith(RESULT_PREFIX) for line in lines) == 1, worker.output
    result = worker.result
    assert result.ok, worker.output
    names = [check.name for check in result.checks]
    assert names[:4] == SINGLE_NODE_CHECKS, worker.output
    assert names[4:10] == DISTRIBUTED_CHECKS, worker.output
    assert all(check.ok for check in result.checks), worker.output
    for check in result.checks[4:]:
        seconds_of(check)
    available = worker.check("distributed:available").detail
    assert "gloo" in available and f"launcher {launcher}" in available and shape in available, available
    rendezvous = worker.check("distributed:rendezvous").detail
    assert f"({launcher})" in rendezvous and shape in rendezvous, rendezvous
    expected_sum = world * (world + 1) // 2
    assert f"over {world} ranks = {expected_sum}, expected {expected_sum}" in worker.check(
        "distributed:all_reduce").detail
    assert "received exactly" in worker.check("distributed:broadcast").detail
    assert f"all {world} ranks reached the barrier" in worker.check("distributed:barrier").detail


def assert_within_the_bound(check: CheckOutcome, worker: Ended) -> None:
    assert seconds_of(check) <= BOUND + GRACE + 1.5, worker.output
    assert worker.seconds <= BOUND + GRACE + 40, worker.output  # torch's import and the device checks before it


def only_failure(worker: Ended) -> CheckOutcome:
    assert worker.returncode == 1, worker.output
    lines = worker.stdout.splitlines()
    assert lines and lines[-1].startswith(RESULT_PREFIX), worker.output  # a result line, even so
    assert sum(line.startswith(RESULT_PREFIX) for line in lines) == 1, worker.output  # and only one
    result = worker.result
    assert not result.ok
    failed = [check for check in result.checks if not check.ok]
    assert len(failed) == 1, worker.output
    assert result.checks[-1] == failed[0], worker.output  # the checks after a failure are not run
    assert [check.name for check in result.checks[:4]] == SINGLE_NODE_CHECKS, worker.output
    return failed[0]


# --------------------------------------------------------------------------------------------------------------
# With a real torch: jobs that pass


def test_two_nodes_of_one_process(python_with_torch: str, tmp_path: Path) -> None:
    port = free_port()
    workers = run_workers(python_with_torch, ["localhost", "127.0.0.1"], "--master-port", str(port),
                          "--rendezvous-timeout", "60", cwd=tmp_path)
    for worker in workers:
        assert_passed(worker, 2, "2 nodes × 1 = 2 ranks")
        assert f"master localhost:{port} via tcp://" in worker.check("distributed:rendezvous").detail
        assert worker.check("distributed:master").detail.startswith("localhost (first of VC_WORKER_HOSTS) resolves")
    assert "rank 0 of 2" in workers[0].check("distributed:available").detail
    assert "rank 1 of 2" in workers[1].check("distributed:available").detail
    assert "distributed:local_ranks" not in workers[0].stdout  # one process per node: none started


def test_two_nodes_of_two_processes_start_their_children(python_with_torch: str, tmp_path: Path) -> None:
    workers = run_workers(python_with_torch, ["127.0.0.1", "localhost"], "--master-port", str(free_port()),
                          "--procs-per-node", "2", "--rendezvous-timeout", "60", cwd=tmp_path)
    for index, worker in enumerate(workers):
        assert_passed(worker, 4, "2 nodes × 2 = 4 ranks")
        child = 2 * index + 1
        local_ranks = worker.check("distributed:local_ranks")
        assert local_ranks.ok and f"local rank 1 (rank {child}) passed every check" in local_ranks.detail
        seconds_of(local_ranks)
        assert worker.result.checks[-1] == local_ranks
        # the child's lines, labelled, before the parent's result line; the child prints no result line of its own
        assert f"[rank {child}] [ ok ] distributed:barrier: all 4 ranks reached the barrier" in worker.stdout
        assert f"[rank {child}] [ ok ] distributed:available: " in worker.stdout
        assert f"rank {child} of 2 nodes × 2" in worker.stdout
        assert "[rank 0]" not in worker.stdout and f"[rank {child}] [ ok ] tensor" not in worker.stdout


def test_three_nodes(python_with_torch: str, tmp_path: Path) -> None:
    workers = run_workers(python_with_torch, ["localhost", "127.0.0.1", "localhost"], "--master-port",
                          str(free_port()), "--rendezvous-timeout", "60", cwd=tmp_path)
    for index, worker in enumerate(workers):
        assert_passed(worker, 3, "3 nodes × 1 = 3 ranks")
        assert f"rank {index} of 3" in worker.check("distributed:available").detail


def test_under_torch_distributed_run(python_with_torch: str, tmp_path: Path) -> None:
    port = free_port()
    hosts = ["127.0.0.1", "localhost"]
    workers = collect([start([python_with_torch, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={index}",
                              "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", str(SCRIPT),
                              "--rendezvous-timeout", "60"], worker_environment(index, hosts), tmp_path)
                       for index in range(2)])
    for worker in workers:
        assert_passed(worker, 2, "2 nodes × 1 = 2 ranks", launcher="torchrun")
        assert f"master 127.0.0.1:{port} via env://" in worker.check("distributed:rendezvous").detail
        assert worker.check("distributed:master").detail.startswith("127.0.0.1 (MASTER_ADDR) resolves")


# --------------------------------------------------------------------------------------------------------------
# With a real torch: faults, each within the bound


def test_a_master_name_that_does_not_resolve(python_with_torch: str, tmp_path: Path) -> None:
    (worker,) = run_workers(python_with_torch, ["no-such-host.invalid", "localhost"], "--rendezvous-timeout",
                            str(BOUND), cwd=tmp_path, only=[1])
    failed = only_failure(worker)
    assert failed.name == "distributed:master"
    assert failed.detail.startswith("no-such-host.invalid does not resolve (tried for "), failed.detail
    assert seconds_of(failed) >= BOUND - 1, failed.detail  # it was retried until the deadline
    assert_within_the_bound(failed, worker)
    assert "[FAIL] distributed:master: no-such-host.invalid does not resolve" in worker.stdout


def test_a_worker_alone_fails_the_rendezvous(python_with_torch: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the master never started
    (worker,) = run_workers(python_with_torch, ["127.0.0.1", "localhost"], "--master-port", str(port),
                            "--rendezvous-timeout", str(BOUND), cwd=tmp_path, only=[1])
    failed = only_failure(worker)
    assert failed.name == "distributed:rendezvous"
    assert failed.detail.startswith(f"could not rendezvous with 127.0.0.1:{port} within {BOUND} s: "), failed.detail
    assert_within_the_bound(failed, worker)


@pytest.mark.parametrize(("other", "peers"), [
    ("127.0.0.1", "; every other worker's name still resolves ("),
    # a worker whose container or pod is gone: its name left the job's DNS
    ("job-worker-1.invalid", "; job-worker-1.invalid (worker 1) no longer resolves: gone from the job ("),
])
def test_the_master_alone_fails_the_rendezvous(python_with_torch: str, tmp_path: Path, other: str,
                                               peers: str) -> None:
    port = free_port()  # the master listens, no other worker comes
    (worker,) = run_workers(python_with_torch, ["localhost", other], "--master-port", str(port),
                            "--rendezvous-timeout", str(BOUND), cwd=tmp_path, only=[0])
    failed = only_failure(worker)
    assert failed.name == "distributed:rendezvous"
    assert failed.detail.startswith(f"could not rendezvous with localhost:{port} within {BOUND} s: "), failed.detail
    assert peers in failed.detail, failed.detail
    assert_within_the_bound(failed, worker)


def test_a_master_killed_after_start(python_with_torch: str, tmp_path: Path) -> None:
    hosts = ["127.0.0.1", "localhost"]
    port = free_port()
    arguments = [python_with_torch, str(SCRIPT), "--master-port", str(port), "--rendezvous-timeout", str(BOUND)]
    started = [start(arguments, worker_environment(index, hosts), tmp_path) for index in range(2)]
    time.sleep(1)
    started[0][0].kill()
    master, worker = collect(started)
    assert master.returncode == -signal.SIGKILL
    failed = only_failure(worker)
    assert failed.name in DISTRIBUTED_CHECKS[2:], worker.output
    assert_within_the_bound(failed, worker)
    if failed.name == "distributed:rendezvous":
        assert f"127.0.0.1:{port} within {BOUND} s" in failed.detail


PEER_SHIM = """
import os
import signal
if os.environ.get("VC_TASK_INDEX") == "0":
    import torch.distributed as dist

    def all_reduce(*args, **kwargs):  # the master dies in the middle of the collectives
        os.kill(os.getpid(), signal.SIGKILL)

    dist.all_reduce = all_reduce
"""


def test_a_peer_that_dies_in_the_collectives(python_with_torch: str, tmp_path: Path) -> None:
    # (one that hangs instead: test_the_watchdog_ends_a_step_that_torch_does_not[barrier], the stuck one's peer)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(PEER_SHIM, encoding="utf-8")
    master, worker = run_workers(python_with_torch, ["localhost", "127.0.0.1"], "--master-port", str(free_port()),
                                 "--rendezvous-timeout", str(BOUND), cwd=tmp_path,
                                 extra_env={"PYTHONPATH": str(shim)})
    assert master.returncode == -signal.SIGKILL, master.output
    failed = only_failure(worker)
    assert failed.name == "distributed:all_reduce", worker.output
    assert failed.detail.startswith("all_reduce failed: "), failed.detail
    assert worker.check("distributed:rendezvous").ok
    assert_within_the_bound(failed, worker)


STUCK_SHIM = """
import os
import time
if os.environ.get("VC_TASK_INDEX") == "{index}":
    import torch.distributed as dist

    def stuck(*args, **kwargs):  # what torch's own timeout would not end
        time.sleep(3600)

    dist.{function} = stuck
"""


@pytest.mark.parametrize(("function", "indices", "check"), [
    ("init_process_group", [0], "distributed:rendezvous"),
    ("barrier", [0, 1], "distributed:barrier"),
])
def test_the_watchdog_ends_a_step_that_torch_does_not(python_with_torch: str, tmp_path: Path, function: str,
                                                      indices: list[int], check: str) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    stuck_index = indices[-1]
    (shim / "sitecustomize.py").write_text(
        STUCK_SHIM.replace("{index}", str(stuck_index)).replace("{function}", function), encoding="utf-8")
    port = free_port()
    workers = run_workers(python_with_torch, ["localhost", "127.0.0.1"], "--master-port", str(port),
                          "--rendezvous-timeout", str(BOUND), cwd=tmp_path, only=indices,
                          extra_env={"PYTHONPATH": str(shim)})
    worker = workers[-1]
    failed = only_failure(worker)  # one result line, printed by the watchdog
    assert failed.name == check, worker.output
    assert "the wait was stopped by this script" in failed.detail, failed.detail
    if check == "distributed:rendezvous":
        assert failed.detail.startswith(f"could not rendezvous with localhost:{port} within {BOUND} s: ")
    assert BOUND + GRACE - 0.5 <= seconds_of(failed) <= BOUND + GRACE + 1.5, failed.detail
    assert_within_the_bound(failed, worker)
    for other in workers[:-1]:  # the peer of the stuck one fails by torch's own timeout, as bounded
        assert only_failure(other).name == check, other.output


def test_a_child_that_fails_is_named(python_with_torch: str, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '3':  # the child of worker 1\n"
        "    import torch.distributed as dist\n"
        "    broadcast = dist.broadcast\n\n"
        "    def wrong(tensor, *args, **kwargs):\n"
        "        broadcast(tensor, *args, **kwargs)\n"
        "        tensor.zero_()\n\n"
        "    dist.broadcast = wrong\n", encoding="utf-8")
    workers = run_workers(python_with_torch, ["localhost", "127.0.0.1"], "--master-port", str(free_port()),
                          "--procs-per-node", "2", "--rendezvous-timeout", "60", cwd=tmp_path,
                          extra_env={"PYTHONPATH": str(shim)})
    assert_passed(workers[0], 4, "2 nodes × 2 = 4 ranks")
    worker = workers[1]
    failed = only_failure(worker)
    assert failed.name == "distributed:local_ranks", worker.output
    assert re.match(r"local rank 1 \(rank 3, pid \d+\) exited 1 after failing distributed:broadcast \(", failed.detail)
    assert "[rank 3] [FAIL] distributed:broadcast: rank 3 received" in worker.stdout
    # the parent's own checks passed
    assert all(check.ok for check in worker.result.checks if check.name in DISTRIBUTED_CHECKS)


def test_hidden_torch_distributed_fails_available(python_with_torch: str, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import torch.distributed\ntorch.distributed.is_available = lambda: False\n", encoding="utf-8")
    (worker,) = run_workers(python_with_torch, ["localhost", "127.0.0.1"], cwd=tmp_path, only=[1],
                            extra_env={"PYTHONPATH": str(shim)})
    failed = only_failure(worker)
    assert failed.name == "distributed:available"
    assert failed.detail.startswith("torch.distributed is not available in this torch build ("), failed.detail
    assert "[FAIL] distributed:available: torch.distributed is not available" in worker.stdout


def test_an_inconsistent_task_index_fails_the_environment(python_with_torch: str, tmp_path: Path) -> None:
    env = worker_environment(5, ["localhost", "127.0.0.1"])
    (worker,) = collect([start([python_with_torch, str(SCRIPT)], env, tmp_path)])
    failed = only_failure(worker)
    assert failed.name == "distributed:environment"
    assert "VC_TASK_INDEX='5' is not a worker index of MA_NUM_HOSTS=2" in failed.detail


def test_a_single_node_job_has_no_distributed_checks(python_with_torch: str, tmp_path: Path) -> None:
    # a one-worker job: ModelArts still sets the distributed variables, with one host
    (worker,) = run_workers(python_with_torch, ["modelarts-job-worker-0.job"], cwd=tmp_path)
    assert worker.returncode == 0, worker.output
    assert [check.name for check in worker.result.checks] == SINGLE_NODE_CHECKS
    assert "distributed" not in worker.stdout.replace(RESULT_PREFIX, "")
    assert worker.stdout.splitlines()[-1].startswith(RESULT_PREFIX)


# --------------------------------------------------------------------------------------------------------------
# Everywhere


def test_the_script_parses_as_python_3_7() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    ast.parse(source, filename=str(SCRIPT), feature_version=(3, 7))
    assert "removeprefix" not in source and ":=" not in source
    python37 = os.environ.get(PYTHON37) or shutil.which("python3.7")
    if python37 and os.environ.get(PYTHON37) is None:  # one on PATH may be a pyenv shim of no version in use
        probe = subprocess.run([python37, "-c", "import sys; print(sys.version_info[:2] == (3, 7))"],
                               capture_output=True, text=True, check=False, timeout=60)
        python37 = python37 if probe.stdout.strip() == "True" else None
    if python37:  # a real 3.7 where there is one: it compiles the script
        completed = subprocess.run([python37, "-c", "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], "
                                    "'exec')", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60)
        assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(("arguments", "named"), [
    (["--procs-per-node", "0"], "--procs-per-node"),
    (["--procs-per-node", "two"], "--procs-per-node"),
    (["--master-port", "70000"], "--master-port"),
    (["--rendezvous-timeout", "0"], "--rendezvous-timeout"),
    (["--rendezvous-timeout", "soon"], "--rendezvous-timeout"),
])
def test_bad_distributed_options_are_usage_errors(tmp_path: Path, arguments: list[str], named: str) -> None:
    completed = subprocess.run([sys.executable, str(SCRIPT), *arguments], cwd=tmp_path, capture_output=True,
                               text=True, check=False, timeout=60)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert f"argument {named}" in completed.stderr
    assert RESULT_PREFIX not in completed.stdout
