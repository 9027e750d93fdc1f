"""ModelArts' contract with a custom training image: who runs it, where, with what, and within which limits.

Every stage checks against these values: the build creates the user and the conda prefix, verification runs
the boot command the way the platform does, conformance checks the rules, the training-job body names them.
"""

from __future__ import annotations

MA_USER = "ma-user"
MA_UID = 1000
MA_GID = 100
MA_HOME = "/home/ma-user"
CONDA_PREFIX = f"{MA_HOME}/miniconda3"
BOOT_PYTHON = f"{CONDA_PREFIX}/bin/python"

# Where the platform mounts its own directories and the job's code from OBS (${MA_JOB_DIR}/<code dir>).
MA_MOUNT_PATH = f"{MA_HOME}/modelarts"
MA_JOB_DIR = f"{MA_MOUNT_PATH}/user-job-dir"
MA_LOG_DIR = f"{MA_MOUNT_PATH}/log"
CODE_DIR = f"{MA_JOB_DIR}/code"
SCRIPT_NAME = "pytorch-verification.py"
# The boot command as typed in the ModelArts console; the platform expands ${MA_JOB_DIR} before running it
# without a shell, so a container's argv carries the expanded path (CODE_DIR).
BOOT_COMMAND = f"{BOOT_PYTHON} ${{MA_JOB_DIR}}/code/{SCRIPT_NAME}"
WORKER_HOSTNAME = "modelarts-job-worker-0"

# ModelArts' documented limit for custom training images: "The size of a custom image cannot exceed 9.5 GB"
# (Huawei Cloud, ModelArts > Custom Images > For Training Models > Specifications for Custom Images Used for
# Training Jobs, modelarts_23_0217; the same figure in T-Systems' Open Telekom Cloud copy of that page).
# Not sure of: whether the platform measures it compressed (in SWR) or uncompressed, and whether GB means 10^9
# or 2^30 bytes. This compares the engine's uncompressed size with 9.5 * 10^9 bytes, the strictest reading.
# (ModelArts' limit for *inference* images is different: 50 GB in current docs.) `--size-budget` changes it.
IMAGE_SIZE_BUDGET = 9_500_000_000
VERIFY_TIMEOUT_S = 600.0  # how long one verification container may run by default


def job_environment(*, gpus: int) -> tuple[tuple[str, str], ...]:
    """The variables ModelArts injects into a single-node training container (MA_CURRENT_IP, the pod's
    address, is left out: the engine's network decides it)."""
    return (
        ("MA_HOME", MA_HOME),
        ("MA_MOUNT_PATH", MA_MOUNT_PATH),
        ("MA_JOB_DIR", MA_JOB_DIR),
        ("MA_LOG_DIR", MA_LOG_DIR),
        ("MA_NUM_GPUS", str(max(gpus, 0))),
        ("MA_NUM_HOSTS", "1"),
        ("MA_TASK_NAME", "worker"),
        ("VC_TASK_INDEX", "0"),
        ("VC_WORKER_NUM", "1"),
        ("VC_WORKER_HOSTS", WORKER_HOSTNAME),
    )
