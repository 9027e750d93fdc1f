"""A distributed verification: N workers of the image started the way ModelArts starts a distributed training
job's, each in a container of its own on a network of their own, with the platform's variables.

ModelArts names a job's workers `<job>-worker-<k>.<job>` and gives each: MA_NUM_HOSTS and VC_WORKER_NUM (N),
VC_TASK_INDEX (k), VC_WORKER_HOSTS (every worker's name, in order), MA_CURRENT_IP, MA_CURRENT_INSTANCE_NAME,
MA_TASK_NAME=worker and MA_NUM_GPUS. The master is the first host of VC_WORKER_HOSTS, as ModelArts' docs derive
MASTER_ADDR. Two launchers:
- boot: the plain boot command on every worker; the script starts the node's other processes itself;
- torchrun: `python -m torch.distributed.run --nnodes=$MA_NUM_HOSTS --node_rank=$VC_TASK_INDEX ...`, through a
  shell (verify/launch-torchrun.sh, uploaded with the script to a ModelArts job), as ModelArts' distributed
  examples start PyTorch; torch.distributed.launch --use_env where torch.distributed.run does not exist
  (torch < 1.9), said in the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelarts_images.contract import LAUNCHER_SCRIPT, MAX_NODES, SCRIPT_NAME, RunUser
from modelarts_images.engine.api import ContainerRun, GroupNetwork, Mount
from modelarts_images.errors import ConfigError
from modelarts_images.declared import Launcher
from modelarts_images.options import Device

@dataclass(frozen=True, kw_only=True)
class Topology:
    """How many workers, processes per worker, and how they start and meet."""

    nodes: int
    procs_per_node: int
    launcher: Launcher = Launcher.BOOT
    master_port: int
    timeout: float  # seconds the whole run may take
    rendezvous_timeout: int  # seconds a worker waits for the others

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes: {self.nodes} must be between 2 and {MAX_NODES} for a distributed run "
                              "(1 is the single-node run)")
        if self.procs_per_node < 1:
            raise ConfigError(f"--procs-per-node: {self.procs_per_node} must be 1 or more")


def worker_names(job: str, nodes: int) -> tuple[str, ...]:
    """The workers' names in ModelArts' pattern: `<job>-worker-<k>.<job>`."""
    return tuple(f"{job}-worker-{index}.{job}" for index in range(nodes))


def worker_environment(user: RunUser, *, gpus: int, names: tuple[str, ...], index: int,
                       address: str) -> tuple[tuple[str, str], ...]:
    """The variables of worker `index`: the single-node run's, with the distributed job's in place of its
    one-worker values."""
    distributed = {
        "MA_NUM_HOSTS": str(len(names)), "VC_WORKER_NUM": str(len(names)), "VC_TASK_INDEX": str(index),
        "VC_WORKER_HOSTS": ",".join(names), "MA_CURRENT_IP": address,
        "MA_CURRENT_INSTANCE_NAME": names[index].split(".", 1)[0], "MA_TASK_NAME": "worker",
    }
    single = dict(user.job_environment(gpus=gpus))
    return tuple(sorted({**single, **distributed}.items()))


def worker_gpus(topology: Topology, index: int) -> tuple[str, ...]:
    """The host GPUs worker `index` is handed: P of its own, after the earlier workers' (NCCL refuses two ranks
    on one GPU, and on ModelArts each node has GPUs of its own)."""
    first = index * topology.procs_per_node
    return tuple(str(gpu) for gpu in range(first, first + topology.procs_per_node))


def _script_arguments(topology: Topology, *, gpu: bool) -> tuple[str, ...]:
    return (("--require-gpu",) if gpu else ()) + (
        "--procs-per-node", str(topology.procs_per_node), "--master-port", str(topology.master_port),
        "--rendezvous-timeout", str(topology.rendezvous_timeout))


def launch_command(user: RunUser, topology: Topology, *, gpu: bool, code_dir: str | None = None) -> tuple[str, ...]:
    """The argv of every worker: the boot command itself, or the shell starting the launcher
    (verify/launch-torchrun.sh, beside the script). `code_dir`: where the script is (default: where the
    platform puts a job's code; ModelArts' command names it as ${MA_JOB_DIR}/code)."""
    code = code_dir or user.code_dir
    arguments = _script_arguments(topology, gpu=gpu)
    if topology.launcher is Launcher.BOOT:
        return (user.boot_python, f"{code}/{SCRIPT_NAME}", *arguments)
    return ("/bin/sh", f"{code}/{LAUNCHER_SCRIPT}", user.boot_python, str(topology.procs_per_node),
            str(topology.master_port), *arguments)


def platform_command(user: RunUser, topology: Topology, *, gpu: bool) -> str:
    """algorithm.command of a distributed training job: the same argv, as the boot command is typed (the
    platform expands ${MA_JOB_DIR}; no word needs quoting)."""
    return " ".join(launch_command(user, topology, gpu=gpu, code_dir=user.platform_code_dir))


def worker_runs(reference: str, network: GroupNetwork, *, job: str, device: Device, topology: Topology,
                user: RunUser, script_dir: Path) -> tuple[ContainerRun, ...]:
    """One container per worker, each reachable by its worker name (and that name's first label) on `network`."""
    gpu = device is Device.GPU
    names = worker_names(job, topology.nodes)
    command = launch_command(user, topology, gpu=gpu)
    runs = []
    for index, name in enumerate(names):
        address = network.address(index)
        runs.append(ContainerRun(
            image=reference, command=command, user=user.spec, working_dir=user.home,
            environment=worker_environment(user, gpus=topology.procs_per_node if gpu else 0, names=names,
                                           index=index, address=address),
            mounts=(Mount(source=str(Path(script_dir).resolve()), target=user.code_dir, read_only=True),),
            gpus=topology.procs_per_node if gpu else 0, gpu_ids=worker_gpus(topology, index) if gpu else (),
            hostname=name.split(".", 1)[0],
            aliases=(name, name.split(".", 1)[0]), address=address, timeout=topology.timeout))
    return tuple(runs)
