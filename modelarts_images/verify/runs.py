"""The container ModelArts starts for a training job's boot command, and which devices a verification uses.

ModelArts starts a training job's container as the image's user (ma-user, uid 1000 gid 100, unless versions.yaml
says otherwise) in its home, with MA_JOB_DIR and friends set, the job's code from OBS under ${MA_JOB_DIR}/<code dir>, and the boot command run as it is typed: no login
shell, no profile, so no `conda activate`. `run_spec()` describes exactly that container, with verify/ mounted
read-only where the code from OBS would land.
"""

from __future__ import annotations

from pathlib import Path

from modelarts_images.contract import DEFAULT_USER, REQUIRE_GPU, SCRIPT_NAME, VERIFY_TIMEOUT_S, WORKER_HOSTNAME, RunUser
from modelarts_images.engine.api import ContainerRun, GpuSupport, Mount
from modelarts_images.errors import ConfigError
from modelarts_images.options import Device, DeviceChoice
from modelarts_images.paths import VERIFY_DIR


def run_spec(reference: str, *, device: Device, script_dir: Path = VERIFY_DIR, gpus: int = 1,
             timeout: float = VERIFY_TIMEOUT_S, user: RunUser = DEFAULT_USER) -> ContainerRun:
    """The container ModelArts would start for the boot command, on a CPU flavor or a `gpus`-GPU flavor.

    On a GPU the script gets --require-gpu, so a missing CUDA fails instead of falling back to the CPU.
    """
    if gpus < 1:
        raise ConfigError(f"gpus: {gpus} must be 1 or more")
    gpu = device is Device.GPU
    command: tuple[str, ...] = (user.boot_python, f"{user.code_dir}/{SCRIPT_NAME}")
    return ContainerRun(
        image=reference,
        command=command + ((REQUIRE_GPU,) if gpu else ()),
        user=user.spec,
        working_dir=user.home,
        environment=user.job_environment(gpus=gpus if gpu else 0),
        mounts=(Mount(source=str(Path(script_dir).resolve()), target=user.code_dir, read_only=True),),
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
