"""PyTorch verification for a ModelArts training image (stdlib + torch only; Python 3.7 syntax and up).

ModelArts boot command (no shell, no `conda activate`):

    /home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py [--require-gpu | --require-npu]

What it prints:
1. what the original recipe printed: a random 5x3 tensor, then one on the available device (a GPU run shows
   `device='cuda:0'`, an NPU run `device='npu:0'`);
2. one line per check, `[ ok ] name: detail` or `[FAIL] name: detail` (and, when torch_npu is installed but no NPU
   is usable without --require-npu, one line `[info] npu: ...` saying why, which is not a check);
3. last, one line `MODELARTS_VERIFY_RESULT {json}` with the facts and every check, for the tools to read. The facts
   include how the interpreter started (sys.prefix, whether the standard modules backed by shared libraries
   import, which activation variables were set), which the conformance check `boot-python` judges.

Checks: torch imports; tensors print; a matrix product on the device; a small autograd backward pass and SGD
steps on the device; on a GPU or an NPU both are compared with the same computation on the CPU. `--require-gpu`
adds `cuda-available`, which fails when CUDA is unavailable instead of falling back to the CPU.

An Ascend NPU (torch_npu, Ascend's PyTorch adapter, on CANN). With torch_npu installed a plain `import torch` loads
it through torch's device-backend entry point, and fails without CANN. So before torch imports the script looks
for torch_npu without importing it (importlib.util.find_spec); when it is there, or with --require-npu, it sets
TORCH_DEVICE_BACKEND_AUTOLOAD=0 (unless the environment set it), so torch imports and the CPU checks still run;
then it imports torch_npu itself and says why that fails, without a traceback for these expected causes (the
error's wrapped causes read too: torch wraps the ImportError):
- `npu:cann`: "CANN missing": a library of CANN's (libhccl.so, libascendcl.so, libacl_*.so, ...; any library but
  the driver's) "cannot open shared object file". The image needs a CANN base and set_env.sh's environment as ENV
  (ASCEND_TOOLKIT_HOME, ASCEND_HOME_PATH, ASCEND_OPP_PATH, LD_LIBRARY_PATH). Fails with or without --require-npu:
  CANN is part of the image.
- `npu:driver`: libascend_hal.so not found: the host's driver is not mounted at /usr/local/Ascend/driver (the
  platform mounts it); the detail names the device files missing (/dev/davinci*, /dev/davinci_manager,
  /dev/devmm_svm, /dev/hisi_hdc).
- `npu:device`: torch_npu imports but torch.npu.is_available() is False or device_count() is 0: no visible NPU
  (the detail gives ASCEND_VISIBLE_DEVICES, which ModelArts sets).
- `npu:import`: anything else (a torch_npu built for another torch, a module it needs missing: its traceback goes
  to the log); with --require-npu also "torch_npu is not installed". Fails whenever torch_npu is installed.
npu:driver and npu:device fail only with --require-npu; without it the cause is recorded (npu_unavailable) and
the checks fall back to the CPU (or CUDA) as the GPU path does. A usable NPU adds `npu-available` (the count and
names) and the checks run on npu:0. Where `import torch` itself fails loading torch_npu (the environment set
TORCH_DEVICE_BACKEND_AUTOLOAD=1), `import-torch` fails and so does the npu: check of the cause. --require-gpu and
--require-npu do not go together (a usage error).

The facts of the NPU in the result line: require_npu; torch_npu (its version, None when not installed);
npu_available; npu_device_count; npu_devices (names); npu_unavailable ("<cause>: <detail>", cause one of cann,
driver, device, import, missing; None when an NPU is usable or none was looked for); ascend_home
(ASCEND_HOME_PATH, else ASCEND_TOOLKIT_HOME, else None).

A distributed job (MA_NUM_HOSTS > 1, or WORLD_SIZE > 1 under a launcher) adds the `distributed:` checks after
those, and the boot command is one of:

    # the plain boot command on every worker: the script is local rank 0 of its node and starts the node's
    # other processes itself (copies of itself, with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    /home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py \
        [--procs-per-node P] [--master-port 6060] [--rendezvous-timeout 60]

    # under a launcher, through a shell (launch-torchrun.sh beside this script starts the first, or on torch < 1.9
    # python -m torch.distributed.launch --use_env with the same arguments; without --use_env the script takes
    # the local rank from its --local_rank argument): every process runs the script, rank and world from the
    # environment
    python -m torch.distributed.run --nnodes=$MA_NUM_HOSTS --node_rank=$VC_TASK_INDEX \
        --nproc_per_node=P --master_addr="${VC_WORKER_HOSTS%%,*}" --master_port=6060 \
        ${MA_JOB_DIR}/code/pytorch-verification.py

ModelArts gives every worker MA_NUM_HOSTS (= VC_WORKER_NUM), VC_TASK_INDEX (0-based), VC_WORKER_HOSTS (the workers'
names in order, `<job>-worker-0.<job>,...`), MA_CURRENT_IP, MA_CURRENT_INSTANCE_NAME, MA_NUM_GPUS; the master is
the first host of VC_WORKER_HOSTS, as Huawei's docs derive MASTER_ADDR. With the plain boot command (launcher
"boot": MA_NUM_HOSTS > 1 and no RANK/WORLD_SIZE in the environment) world size = MA_NUM_HOSTS * P and rank =
VC_TASK_INDEX * P + local rank; the rendezvous is tcp://<master>:<port>. Under a launcher (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; "torchrun" when TORCHELASTIC_RUN_ID or GROUP_RANK is set, else "launch")
the rendezvous is env:// and --master-port is not used. Only local rank 0 runs the device checks and prints the
result line; the other processes of a node print their `distributed:` check lines after `[rank R] ` and exit 0/1
(with the plain boot command local rank 0 relays their lines and fails `distributed:local_ranks` naming any that
failed). A failed rendezvous or collective also says which other workers of VC_WORKER_HOSTS no longer resolve:
a worker that is gone (its container or pod removed) shows so, and the detail names it.

Options of a distributed job (a single-node run ignores them):
    --master-port PORT           the master's rendezvous port with the plain boot command (default 6060,
                                 DEFAULT_MASTER_PORT; under a launcher MASTER_PORT)
    --procs-per-node P           processes per node with the plain boot command (default 1 on the CPU,
                                 torch.cuda.device_count() with CUDA; under a launcher LOCAL_WORLD_SIZE when set)
    --rendezvous-timeout SECONDS how long a worker waits for the master and the others, and each collective
                                 (default 60, RENDEZVOUS_TIMEOUT_S, not torch's 30 minutes)

The distributed checks, in order, each detail ending with its time as `(0.12 s)`; after a failure the rest are
not run, but for the collectives' wrong values:
- `distributed:available`: torch.distributed and the backend (gloo on the CPU, nccl on CUDA); the launcher, the
  rank and the world;
- `distributed:environment`, only when it fails: a variable above missing or inconsistent;
- `distributed:master`: the master's name resolves (retried until the rendezvous deadline);
- `distributed:rendezvous`: init_process_group with the backend, the master host:port, the world as
  "N nodes × P = W ranks"; a rank other than 0 first waits for the master's port to accept a connection;
- `distributed:all_reduce`: every rank adds rank + 1, the sum must be W(W+1)/2;
- `distributed:broadcast`: rank 0's known values (arange) arrive exactly on every rank;
- `distributed:barrier` (a wrong value above fails its check and the next collectives still run, since the other
  ranks wait for them; an error of a collective itself ends them);
- `distributed:local_ranks` (plain boot command, P > 1, local rank 0 only): the node's other processes passed.
Tensors are on the CPU for gloo, on cuda:<local rank> for NCCL; then destroy_process_group. On an NPU the
distributed checks use gloo on the CPU (HCCL is not checked).

The bound: resolving the master and the rendezvous end within --rendezvous-timeout seconds of the start of the
distributed checks, and each collective within as many again (torch's timeout is set to it). Where torch's own
timeout does not hold (a client's connect retries past it, NCCL may wait on a dead peer for ever), a watchdog
thread ends the process WATCHDOG_GRACE_S (3) seconds after the deadline: the step's check fails naming what it
waited for, the result line is printed (once: by the watchdog or at the end, never both) and the exit status is 1.

Exit status: 0 when every check passed, 1 when one failed, 2 for a usage error.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

RESULT_PREFIX = "MODELARTS_VERIFY_RESULT "
SCHEMA = 1
ENV_PREFIXES = ("MA_", "VC_")
# Names of injected variables whose values are never printed (ModelArts may inject credentials as MA_*).
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
TOLERANCE = 1e-3  # GPU against CPU, float32 (relative and absolute)
# Standard modules backed by shared libraries: they fail to import when the interpreter cannot find its own
# libraries, as happens to a conda python started without `conda activate` when its prefix is wrong.
SHARED_LIBRARY_MODULES = ("ssl", "ctypes", "zlib", "sqlite3", "bz2", "lzma")
ACTIVATION_VARIABLES = ("CONDA_PREFIX", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV")
# A distributed job: the master's port when none is given (ModelArts documents none; the community copies of its
# PyTorch examples use 6060), and how long a worker waits for the others before it fails naming whom it tried
# (torch's own default is 30 minutes of a billed job doing nothing).
DEFAULT_MASTER_PORT = 6060
RENDEZVOUS_TIMEOUT_S = 60
WATCHDOG_GRACE_S = 3  # after a step's deadline, how long torch has to fail on its own before the watchdog ends it
RESOLVE_PAUSE_S = 1.0  # between tries to resolve the master's name
PEERS_LOOKUP_S = 2.0  # after a failure, how long the other workers' names may take to resolve, all together
CHILD_MARKER = "MODELARTS_VERIFY_PARENT"  # the parent's pid, in the processes the plain boot command starts
BROADCAST_VALUES = 16
OUTPUT_LOCK = threading.Lock()  # one line at a time: the watchdog and the children's relays print too
# An Ascend NPU (torch_npu on CANN). With torch_npu installed a plain `import torch` loads it through torch's
# device-backend entry point and fails without CANN; the variable below (set before torch imports) turns that off,
# and the script imports torch_npu itself and says why it fails.
AUTOLOAD_VARIABLE = "TORCH_DEVICE_BACKEND_AUTOLOAD"
ASCEND_DRIVER_DIR = "/usr/local/Ascend/driver"  # where the platform mounts the host's driver
NPU_DEVICE_FILES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")  # and /dev/davinci<N>
DRIVER_LIBRARIES = ("libascend_hal", "libdrvdsmi_host", "libdcmi")  # the driver's, not CANN's
# How the libraries of CANN and the driver begin: a failed `import torch` naming one is torch_npu's
ASCEND_LIBRARY_PREFIXES = ("libascend", "libacl", "libhccl", "libge_", "libge.", "libgraph", "libruntime", "libopapi",
                           "libtiling", "libplatform", "libregister", "liberror_manager", "libmmpa", "libc_sec",
                           "libmsprof", "libprofapi", "libnnopbase", "libop", "libfmk", "libaicpu", "libtsd",
                           "libdrvdsmi", "libdcmi")
# What a missing shared library reads: `libhccl.so: cannot open shared object file: No such file or directory`
MISSING_LIBRARY = re.compile(r"([^\s:'\"()\[\]]+\.so(?:\.[0-9]+)*)\s*:\s*cannot open shared object file")
NPU_CHECKS = {"cann": "npu:cann", "driver": "npu:driver", "device": "npu:device", "import": "npu:import",
              "missing": "npu:import"}


def say(line):
    """Print one line and flush it (a locale that cannot encode it gets escapes, not an exception)."""
    with OUTPUT_LOCK:
        try:
            sys.stdout.write(line + "\n")
        except UnicodeEncodeError:
            encoding = sys.stdout.encoding or "ascii"
            sys.stdout.write(line.encode(encoding, "backslashreplace").decode(encoding) + "\n")
        sys.stdout.flush()


class Checks:
    """The checks run so far, printed as they finish."""

    def __init__(self, label=""):
        self.items = []
        self.label = label  # "[rank 3] " in the processes that print no result line

    def add(self, name, ok, detail):
        self.items.append({"name": name, "ok": bool(ok), "detail": str(detail)})
        say("{}[{}] {}: {}".format(self.label, " ok " if ok else "FAIL", name, detail))
        return ok

    def run(self, name, function):
        """Run function() -> (ok, detail); an exception is a failed check with its type and message."""
        try:
            ok, detail = function()
        except Exception as error:  # every failure must end up in the result line
            traceback.print_exc()
            ok, detail = False, f"{type(error).__name__}: {error}"
        return self.add(name, ok, detail)

    @property
    def all_ok(self):
        return all(item["ok"] for item in self.items)


def seen_environment():
    """The MA_* and VC_* variables the platform set, with secret-looking values masked."""
    seen = {}
    for name in sorted(os.environ):
        if name.startswith(ENV_PREFIXES):
            secret = any(marker in name.upper() for marker in SECRET_MARKERS)
            seen[name] = "***" if secret else os.environ[name]
    return seen


def identity():
    facts = {"uid": None, "gid": None, "user": None, "groups": []}
    if hasattr(os, "getuid"):
        facts["uid"] = os.getuid()
        facts["gid"] = os.getgid()
        facts["groups"] = sorted(os.getgroups())
        try:
            import pwd

            facts["user"] = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            facts["user"] = None  # a uid without a passwd entry
    return facts


def interpreter():
    """How the interpreter started: its prefix, its library-backed modules, activation variables."""
    modules = {}
    for name in SHARED_LIBRARY_MODULES:
        try:
            __import__(name)
            modules[name] = "ok"
        except Exception as error:  # any failure to import is the fact to report
            modules[name] = f"{type(error).__name__}: {error}"
    return {"prefix": sys.prefix, "modules": modules,
            "activated": sorted(name for name in ACTIVATION_VARIABLES if name in os.environ)}


def torch_facts(torch):
    facts = {
        "torch": getattr(torch, "__version__", None),
        "torch_cuda": getattr(torch.version, "cuda", None),
        "cudnn": None,
        "cuda_available": False,
        "device_count": 0,
        "devices": [],
    }
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
    except Exception as error:  # cuDNN missing or broken: a fact, not a crash
        facts["cudnn"] = f"error: {error}"
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["device_count"] = int(torch.cuda.device_count())
        facts["devices"] = [torch.cuda.get_device_name(index) for index in range(facts["device_count"])]
    except Exception as error:
        facts["cuda_error"] = f"{type(error).__name__}: {error}"
    return facts


def original_output(torch, device):
    """What the original recipe printed (people look for device='cuda:0' in the ModelArts log)."""
    x = torch.randn(5, 3)
    print(x)
    y = torch.randn(5, 3).to(device)
    print(y)
    sys.stdout.flush()
    return True, f"random 5x3 tensors printed, the second on {y.device}"


def disable_tf32(torch):
    """TF32 matmuls (the default on Ampere GPUs with torch 1.7-1.11) would not match the CPU in float32."""
    matmul = getattr(getattr(torch.backends, "cuda", None), "matmul", None)
    if matmul is not None and hasattr(matmul, "allow_tf32"):
        matmul.allow_tf32 = False


def max_difference(torch, got, expected):
    return float(torch.max(torch.abs(got.detach().cpu().double() - expected.detach().cpu().double())))


def close(torch, got, expected):
    return bool(torch.allclose(got.detach().cpu(), expected.detach().cpu(), rtol=TOLERANCE, atol=TOLERANCE))


def matmul_check(torch, device):
    generator = torch.Generator().manual_seed(1234)
    a = torch.randn(64, 32, generator=generator)
    b = torch.randn(32, 16, generator=generator)
    product = torch.mm(a.to(device), b.to(device))
    if not bool(torch.isfinite(product).all()):
        return False, f"the product on {device} has non-finite values"
    if device.type == "cpu":
        # an independent computation of the same product: sum over k of a[i, k] * b[k, j]
        reference = (a.unsqueeze(2) * b.unsqueeze(0)).sum(dim=1)
        against = "an elementwise computation"
    else:
        reference = torch.mm(a, b)
        against = "the CPU"
    difference = max_difference(torch, product, reference)
    ok = close(torch, product, reference)
    return ok, (f"64x32 @ 32x16 on {device}; max |difference| against {against} = {difference:.2e} "
                f"(tolerance {TOLERANCE:.0e})")


def train(torch, device, steps=5):
    """A tiny linear regression: forward, backward, SGD steps. Returns the losses and the final weights."""
    generator = torch.Generator().manual_seed(4321)
    inputs = torch.randn(32, 4, generator=generator)
    true_weight = torch.randn(4, 1, generator=generator)
    targets = inputs.mm(true_weight) + 0.5
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=generator))
        model.bias.zero_()
    model = model.to(device)
    inputs, targets = inputs.to(device), targets.to(device)
    parameters = list(model.parameters())
    losses = []
    for _ in range(steps):
        for parameter in parameters:
            parameter.grad = None
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        if model.weight.grad is None or not bool(torch.isfinite(model.weight.grad).all()):
            raise RuntimeError("backward produced no finite gradient")
        # Plain SGD, what torch.optim.SGD(lr=0.1) does without momentum; torch.optim's first optimizer imports
        # torch._dynamo, most of a second of the run, and is no part of what this checks.
        with torch.no_grad():
            for parameter in parameters:
                parameter -= 0.1 * parameter.grad
        losses.append(float(loss.item()))
    return losses, model.weight.detach().cpu(), model.bias.detach().cpu()


def autograd_check(torch, device):
    losses, weight, bias = train(torch, device)
    if not losses[-1] < losses[0]:
        return False, f"the loss did not decrease over {len(losses)} SGD steps on {device}: {losses}"
    detail = f"linear model, backward + {len(losses)} SGD steps on {device}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    if device.type != "cpu":
        _, cpu_weight, cpu_bias = train(torch, torch.device("cpu"))
        difference = max(max_difference(torch, weight, cpu_weight), max_difference(torch, bias, cpu_bias))
        if not (close(torch, weight, cpu_weight) and close(torch, bias, cpu_bias)):
            return False, (f"{detail}; the trained weights differ from the CPU's by {difference:.2e} "
                           f"(tolerance {TOLERANCE:.0e})")
        detail += f"; weights match the CPU's within {TOLERANCE:.0e} (max |difference| {difference:.2e})"
    return True, detail


# --------------------------------------------------------------------------------------------------------------
# An Ascend NPU (torch_npu on CANN)


def find_torch_npu(require_npu):
    """Before torch imports: whether torch_npu is installed (True or False; None when looking failed), found
    without importing it. When it is (or may be), or with --require-npu, torch's auto-load of device backends is
    turned off (unless the environment set TORCH_DEVICE_BACKEND_AUTOLOAD itself), so that `import torch` works
    without CANN and the CPU checks still run; torch_npu is imported later, by probe_npu."""
    try:
        installed = importlib.util.find_spec("torch_npu") is not None
    except Exception:  # a finder that fails, or a torch_npu in sys.modules without a spec: the import will say
        installed = None
    if installed is not False or require_npu:
        os.environ.setdefault(AUTOLOAD_VARIABLE, "0")
    return installed


def distribution_version(name):
    """An installed distribution's version from its metadata (without importing it), None when unknown."""
    try:
        from importlib import metadata
    except ImportError:  # Python 3.7
        return None
    for spelling in (name, name.replace("_", "-")):
        try:
            return metadata.version(spelling)
        except Exception:  # not installed, or broken metadata
            continue
    return None


def ascend_home():
    return os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or None


def error_chain(error, limit=8):
    """The exception and the ones it wraps (__cause__, else __context__): torch wraps a backend's ImportError."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen and len(chain) < limit:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ if error.__cause__ is not None else error.__context__
    return chain


def chain_text(error):
    return "; caused by ".join(error_text(item) for item in error_chain(error))


def missing_libraries(error):
    """The shared libraries the exception (or one it wraps) could not open, by file name, in order."""
    found = []
    for item in error_chain(error):
        for text in (str(item), " ".join(str(argument) for argument in getattr(item, "args", ()))):
            for library in MISSING_LIBRARY.findall(text):
                library = Path(library).name
                if library not in found:
                    found.append(library)
    return found


def is_driver_library(library):
    return library.split(".so", 1)[0] in DRIVER_LIBRARIES


def missing_device_files():
    """The NPU device files that are not there (/dev/davinci* when there is no /dev/davinci<N>)."""
    def there(path, pattern=None):
        try:
            return any(Path(path).glob(pattern)) if pattern else Path(path).exists()
        except OSError:  # not allowed to look: as good as not there
            return False

    missing = [] if there("/dev", "davinci[0-9]*") else ["/dev/davinci*"]
    return missing + [path for path in NPU_DEVICE_FILES if not there(path)]


def visible_devices_text():
    value = os.environ.get("ASCEND_VISIBLE_DEVICES")
    return "ASCEND_VISIBLE_DEVICES is not set" if value is None else f"ASCEND_VISIBLE_DEVICES={value!r}"


def cann_detail(library, error):
    detail = (f"CANN missing: {library} cannot be loaded ({chain_text(error)}); the image needs a CANN base (the "
              "Ascend toolkit torch_npu was built for) and set_env.sh's environment as ENV (ASCEND_TOOLKIT_HOME, "
              "ASCEND_HOME_PATH, ASCEND_OPP_PATH, LD_LIBRARY_PATH)")
    if not os.environ.get("ASCEND_HOME_PATH"):
        return detail + "; ASCEND_HOME_PATH is not set"
    return detail + "; ASCEND_HOME_PATH={} but {} is not on LD_LIBRARY_PATH={!r}".format(
        os.environ["ASCEND_HOME_PATH"], library, os.environ.get("LD_LIBRARY_PATH", ""))


def driver_detail(library):
    if Path(ASCEND_DRIVER_DIR).is_dir():
        where = f"{ASCEND_DRIVER_DIR} is there but {library} is not on LD_LIBRARY_PATH (its lib64)"
    else:
        where = f"the Ascend driver is not mounted at {ASCEND_DRIVER_DIR} (the platform mounts the host's driver there)"
    missing = missing_device_files()
    files = ("device files missing: " + ", ".join(missing)) if missing else "the device files are there"
    return f"{library} not found: {where}; {files}"


def npu_failure(error, stage="import"):
    """(cause, detail, expected) for an exception importing torch_npu (or using torch.npu, stage "device"):
    cause "cann" (a CANN library missing), "driver" (the driver's libascend_hal missing), "missing" (no torch_npu),
    "device" (torch.npu failed), "import" (anything else); expected False when a traceback belongs in the log."""
    libraries = missing_libraries(error)
    cann = [library for library in libraries if not is_driver_library(library)]
    if cann:
        return "cann", cann_detail(cann[0], error), True
    if libraries:
        return "driver", driver_detail(libraries[0]), True
    if isinstance(error, ImportError) and getattr(error, "name", None) == "torch_npu":
        return "missing", f"torch_npu is not installed (no module torch_npu for {sys.executable})", True
    if stage == "device":
        return "device", f"torch.npu cannot count the NPUs: {chain_text(error)}; {visible_devices_text()}", False
    return "import", f"torch_npu does not import: {chain_text(error)}", False


def npu_failure_of_torch(error):
    """(cause, detail) when `import torch` failed loading torch_npu through the backend entry point (torch's
    message names it, or a library of CANN's or the driver's is missing), else None: torch's own failure."""
    names_it = any("backend extension: torch_npu" in str(item) for item in error_chain(error))
    ascend = any(library.startswith(ASCEND_LIBRARY_PREFIXES) for library in missing_libraries(error))
    if not (names_it or ascend):
        return None
    cause, detail, _ = npu_failure(error)
    return ("import" if cause == "missing" else cause), detail


def npu_fails(cause, require_npu):
    """Whether an unusable NPU is a failed check: CANN and a broken torch_npu are the image's fault; no driver,
    no device or no torch_npu only with --require-npu (else the checks fall back like the GPU path does)."""
    return cause in ("cann", "import") or require_npu


def probe_npu(torch):
    """After torch imports: torch_npu imported, its NPUs counted. (facts, failure): failure is None when an NPU
    is usable, else (cause, detail); the traceback of an unexpected failure goes to the log."""
    facts = {"torch_npu": distribution_version("torch_npu"), "npu_available": False, "npu_device_count": 0,
             "npu_devices": []}
    try:
        import torch_npu
    except Exception as error:  # a missing CANN or driver, a torch it was not built for: say which
        cause, detail, expected = npu_failure(error)
        if not expected:
            traceback.print_exc()
        return facts, (cause, detail)
    version = getattr(torch_npu, "__version__", None) or facts["torch_npu"]
    facts["torch_npu"] = None if version is None else str(version)
    npu = getattr(torch, "npu", None)
    if npu is None:
        return facts, ("import", f"torch_npu {facts['torch_npu']} imported but torch has no torch.npu")
    try:
        facts["npu_available"] = bool(npu.is_available())
        facts["npu_device_count"] = int(npu.device_count())
        if facts["npu_available"]:
            facts["npu_devices"] = [str(npu.get_device_name(index)) for index in range(facts["npu_device_count"])]
    except Exception as error:  # the driver or the device: a fact, not a crash
        facts["npu_available"] = False
        cause, detail, expected = npu_failure(error, stage="device")
        if not expected:
            traceback.print_exc()
        return facts, (cause, detail)
    if not facts["npu_available"] or facts["npu_device_count"] == 0:
        missing = missing_device_files()
        detail = (f"no visible NPU: torch.npu.is_available() is {facts['npu_available']}, device_count() "
                  f"{facts['npu_device_count']}; {visible_devices_text()}")
        if missing:
            detail += "; device files missing: " + ", ".join(missing)
        facts["npu_available"] = False
        return facts, ("device", detail)
    return facts, None


# --------------------------------------------------------------------------------------------------------------
# A distributed job


def integer_variable(environ, name):
    """The variable as an integer, None when it is unset or not one."""
    try:
        return int(environ.get(name, "").strip())
    except ValueError:
        return None


def is_distributed(environ):
    """A job of several workers (MA_NUM_HOSTS > 1), or several processes under a launcher (WORLD_SIZE > 1)."""
    return (integer_variable(environ, "MA_NUM_HOSTS") or 1) > 1 or (integer_variable(environ, "WORLD_SIZE") or 1) > 1


def launched(environ):
    """Under a launcher (or a child of the plain boot command): the process's rank is in the environment."""
    return "RANK" in environ and "WORLD_SIZE" in environ


def early_local_rank(environ, arguments):
    """This process's local rank from the environment alone (before torch imports): 0 outside a launcher."""
    if not launched(environ):
        return 0
    rank = integer_variable(environ, "LOCAL_RANK")
    if rank is None:
        rank = arguments.local_rank  # torch.distributed.launch without --use_env
    return rank or 0


def seconds_text(seconds):
    return f"{seconds:g}"


def timed(detail, seconds):
    """A check's detail with its time last, as `(0.12 s)`."""
    return f"{detail} ({seconds:.2f} s)"


def error_text(error, limit=400):
    """An exception in one line: its type and the first line of its message (torch's carry C++ frames)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if len(message) > limit:
        message = message[:limit] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def url_host(host):
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Plan:
    """Where this process stands in the job: its launcher, rank, the world, the master."""

    def __init__(self):
        self.launcher = "boot"  # boot, torchrun or launch
        self.child = False  # started by the plain boot command of its node
        self.rank = 0
        self.local_rank = 0
        self.world_size = 1
        self.nodes = 1
        self.procs_per_node = 1
        self.master = None
        self.master_source = None  # where the master's name came from
        self.port = None
        self.problems = []  # what is missing or inconsistent: a failed distributed:environment

    @property
    def spawns(self):
        """Local rank 0 of the plain boot command starts the node's other processes."""
        return self.launcher == "boot" and not self.child and self.procs_per_node > 1

    @property
    def init_method(self):
        if self.launcher == "boot":
            return f"tcp://{url_host(self.master)}:{self.port}"
        return "env://"

    @property
    def shape(self):
        """The world as "N nodes × P" (and its size)."""
        if self.nodes * self.procs_per_node == self.world_size:
            nodes = "1 node" if self.nodes == 1 else f"{self.nodes} nodes"
            return f"{nodes} × {self.procs_per_node} = {self.world_size} ranks"
        return f"{self.world_size} ranks"

    @property
    def where(self):
        return f"{self.master}:{self.port}"


def distributed_plan(environ, arguments, cuda):
    """The plan of this process from the variables ModelArts (or a launcher) set; cuda: the CUDA device count
    when the work runs on CUDA, else None."""
    plan = Plan()
    default_procs = arguments.procs_per_node or (cuda if cuda else 1)
    if launched(environ):
        plan.child = bool(environ.get(CHILD_MARKER))
        if plan.child:
            plan.launcher = "boot"
        elif environ.get("TORCHELASTIC_RUN_ID") or environ.get("GROUP_RANK"):
            plan.launcher = "torchrun"
        else:
            plan.launcher = "launch"
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name, "").strip():
                plan.problems.append(f"{name} is not set")
        plan.rank = integer_variable(environ, "RANK")
        plan.world_size = integer_variable(environ, "WORLD_SIZE")
        plan.local_rank = early_local_rank(environ, arguments)
        plan.procs_per_node = integer_variable(environ, "LOCAL_WORLD_SIZE") or default_procs
        plan.master = environ.get("MASTER_ADDR", "").strip() or None
        plan.master_source = "MASTER_ADDR, from local rank 0" if plan.child else "MASTER_ADDR"
        plan.port = integer_variable(environ, "MASTER_PORT")
        if plan.rank is None or plan.world_size is None or plan.port is None:
            plan.problems.append("RANK={!r}, WORLD_SIZE={!r} and MASTER_PORT={!r} must be integers".format(
                environ.get("RANK"), environ.get("WORLD_SIZE"), environ.get("MASTER_PORT")))
            plan.rank, plan.world_size = plan.rank or 0, plan.world_size or 1
        nodes = integer_variable(environ, "GROUP_WORLD_SIZE")
        if not nodes and plan.procs_per_node and plan.world_size % plan.procs_per_node == 0:
            nodes = plan.world_size // plan.procs_per_node
        plan.nodes = nodes or integer_variable(environ, "MA_NUM_HOSTS") or 1
    else:
        plan.launcher = "boot"
        plan.nodes = integer_variable(environ, "MA_NUM_HOSTS") or 1
        plan.procs_per_node = default_procs
        plan.world_size = plan.nodes * plan.procs_per_node
        index = integer_variable(environ, "VC_TASK_INDEX")
        if index is None or not 0 <= index < plan.nodes:
            plan.problems.append("VC_TASK_INDEX={!r} is not a worker index of MA_NUM_HOSTS={} (0 to {})".format(
                environ.get("VC_TASK_INDEX"), plan.nodes, plan.nodes - 1))
            index = 0
        plan.rank = index * plan.procs_per_node
        hosts = [host.strip() for host in environ.get("VC_WORKER_HOSTS", "").split(",") if host.strip()]
        if not hosts:
            plan.problems.append("VC_WORKER_HOSTS is not set: the master is its first host")
        elif len(hosts) != plan.nodes:
            plan.problems.append(f"VC_WORKER_HOSTS names {len(hosts)} hosts, MA_NUM_HOSTS is {plan.nodes}")
        plan.master = hosts[0] if hosts else None
        plan.master_source = "first of VC_WORKER_HOSTS"
        plan.port = arguments.master_port
    if cuda and plan.local_rank >= cuda:
        plan.problems.append(f"local rank {plan.local_rank} has no CUDA device of its own ({cuda} visible): "
                             "NCCL needs one per process")
    return plan


class Watchdog:
    """Ends the process when a distributed step outlives its deadline: torch's own timeouts do not always hold (a
    client's connect retries past it; NCCL may wait on a dead peer for ever).

    The main thread arms it around each step that may block; once the deadline and WATCHDOG_GRACE_S have passed,
    the watchdog fails the step's check, prints the result (once: the main thread prints it only after claim(),
    which it cannot get once the watchdog fired) and ends the process with os._exit(1)."""

    def __init__(self, on_fire):
        self.lock = threading.Lock()
        self.on_fire = on_fire
        self.armed = None  # (deadline, check name or None for the clean-up, its failure detail, when armed)
        self.fired = False  # the watchdog is ending the process, or the main thread is printing the result
        thread = threading.Thread(target=self.watch, name="verify-watchdog")
        thread.daemon = True
        thread.start()

    def arm(self, deadline, name, detail):
        with self.lock:
            fired = self.fired
            self.armed = (deadline, name, detail, time.time())
        if fired:
            self.wait_for_the_end()

    def disarm(self):
        with self.lock:
            fired = self.fired
            self.armed = None
        if fired:
            self.wait_for_the_end()

    def claim(self):
        """For the main thread's result line: the watchdog will not fire after this."""
        with self.lock:
            fired = self.fired
            self.fired = True
            self.armed = None
        if fired:
            self.wait_for_the_end()

    @staticmethod
    def wait_for_the_end():
        while True:  # the watchdog thread is printing the result and ending the process
            time.sleep(60)

    def watch(self):
        while True:
            time.sleep(0.1)
            with self.lock:
                if self.fired or self.armed is None or time.time() < self.armed[0] + WATCHDOG_GRACE_S:
                    continue
                self.fired = True
                armed = self.armed
            try:
                self.on_fire(armed)
            finally:
                os._exit(1)


class Children:
    """The other processes of this node, started by local rank 0 of the plain boot command."""

    def __init__(self):
        self.processes = []  # (local rank, rank, Popen, relay thread, failed check names)
        self.started = None

    def start(self, plan, arguments_given):
        self.started = time.time()
        for local_rank in range(1, plan.procs_per_node):
            rank = plan.rank + local_rank
            env = dict(os.environ)
            env.update({"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(plan.world_size),
                        "LOCAL_WORLD_SIZE": str(plan.procs_per_node), "MASTER_ADDR": plan.master,
                        "MASTER_PORT": str(plan.port), CHILD_MARKER: str(os.getpid())})
            command = [sys.executable, str(Path(sys.argv[0]).resolve()), *arguments_given]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, universal_newlines=True,
                                       errors="replace")
            failed = []
            relay = threading.Thread(target=self.relay, args=(process, failed))
            relay.daemon = True
            relay.start()
            self.processes.append((local_rank, rank, process, relay, failed))

    @staticmethod
    def relay(process, failed):
        """Print the child's lines (they carry its `[rank R] ` label) and note the checks it failed."""
        for line in process.stdout:
            line = line.rstrip("\n")
            say(line)
            body = line.split("] ", 1)[1] if line.startswith("[rank ") and "] " in line else line
            if body.startswith("[FAIL] "):
                failed.append(body[len("[FAIL] "):].split(": ", 1)[0])  # `[FAIL] name: detail`

    def kill(self):
        for _, _, process, _, _ in self.processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):  # it ended meanwhile
                    process.kill()

    def wait(self, deadline):
        """(ok, detail) once every child ended, killing those still running at the deadline."""
        problems = []
        for local_rank, rank, process, relay, failed in self.processes:
            stopped = False
            try:
                process.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                stopped = True
            relay.join(5)
            if stopped:
                problems.append(f"local rank {local_rank} (rank {rank}, pid {process.pid}) was still running "
                                f"after {time.time() - self.started:.0f} s and was stopped")
            elif process.returncode != 0:
                problem = f"local rank {local_rank} (rank {rank}, pid {process.pid}) exited {process.returncode}"
                if failed:
                    problem += " after failing " + ", ".join(failed)
                problems.append(problem)
        took = time.time() - self.started
        if problems:
            return False, timed("; ".join(problems), took)
        first, last = self.processes[0], self.processes[-1]
        if len(self.processes) == 1:
            which = f"local rank {first[0]} (rank {first[1]})"
        else:
            which = f"local ranks {first[0]}-{last[0]} (ranks {first[1]}-{last[1]})"
        return True, timed(f"{which} passed every check", took)


def resolve(host, port, deadline):
    """(ok, detail): the master's name resolved, retried until the deadline."""
    started = time.time()
    while True:
        try:
            addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:  # socket.gaierror, or a name IDNA cannot encode
            now = time.time()
            if now >= deadline:
                return False, f"{host} does not resolve (tried for {now - started:.0f} s): {error}"
            time.sleep(min(RESOLVE_PAUSE_S, deadline - now))  # the last try at the deadline
            continue
        shown = []
        for address in addresses:
            if address[4][0] not in shown:
                shown.append(address[4][0])
        return True, "resolves to " + ", ".join(shown)


def peers_gone(environ, plan):
    """After a failed rendezvous or collective: the other workers whose names no longer resolve, which is how a
    worker that is gone shows (its container or pod removed from the job's network), as text for the detail.

    Each name is looked up in a thread of its own, PEERS_LOOKUP_S in all: a resolver that does not answer is said
    as such rather than waited for."""
    hosts = [host.strip() for host in environ.get("VC_WORKER_HOSTS", "").split(",") if host.strip()]
    index = integer_variable(environ, "VC_TASK_INDEX")
    others = [(number, host) for number, host in enumerate(hosts) if number != index]
    if not others:
        return ""
    answers = {}

    def look_up(host):
        try:
            socket.getaddrinfo(host, plan.port or DEFAULT_MASTER_PORT, 0, socket.SOCK_STREAM)
            answers[host] = True
        except (OSError, UnicodeError):
            answers[host] = False

    threads = [threading.Thread(target=look_up, args=(host,)) for _, host in others]
    for thread in threads:
        thread.daemon = True
        thread.start()
    deadline = time.time() + PEERS_LOOKUP_S
    for thread in threads:
        thread.join(max(deadline - time.time(), 0))
    said = []
    for number, host in others:
        if answers.get(host) is False:
            said.append(f"{host} (worker {number}) no longer resolves: gone from the job")
        elif host not in answers:  # what a name the job's DNS no longer knows gets from a resolver with no route out
            said.append(f"{host} (worker {number}) no longer resolves (no answer within {PEERS_LOOKUP_S:g} s): "
                        "gone from the job, or the resolver is slow")
    return "; ".join(said) or "every other worker's name still resolves"


def with_peers(detail, plan):
    """A failure's detail and what became of the other workers (a callable for the watchdog, which says it when
    it fires)."""
    return lambda: f"{detail}; {peers_gone(os.environ, plan)}"


def reach(host, port, deadline):
    """None once something accepts a TCP connection at host:port, else the last error at the deadline.

    torch's own client retries its connect past the timeout it was given (twice as long with torch 2.x): a rank
    that is not the master first waits here, within the bound, and names what it got (refused, unreachable)."""
    while True:
        now = time.time()
        try:
            connection = socket.create_connection((host, port), timeout=max(min(deadline - now, 2.0), 0.1))
        except OSError as error:
            now = time.time()
            if now >= deadline:
                return error_text(error)
            time.sleep(min(RESOLVE_PAUSE_S / 2, deadline - now))
            continue
        connection.close()
        return None


def distributed_checks(torch, device, plan, arguments, checks, watchdog, children):
    """The distributed: checks; False when one failed (the rest are then not run)."""
    bound = arguments.rendezvous_timeout
    phase_started = time.time()
    backend = "nccl" if device.type == "cuda" else "gloo"
    started = time.time()
    try:
        import torch.distributed as dist
        if not dist.is_available():
            ok, detail = False, "torch.distributed is not available in this torch build"
        else:
            probe = getattr(dist, f"is_{backend}_available", None)
            if probe is not None and not probe():
                ok, detail = False, f"this torch has no {backend} backend"
            else:
                ok, detail = True, (f"torch.distributed with the {backend} backend; launcher {plan.launcher}, "
                                    f"rank {plan.rank} of {plan.shape}, local rank {plan.local_rank}")
    except Exception as error:  # a broken build: the fact to report
        traceback.print_exc()
        ok, detail = False, error_text(error)
    if not checks.add("distributed:available", ok, timed(detail, time.time() - started)):
        return False
    if plan.problems:
        checks.add("distributed:environment", False, timed("; ".join(plan.problems), time.time() - started))
        return False
    if plan.spawns:
        try:
            children.start(plan, arguments.given)
        except Exception as error:  # could not start a process: the others would wait for it in vain
            traceback.print_exc()
            children.kill()
            detail = f"could not start local ranks 1-{plan.procs_per_node - 1}: {error_text(error)}"
            checks.add("distributed:local_ranks", False, timed(detail, time.time() - started))
            return False

    # the master's name, then the rendezvous: together within the bound
    deadline = phase_started + bound
    started = time.time()
    watchdog.arm(deadline, "distributed:master",
                 f"{plan.master} does not resolve (tried for {seconds_text(bound)} s): the resolver did not answer")
    ok, detail = resolve(plan.master, plan.port, deadline)
    watchdog.disarm()
    where = f"{plan.master} ({plan.master_source})"
    if not checks.add("distributed:master", ok, timed(detail if not ok else where + " " + detail,
                                                      time.time() - started)):
        return False

    if backend == "nccl":
        torch.cuda.set_device(plan.local_rank)
    remaining = max(deadline - time.time(), 1.0)
    # torch's timeout is also the collectives' (the watchdog holds the rendezvous to its deadline); NCCL's own
    # watchdog aborts the process at it, without a result line: this script's comes first
    torch_timeout = bound if backend == "gloo" else bound + 2 * WATCHDOG_GRACE_S
    failure = f"could not rendezvous with {plan.where} within {seconds_text(bound)} s"
    started = time.time()
    watchdog.arm(time.time() + remaining, "distributed:rendezvous",
                 with_peers(failure + ": no answer, the wait was stopped by this script", plan))
    if plan.rank != 0:  # the master listens (or, under torchrun, its agent does)
        error = reach(plan.master, plan.port, started + remaining)
        if error is not None:
            watchdog.disarm()
            checks.add("distributed:rendezvous", False, timed(
                with_peers(f"{failure}: nothing accepted a connection there ({error})", plan)(),
                time.time() - started))
            return False
    try:
        dist.init_process_group(backend, init_method=plan.init_method, rank=plan.rank, world_size=plan.world_size,
                                timeout=datetime.timedelta(seconds=torch_timeout))
    except Exception as error:
        watchdog.disarm()
        traceback.print_exc()
        checks.add("distributed:rendezvous", False, timed(with_peers(f"{failure}: {error_text(error)}", plan)(),
                                                          time.time() - started))
        return False
    watchdog.disarm()
    via = plan.init_method.split(":", 1)[0] + "://"
    detail = f"{backend} with master {plan.where} via {via} ({plan.launcher}), {plan.shape}, rank {plan.rank}"
    checks.add("distributed:rendezvous", True, timed(detail, time.time() - started))

    on = torch.device("cuda", plan.local_rank) if backend == "nccl" else torch.device("cpu")
    all_ok = True
    for name, step in (("all_reduce", all_reduce_step), ("broadcast", broadcast_step), ("barrier", barrier_step)):
        started = time.time()
        watchdog.arm(time.time() + bound, "distributed:" + name, with_peers(
            f"{name} did not end within {seconds_text(bound)} s: a peer stopped answering, the wait was stopped by "
            "this script", plan))
        broken = False
        try:
            ok, detail = step(torch, dist, on, plan)
            if on.type == "cuda":
                torch.cuda.synchronize(on)
        except Exception as error:  # the group is broken: the next collective would wait in vain
            watchdog.disarm()
            traceback.print_exc()
            ok, detail, broken = False, with_peers(f"{name} failed: {error_text(error)}", plan)(), True
        watchdog.disarm()
        # a wrong value still goes on: the other ranks wait for this one in the next collective
        all_ok = checks.add("distributed:" + name, ok, timed(detail, time.time() - started)) and all_ok
        if broken:
            break
    watchdog.arm(time.time() + bound, None, None)  # the clean-up may hang on a broken group: end without it
    try:
        dist.destroy_process_group()
    except Exception:  # the verdict stands; the story goes to the log
        traceback.print_exc()
    watchdog.disarm()
    return all_ok


def all_reduce_step(torch, dist, on, plan):
    value = torch.tensor([float(plan.rank + 1)], dtype=torch.float64, device=on)
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    got = float(value.item())
    expected = plan.world_size * (plan.world_size + 1) // 2
    detail = f"sum of rank + 1 over {plan.world_size} ranks = {got:g}, expected {expected}"
    return got == expected, detail


def broadcast_step(torch, dist, on, plan):
    expected = torch.arange(BROADCAST_VALUES, dtype=torch.float64) * 1.5 + 1
    values = expected.to(on) if plan.rank == 0 else torch.full((BROADCAST_VALUES,), -1.0, dtype=torch.float64,
                                                                device=on)
    dist.broadcast(values, src=0)
    got = values.cpu()
    if bool(torch.equal(got, expected)):
        return True, f"{BROADCAST_VALUES} values from rank 0 received exactly on rank {plan.rank}"
    return False, f"rank {plan.rank} received {got.tolist()} from rank 0, expected {expected.tolist()}"


def barrier_step(torch, dist, on, plan):
    dist.barrier()
    return True, f"all {plan.world_size} ranks reached the barrier"


def finish(result, checks, started):
    result["checks"] = checks.items
    result["ok"] = checks.all_ok
    result["seconds"] = round(time.time() - started, 3)
    return result


def verify(arguments, context):
    """Run every check; returns the result dictionary (the JSON line). context["watchdog"]: the distributed
    watchdog, once there is one; context["full"]: whether this process prints the result line."""
    require_gpu, require_npu = arguments.require_gpu, arguments.require_npu
    started = time.time()
    distributed = is_distributed(os.environ)
    # local rank 0 runs every check and prints the result; a node's other processes only the distributed ones
    full = not distributed or (early_local_rank(os.environ, arguments) == 0 and not os.environ.get(CHILD_MARKER))
    context["full"] = full
    checks = Checks("" if full else "[rank {}] ".format(os.environ.get("RANK", "?")))
    result = {
        "schema": SCHEMA,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cwd": str(Path.cwd()),
        "require_gpu": bool(require_gpu),
        "environment": seen_environment(),
        "torch": None,
        "torch_cuda": None,
        "cudnn": None,
        "cuda_available": False,
        "device_count": 0,
        "devices": [],
        "device": None,
        "require_npu": bool(require_npu),
        "torch_npu": None,
        "npu_available": False,
        "npu_device_count": 0,
        "npu_devices": [],
        "npu_unavailable": None,
        "ascend_home": ascend_home(),
    }
    result.update(identity())
    result.update(interpreter())
    npu_installed = find_torch_npu(require_npu)  # before torch imports: it may turn off the backend auto-load
    npu_wanted = npu_installed is not False or require_npu
    try:
        import torch
    except Exception as error:  # ImportError, or a broken shared library under it (OSError)
        npu = npu_failure_of_torch(error)  # torch_npu auto-loaded (TORCH_DEVICE_BACKEND_AUTOLOAD=1) and failed
        if npu is None or npu[0] not in ("cann", "driver"):
            traceback.print_exc()
        if npu is None:
            checks.add("import-torch", False, f"{type(error).__name__}: {error}")
        else:
            cause, detail = npu
            result["torch_npu"] = distribution_version("torch_npu")
            result["npu_unavailable"] = f"{cause}: {detail}"
            autoload = os.environ.get(AUTOLOAD_VARIABLE)
            checks.add("import-torch", False, f"{type(error).__name__}: {error} (torch loaded torch_npu itself: "
                       f"{AUTOLOAD_VARIABLE}={autoload!r} in the environment; the cause is the {NPU_CHECKS[cause]} "
                       "check)")
            checks.add(NPU_CHECKS[cause], False, detail)  # torch itself does not import: a failure in any case
    else:
        result.update(torch_facts(torch))
        if full:
            checks.add("import-torch", True, f"torch {torch.__version__} from {Path(torch.__file__).parent}")
        npu_usable = False
        if npu_wanted:
            facts, failure = probe_npu(torch)
            result.update(facts)
            if failure is None:
                npu_usable = True
                if full:
                    checks.add("npu-available", True, "{} NPU(s): {} (torch_npu {})".format(
                        result["npu_device_count"], ", ".join(result["npu_devices"]), result["torch_npu"]))
            elif failure[0] != "missing" or require_npu:
                cause, detail = failure
                result["npu_unavailable"] = f"{cause}: {detail}"
                if npu_fails(cause, require_npu):
                    checks.add(NPU_CHECKS[cause], False, detail)
                elif full:  # the fallback, said once: not a check
                    installed = " ".join(["torch_npu"] + ([result["torch_npu"]] if result["torch_npu"] else []))
                    say(f"[info] npu: {installed} is installed but no NPU is usable ({cause}: {detail}); the checks "
                        "run without it (--require-npu makes this a failure)")
        if require_gpu and (full or not result["cuda_available"]):
            if result["cuda_available"]:
                detail = f"{result['device_count']} CUDA device(s): {', '.join(result['devices'])}"
            else:
                detail = (f"CUDA is not available (torch built with CUDA {result['torch_cuda']}, "
                          f"{result['device_count']} device(s) visible)")
                if "cuda_error" in result:
                    detail += "; " + result["cuda_error"]
            checks.add("cuda-available", result["cuda_available"], detail)
        if npu_usable:
            device = torch.device("npu", 0)
        elif require_npu:
            device = None
        elif result["cuda_available"]:
            device = torch.device("cuda")
            disable_tf32(torch)
        elif require_gpu:
            device = None
        else:
            device = torch.device("cpu")
        if device is not None:
            result["device"] = str(torch.device(device.type, 0)) if device.type != "cpu" else "cpu"
            if full:
                checks.run("tensor", lambda: original_output(torch, device))
                checks.run("matmul", lambda: matmul_check(torch, device))
                checks.run("autograd-sgd", lambda: autograd_check(torch, device))
            if distributed:
                run_distributed(torch, device, arguments, context, result, checks, started)
    return finish(result, checks, started)


def run_distributed(torch, device, arguments, context, result, checks, started):
    """The distributed checks under the watchdog, then the node's other processes waited for."""
    full = context["full"]
    children = Children()

    def on_fire(armed):
        _, name, detail, since = armed
        if name is not None:
            checks.add(name, False, timed(detail() if callable(detail) else detail, time.time() - since))
        children.kill()
        finish(result, checks, started)
        sys.stderr.flush()
        if full:
            say(RESULT_PREFIX + json.dumps(result, sort_keys=True))
        os._exit(0 if name is None and result["ok"] else 1)

    context["watchdog"] = Watchdog(on_fire)
    plan = distributed_plan(os.environ, arguments, result["device_count"] if device.type == "cuda" else None)
    ok = distributed_checks(torch, device, plan, arguments, checks, context["watchdog"], children)
    if children.processes:
        # after a failure here the others cannot succeed: a moment to say why, then they are stopped
        wait = arguments.rendezvous_timeout if ok else WATCHDOG_GRACE_S
        checks.add("distributed:local_ranks", *children.wait(time.time() + wait))


def number_type(kind, what, fits, bounds):
    """An argparse type: a `kind` number for which fits(value) holds, else a usage error naming the option and
    saying what it takes (`what`: what the text is not; `bounds`: what the number must be)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not fits(value):  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} must be {bounds}")
        return value
    return parse


positive_seconds = number_type(float, "a number of seconds", lambda value: 0 < value <= 24 * 3600,
                               "more than 0 seconds and at most a day")
procs_count = number_type(int, "a whole number", lambda value: value >= 1, "1 or more")
port_number = number_type(int, "a port number", lambda value: 1 <= value <= 65535, "a port from 1 to 65535")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify PyTorch inside a ModelArts training image.")
    required = parser.add_mutually_exclusive_group()
    required.add_argument("--require-gpu", action="store_true",
                          help="fail when CUDA is unavailable instead of falling back to the CPU")
    required.add_argument("--require-npu", action="store_true",
                          help="fail when no Ascend NPU is usable (torch_npu on CANN) instead of falling back to the "
                               "CPU")
    parser.add_argument("--master-port", type=port_number, default=DEFAULT_MASTER_PORT, metavar="PORT",
                        help="the master's rendezvous port of a distributed job started with the plain boot command "
                             "(default: %(default)s; under a launcher MASTER_PORT is used)")
    parser.add_argument("--procs-per-node", type=procs_count, default=None, metavar="P",
                        help="processes per node of a distributed job (default: 1 on the CPU, the number of CUDA "
                             "devices with CUDA)")
    parser.add_argument("--rendezvous-timeout", type=positive_seconds, default=RENDEZVOUS_TIMEOUT_S,
                        metavar="SECONDS",
                        help="how long a worker of a distributed job waits for the master and the others, and each "
                             "collective operation, before it fails (default: %(default)s)")
    # torch.distributed.launch without --use_env passes the local rank as an argument
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    given = list(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(given)
    arguments.given = [item for item in given if not item.startswith(("--local_rank", "--local-rank"))]
    context = {"watchdog": None, "full": True}
    try:
        result = verify(arguments, context)
    except Exception as error:  # a bug in this script: still end with a result line the tools can read
        traceback.print_exc()
        result = {"schema": SCHEMA, "python": platform.python_version(), "ok": False,
                  "checks": [{"name": "script", "ok": False, "detail": f"{type(error).__name__}: {error}"}]}
        if not context["full"]:
            say("[FAIL] script: " + result["checks"][0]["detail"])
    if context["watchdog"] is not None:
        context["watchdog"].claim()  # the result line is printed once: here, or by the watchdog
    sys.stderr.flush()
    if context["full"]:
        say(RESULT_PREFIX + json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
