"""The container ModelArts starts for a training job's boot command, and which devices a verification uses.

ModelArts starts a training job's container as uid 1000 gid 100 in /home/ma-user, with MA_JOB_DIR and friends
set, the job's code from OBS under ${MA_JOB_DIR}/<code dir>, and the boot command run as it is typed: no login
shell, no profile, so no `conda activate`. `run_spec()` describes exactly that container, with verify/ mounted
read-only where the code from OBS would land.
"""

from __future__ import annotations

from pathlib import Path

from modelarts_images.contract import (
    BOOT_PYTHON,
    CODE_DIR,
    MA_GID,
    MA_HOME,
    MA_UID,
    SCRIPT_NAME,
    VERIFY_TIMEOUT_S,
    WORKER_HOSTNAME,
    job_environment,
)
from modelarts_images.engine.api import ContainerRun, GpuSupport, Mount
from modelarts_images.errors import ConfigError
from modelarts_images.options import Device, DeviceChoice
from modelarts_images.paths import VERIFY_DIR


def run_spec(reference: str, *, device: Device, script_dir: Path = VERIFY_DIR, gpus: int = 1,
             timeout: float = VERIFY_TIMEOUT_S) -> ContainerRun:
    """The container ModelArts would start for the boot command, on a CPU flavor or a `gpus`-GPU flavor.

    On a GPU the script gets --require-gpu, so a missing CUDA fails instead of falling back to the CPU.
    """
    if gpus < 1:
        raise ConfigError(f"gpus: {gpus} must be 1 or more")
    gpu = device is Device.GPU
    command: tuple[str, ...] = (BOOT_PYTHON, f"{CODE_DIR}/{SCRIPT_NAME}")
    return ContainerRun(
        image=reference,
        command=command + (("--require-gpu",) if gpu else ()),
        user=f"{MA_UID}:{MA_GID}",
        working_dir=MA_HOME,
        environment=job_environment(gpus=gpus if gpu else 0),
        mounts=(Mount(source=str(Path(script_dir).resolve()), target=CODE_DIR, read_only=True),),
        gpus=gpus if gpu else 0,
        hostname=WORKER_HOSTNAME,
        timeout=timeout,
    )


def resolve_devices(requested: DeviceChoice, gpu: GpuSupport | None) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """(devices to run on, notes on what was skipped) for --device cpu|gpu|both|auto.

    auto: the GPU when the engine can give one, otherwise the CPU and a "GPU: skipped" note. `gpu` is only
    needed for auto.
    """
    if requested is DeviceChoice.BOTH:
        return (Device.CPU, Device.GPU), ()
    if requested is not DeviceChoice.AUTO:
        return (Device(requested.value),), ()
    if gpu is not None and gpu.available:
        return (Device.GPU,), ()
    reason = gpu.reason if gpu is not None else "not asked"
    return (Device.CPU,), (f"GPU: skipped, no GPU runtime ({reason})",)
