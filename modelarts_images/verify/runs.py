"""The container ModelArts starts for a training job's boot command, and which devices a verification uses.

ModelArts starts a training job's container as the image's user (ma-user, uid 1000 gid 100, unless versions.yaml
says otherwise) in its home, with MA_JOB_DIR and friends set, the job's code from OBS under ${MA_JOB_DIR}/<code dir>, and the boot command run as it is typed: no login
shell, no profile, so no `conda activate`. `run_spec()` describes exactly that container, with verify/ mounted
read-only where the code from OBS would land.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelarts_images.contract import (
    DEFAULT_USER,
    NPU_CONTROL_DEVICES,
    NPU_DEVICE_GLOB,
    NPU_DRIVER_MOUNTS,
    REQUIRE_GPU,
    REQUIRE_NPU,
    SCRIPT_NAME,
    VERIFY_TIMEOUT_S,
    WORKER_HOSTNAME,
    RunUser,
)
from modelarts_images.engine.api import ContainerRun, GpuSupport, Mount
from modelarts_images.errors import ConfigError
from modelarts_images.options import Device, DeviceChoice
from modelarts_images.paths import VERIFY_DIR


@dataclass(frozen=True, kw_only=True)
class NpuHost:
    """What this host has of an Ascend NPU, as Ascend's container docs pass it into a container."""

    devices: tuple[str, ...]  # /dev/davinciN (one per chip) and the control devices that exist
    mounts: tuple[str, ...]  # the driver's directories and npu-smi that exist
    missing: tuple[str, ...]  # what the docs list and the host lacks

    @property
    def usable(self) -> bool:
        return any(Path(device).name.removeprefix("davinci").isdigit() for device in self.devices) \
            and not self.missing


def npu_host(root: Path = Path("/")) -> NpuHost:
    """The host's NPU device files and driver paths (under `root`, for the tests)."""
    def here(path: str) -> Path:
        return root / path.lstrip("/")

    chips = sorted(str(Path("/dev") / found.name) for found in here("/dev").glob(Path(NPU_DEVICE_GLOB).name))
    controls = [device for device in NPU_CONTROL_DEVICES if here(device).exists()]
    mounts = tuple(path for path in NPU_DRIVER_MOUNTS if here(path).exists())
    missing = ((() if chips else (NPU_DEVICE_GLOB,)) + tuple(d for d in NPU_CONTROL_DEVICES if d not in controls)
               + tuple(path for path in NPU_DRIVER_MOUNTS if path not in mounts))
    return NpuHost(devices=(*chips, *controls), mounts=mounts, missing=missing)


def run_spec(reference: str, *, device: Device, script_dir: Path = VERIFY_DIR, gpus: int = 1,
             timeout: float = VERIFY_TIMEOUT_S, user: RunUser = DEFAULT_USER, platform: str | None = None,
             npu: NpuHost | None = None) -> ContainerRun:
    """The container ModelArts would start for the boot command, on a CPU flavor, a `gpus`-GPU flavor or an
    Ascend one (`npu`: the host's devices and driver, passed in as Ascend's container docs do).

    On a GPU the script gets --require-gpu and on an NPU --require-npu, so a missing accelerator fails instead of
    falling back to the CPU.
    """
    if gpus < 1:
        raise ConfigError(f"gpus: {gpus} must be 1 or more")
    gpu = device is Device.GPU
    on_npu = device is Device.NPU and npu is not None
    command: tuple[str, ...] = (user.boot_python, f"{user.code_dir}/{SCRIPT_NAME}")
    mounts = [Mount(source=str(Path(script_dir).resolve()), target=user.code_dir, read_only=True)]
    mounts += [Mount(source=path, target=path, read_only=True) for path in (npu.mounts if on_npu and npu else ())]
    return ContainerRun(
        image=reference,
        command=command + ((REQUIRE_GPU,) if gpu else (REQUIRE_NPU,) if device is Device.NPU else ()),
        user=user.spec,
        working_dir=user.home,
        environment=user.job_environment(gpus=gpus if gpu else 0),
        mounts=tuple(mounts),
        gpus=gpus if gpu else 0,
        hostname=WORKER_HOSTNAME,
        timeout=timeout,
        platform=platform,
        devices=npu.devices if on_npu and npu else (),
    )


def require_npu_host(npu: NpuHost) -> NpuHost:
    """The host's NPU for --device npu; ConfigError naming what it lacks when it has none."""
    if not npu.usable:
        raise ConfigError(f"--device npu: this host has no usable Ascend NPU (missing: {', '.join(npu.missing)}); "
                          "verify on the CPU (--device cpu) here, on an Ascend host with its driver installed, or on "
                          "ModelArts (--on modelarts)")
    return npu


def resolve_devices(requested: DeviceChoice, gpu: GpuSupport | None, *, npu_image: bool = False,
                    npu: NpuHost | None = None) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """(devices to run on, notes on what was skipped) for --device cpu|gpu|npu|both|auto.

    auto: the GPU when the engine can give one (an Ascend image: the host's NPU when it has one), otherwise the
    CPU and a "skipped" note. `gpu` and `npu` are only needed for auto; --device npu needs the host's NPU.
    """
    if requested is DeviceChoice.BOTH:
        return (Device.CPU, Device.GPU), ()
    if requested is DeviceChoice.NPU:
        require_npu_host(npu or npu_host())
        return (Device.NPU,), ()
    if requested is not DeviceChoice.AUTO:
        return (Device(requested.value),), ()
    if npu_image:
        if npu is not None and npu.usable:
            return (Device.NPU,), ()
        missing = ", ".join(npu.missing) if npu is not None else "not asked"
        return (Device.CPU,), (f"NPU: skipped, no Ascend NPU on this host (missing: {missing})",)
    if gpu is not None and gpu.available:
        return (Device.GPU,), ()
    reason = gpu.reason if gpu is not None else "not asked"
    return (Device.CPU,), (f"GPU: skipped, no GPU runtime ({reason})",)
