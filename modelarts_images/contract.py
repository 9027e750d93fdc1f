"""ModelArts' contract with a custom training image: who runs it, where, with what, and within which limits.

Every stage checks against these values: the build creates the user and the conda prefix, verification runs
the boot command the way the platform does, conformance checks the rules, the training-job body names them.
The user is versions.yaml's `user:` (ma-user 1000:100 unless an entry says otherwise); every path below
follows from its home directory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RunUser:
    """The user a training job's container runs as, and the places that follow from its home directory."""

    # ModelArts' current pages: custom images carry user ma-user (UID 1000) in group ma-group (GID 100)
    # (support.huaweicloud.com/drawer-modelarts/ma_drawer_124.html; ma-cli's --uid defaults to 1000,
    # devtool-modelarts_0322.html). The older page T-Systems' Open Telekom Cloud still serves says uid 1101
    # (docs.otc.t-systems.com, ModelArts > Custom Images > Specifications for Custom Images Used for Training
    # Jobs). versions.yaml's `user:` sets another. Debian and Ubuntu name gid 100 `users`; the checks compare ids.
    name: str = "ma-user"
    uid: int = 1000
    gid: int = 100

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def conda_prefix(self) -> str:
        return f"{self.home}/miniconda3"

    @property
    def boot_python(self) -> str:
        return f"{self.conda_prefix}/bin/python"

    # Where the platform mounts its own directories and puts the job's code from OBS: ${MA_JOB_DIR}/<last
    # level of the OBS code directory> (ModelArts' training-job pages, "Environment variables": MA_HOME,
    # MA_MOUNT_PATH, MA_JOB_DIR, MA_LOG_DIR). The code directory of a job is `code`.
    @property
    def mount_path(self) -> str:
        return f"{self.home}/modelarts"

    @property
    def job_dir(self) -> str:
        return f"{self.mount_path}/user-job-dir"

    @property
    def log_dir(self) -> str:
        return f"{self.mount_path}/log"

    @property
    def code_dir(self) -> str:
        return f"{self.job_dir}/code"

    @property
    def boot_command(self) -> str:
        """The boot command as typed in the ModelArts console; the platform expands ${MA_JOB_DIR} before running
        it without a shell, so a container's argv carries the expanded path (code_dir)."""
        return f"{self.boot_python} {self.platform_code_dir}/{SCRIPT_NAME}"

    @property
    def platform_code_dir(self) -> str:
        """code_dir as a training job's command names it (the platform expands the variable)."""
        return "${MA_JOB_DIR}/code"

    @property
    def spec(self) -> str:
        """'uid:gid', as a container's user."""
        return f"{self.uid}:{self.gid}"

    def job_environment(self, *, gpus: int) -> tuple[tuple[str, str], ...]:
        """The variables ModelArts injects into a single-node training container (MA_CURRENT_IP, the pod's
        address, is left out: the engine's network decides it)."""
        return (
            ("MA_HOME", self.home),
            ("MA_MOUNT_PATH", self.mount_path),
            ("MA_JOB_DIR", self.job_dir),
            ("MA_LOG_DIR", self.log_dir),
            ("MA_NUM_GPUS", str(max(gpus, 0))),
            ("MA_NUM_HOSTS", "1"),
            ("MA_TASK_NAME", "worker"),
            ("VC_TASK_INDEX", "0"),
            ("VC_WORKER_NUM", "1"),
            ("VC_WORKER_HOSTS", WORKER_HOSTNAME),
        )


SCRIPT_NAME = "pytorch-verification.py"
LAUNCHER_SCRIPT = "launch-torchrun.sh"  # beside the script: torchrun on every worker, through a shell
# The script's port for the master's rendezvous when none is given: ModelArts documents none; the community copies
# of its PyTorch examples use 6060.
DEFAULT_MASTER_PORT = 6060
# How long a worker waits for the others (and the master) before it fails naming whom it tried: torch's own
# default is 30 minutes of a billed job doing nothing.
RENDEZVOUS_TIMEOUT_S = 60
MIN_RENDEZVOUS_TIMEOUT_S, MAX_RENDEZVOUS_TIMEOUT_S = 5, 3600  # --rendezvous-timeout's range
MAX_NODES = 16  # workers of a distributed verification (versions.schema.json says the same): more is a typo
REQUIRE_GPU = "--require-gpu"  # the script's flag on a GPU flavour: no CUDA is a failure, not a CPU run
REQUIRE_NPU = "--require-npu"  # the same on an Ascend flavour: no usable NPU is a failure


@dataclass(frozen=True, kw_only=True)
class NpuGroup:
    """The group the host's Ascend devices belong to. Ascend's driver gives /dev/davinci* to HwHiAiUser (mode 0660)
    and its cluster docs have HwHiAiUser at uid and gid 1000 on every host and in every container: the training
    user (uid 1000) joins the group, so it reaches the devices by the group as well as by its uid."""

    name: str = "HwHiAiUser"
    gid: int = 1000


NPU_GROUP = NpuGroup()
# What Ascend's container docs pass into a container for the NPU: device files (davinci0, davinci1, ... one per
# chip, plus the managers) and the host driver's directories and tool, mounted read-only. ModelArts mounts them
# itself; `inv verify --device npu` passes the host's own.
NPU_DEVICE_GLOB = "/dev/davinci[0-9]*"
NPU_CONTROL_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
NPU_DRIVER_MOUNTS = ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi")
WORKER_HOSTNAME = "modelarts-job-worker-0"  # the pod name pattern of a single-worker job
DEFAULT_USER = RunUser()

# A size *budget*, not a documented rule of the current platform. Only ModelArts' legacy training pages state
# "The size of a custom image cannot exceed 9.5 GB" (old ModelArts > Custom Images > "Specifications for
# Custom Images Used for Training Jobs", modelarts_23_0217, and T-Systems' Open Telekom Cloud copy of it); the
# current custom-image pages state no size limit. So an image above it draws a warning, and fails conformance
# only when the user sets --size-budget. Compared with the engine's uncompressed size, 9.5 * 10^9 bytes.
IMAGE_SIZE_BUDGET = 9_500_000_000
VERIFY_TIMEOUT_S = 600.0  # how long one verification container may run by default
JOB_TIMEOUT_S = 3600.0  # how long a verification job on ModelArts may take, its queue included, by default
