"""PyTorch verification for a ModelArts training image (stdlib + torch only; Python 3.7 syntax and up).

ModelArts boot command (no shell, no `conda activate`):

    /home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py [--require-gpu]

What it prints:
1. what the original recipe printed: a random 5x3 tensor, then one on the available device (a GPU run shows
   `device='cuda:0'`);
2. one line per check, `[ ok ] name: detail` or `[FAIL] name: detail`;
3. last, one line `MODELARTS_VERIFY_RESULT {json}` with the facts and every check, for the tools to read. The facts
   include how the interpreter started (sys.prefix, whether the standard modules backed by shared libraries
   import, which activation variables were set), which the conformance check `boot-python` judges.

Checks: torch imports; tensors print; a matrix product on the device; a small autograd backward pass and SGD
steps on the device; on a GPU both are compared with the same computation on the CPU. `--require-gpu` adds
`cuda-available`, which fails when CUDA is unavailable instead of falling back to the CPU.

In a distributed job (MA_NUM_HOSTS > 1, or RANK and WORLD_SIZE from a launcher), `distributed:` checks follow:
the backend (gloo on the CPU, NCCL on a GPU), the master (the first host of VC_WORKER_HOSTS) resolving, the
rendezvous on --master-port (6060), an all_reduce of a known sum, a broadcast and a barrier, each timed. A worker
that cannot reach the others fails after --rendezvous-timeout seconds (60), naming the host and port. Under the
plain boot command the script starts the node's other --procs-per-node processes itself; under torchrun (or
torch.distributed.launch --use_env) every process runs it and local rank 0 prints the result line.

A distributed job (MA_NUM_HOSTS > 1, or WORLD_SIZE > 1 under a launcher) adds the `distributed:` checks after
those, and the boot command is one of:

    # the plain boot command on every worker: the script is local rank 0 of its node and starts the node's
    # other processes itself (copies of itself, with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    /home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py \
        [--procs-per-node P] [--master-port 6060] [--rendezvous-timeout 60]

    # under a launcher, through a shell: every process runs the script, rank and world from the environment
    /bin/sh -c 'python -m torch.distributed.run --nnodes=$MA_NUM_HOSTS --node_rank=$VC_TASK_INDEX \
        --nproc_per_node=P --master_addr="${VC_WORKER_HOSTS%%,*}" --master_port=6060 \
        ${MA_JOB_DIR}/code/pytorch-verification.py'
    # torch < 1.9: python -m torch.distributed.launch --use_env (same arguments)

ModelArts gives every worker MA_NUM_HOSTS (= VC_WORKER_NUM), VC_TASK_INDEX (0-based), VC_WORKER_HOSTS (the workers'
names in order, `<job>-worker-0.<job>,...`), MA_CURRENT_IP, MA_CURRENT_INSTANCE_NAME, MA_NUM_GPUS; the master is
the first host of VC_WORKER_HOSTS, as Huawei's docs derive MASTER_ADDR. With the plain boot command (launcher
"boot": MA_NUM_HOSTS > 1 and no RANK/WORLD_SIZE in the environment) world size = MA_NUM_HOSTS * P and rank =
VC_TASK_INDEX * P + local rank; the rendezvous is tcp://<master>:<port>. Under a launcher (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT set; "torchrun" when TORCHELASTIC_RUN_ID or GROUP_RANK is set, else "launch")
the rendezvous is env:// and --master-port is not used. Only local rank 0 runs the device checks and prints the
result line; the other processes of a node print their `distributed:` check lines after `[rank R] ` and exit 0/1
(with the plain boot command local rank 0 relays their lines and fails `distributed:local_ranks` naming any that
failed).

Options of a distributed job:
    --master-port PORT           the master's rendezvous port with the plain boot command (default 6060)
    --procs-per-node P           processes per node (default 1 on the CPU, torch.cuda.device_count() with CUDA)
    --rendezvous-timeout SECONDS how long a worker waits for the master and the others, and each collective
                                 (default 60, not torch's 30 minutes)

The checks, each detail ending with its time as `(0.12 s)`: `distributed:available` (torch.distributed and the
backend: gloo on the CPU, nccl on CUDA), `distributed:master` (the master's name resolves, retried until the
rendezvous deadline), `distributed:rendezvous` (init_process_group), `distributed:all_reduce` (every rank adds
rank + 1: the sum is W(W+1)/2), `distributed:broadcast` (rank 0's known values arrive exactly), `distributed:barrier`;
`distributed:environment` only when the variables above are missing or inconsistent. The bound: resolving the
master and the rendezvous together end within --rendezvous-timeout seconds, each collective within as many again;
where torch's own timeout does not hold (a client's connect retries past it, NCCL waits on a dead peer), a watchdog
thread ends the process a few seconds after the deadline with the step's check failed and the result line
printed, once. Tensors are on the CPU for gloo, on cuda:<local rank> for NCCL.

Exit status: 0 when every check passed, 1 when one failed, 2 for a usage error.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
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
CHILD_MARKER = "MODELARTS_VERIFY_PARENT"  # the parent's pid, in the processes the plain boot command starts
BROADCAST_VALUES = 16
OUTPUT_LOCK = threading.Lock()  # one line at a time: the watchdog and the children's relays print too


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


DEFAULT_MASTER_PORT = 6060  # ModelArts documents none; the community copies of its PyTorch examples use 6060
RENDEZVOUS_TIMEOUT_S = 60  # a worker that cannot reach the others fails after this, not torch's 30 minutes
CHILD_MARKER = "MODELARTS_VERIFY_CHILD"  # set on the processes the plain boot command starts beside itself


def job_shape(procs_per_node):
    """(nodes, rank, local_rank, world_size, master, launcher) of a distributed job, or None on one node."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by a launcher (or by this script)
        if os.environ.get(CHILD_MARKER):
            launcher = "boot"
        else:
            launcher = "torchrun" if ("TORCHELASTIC_RUN_ID" in os.environ or "GROUP_RANK" in os.environ) \
                else "launch"
        world = int(os.environ["WORLD_SIZE"])
        nodes = int(os.environ.get("MA_NUM_HOSTS") or 1)
        return (nodes, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK") or 0), world,
                os.environ.get("MASTER_ADDR", ""), launcher) if world > 1 else None
    nodes = int(os.environ.get("MA_NUM_HOSTS") or 1)
    if nodes <= 1:
        return None
    hosts = [host for host in os.environ.get("VC_WORKER_HOSTS", "").split(",") if host]
    index = int(os.environ.get("VC_TASK_INDEX") or 0)
    return (nodes, index * procs_per_node, 0, nodes * procs_per_node, hosts[0] if hosts else "", "boot")


def timed(function):
    started = time.time()
    ok, detail = function()
    return ok, f"{detail} ({time.time() - started:.2f} s)"


def resolve_master(host, deadline):

    error = None
    started = time.time()
    while True:
        try:
            socket.getaddrinfo(host, None)
            return True, f"{host} resolves"
        except OSError as failure:
            error = failure
        if time.time() >= deadline:
            return False, f"{host} does not resolve (tried for {time.time() - started:.0f} s): {error}"
        time.sleep(0.5)


def distributed_checks(torch, checks, device, shape, port, bound):
    """The distributed group: backend, master, rendezvous, all_reduce, broadcast, barrier, each bounded."""
    import threading

    nodes, rank, local_rank, world, master, launcher = shape
    deadline = time.time() + bound
    dist = getattr(torch, "distributed", None)
    gpu = device.type == "cuda"
    backend = "nccl" if gpu else "gloo"
    if dist is None or not dist.is_available():
        checks.add("distributed:available", False, "torch.distributed is not available in this torch build")
        return
    has_backend = getattr(dist, "is_nccl_available" if gpu else "is_gloo_available", lambda: True)()
    if not has_backend:
        checks.add("distributed:available", False, f"this torch has no {backend} backend")
        return
    procs = world // max(nodes, 1)
    checks.add("distributed:available", True,
               f"torch.distributed with {backend}, {nodes} nodes × {procs}, launcher {launcher}")
    if not checks.run("distributed:master", lambda: resolve_master(master, deadline)):
        return
    port = int(os.environ.get("MASTER_PORT") or port)
    # Past the bound, whatever blocks (a peer that died, a master that never listens) ends the run here.
    done = threading.Event()

    def watchdog():
        if not done.wait(max(deadline - time.time(), 0) + bound):
            checks.add("distributed:rendezvous", False,
                       f"no end with {master}:{port} within {bound} s (a peer died or never came)")
            finish(checks)

    threading.Thread(target=watchdog, daemon=True).start()
    method = "env://" if launcher != "boot" or os.environ.get(CHILD_MARKER) else f"tcp://{master}:{port}"

    def rendezvous():
        try:
            dist.init_process_group(backend, init_method=method, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=max(deadline - time.time(), 1)))
        except Exception as error:
            return False, f"could not rendezvous with {master}:{port} within {bound} s: {type(error).__name__}: {error}"
        return True, f"{backend}, world size {world} ({nodes} nodes × {procs}), master {master}:{port}, rank {rank}"

    if not checks.run("distributed:rendezvous", lambda: timed(rendezvous)):
        done.set()
        return
    where = torch.device("cuda", local_rank) if gpu else torch.device("cpu")

    def all_reduce():
        value = torch.tensor([float(rank + 1)], device=where)
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        got = float(value.item())
        return got == expected, f"sum of rank + 1 over {world} ranks = {got:g} (expected {expected:g})"

    def broadcast():
        value = torch.arange(4, dtype=torch.float32, device=where) * 7 if rank == 0 else \
            torch.zeros(4, device=where)
        dist.broadcast(value, src=0)
        got = value.cpu().tolist()
        return got == [0.0, 7.0, 14.0, 21.0], f"from rank 0: {got}"

    def barrier():
        dist.barrier()
        return True, "every rank reached it"

    for name, function in (("all_reduce", all_reduce), ("broadcast", broadcast), ("barrier", barrier)):
        if not checks.run("distributed:" + name, lambda function=function: timed(function)):
            break
    done.set()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def start_children(procs_per_node, shape, port):
    """The plain boot command's other processes of this node: the same script, as a launcher would start it."""

    _nodes, rank, _, world, master, _ = shape
    children = []
    for local in range(1, procs_per_node):
        env = dict(os.environ, RANK=str(rank + local), LOCAL_RANK=str(local), WORLD_SIZE=str(world),
                   MASTER_ADDR=master, MASTER_PORT=str(port), **{CHILD_MARKER: "1"})
        children.append(subprocess.Popen([sys.executable, *sys.argv], env=env))
    return children


def verify(require_gpu, arguments=None):
    """Run every check; returns the result dictionary (the JSON line)."""
    started = time.time()
    checks = Checks()
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
    }
    result.update(identity())
    result.update(interpreter())
    try:
        import torch
    except Exception as error:  # ImportError, or a broken shared library under it (OSError)
        traceback.print_exc()
        checks.add("import-torch", False, f"{type(error).__name__}: {error}")
    else:
        result.update(torch_facts(torch))
        checks.add("import-torch", True, f"torch {torch.__version__} from {Path(torch.__file__).parent}")
        if require_gpu:
            if result["cuda_available"]:
                detail = f"{result['device_count']} CUDA device(s): {', '.join(result['devices'])}"
            else:
                detail = (f"CUDA is not available (torch built with CUDA {result['torch_cuda']}, "
                          f"{result['device_count']} device(s) visible)")
                if "cuda_error" in result:
                    detail += "; " + result["cuda_error"]
            checks.add("cuda-available", result["cuda_available"], detail)
        if result["cuda_available"]:
            device = torch.device("cuda")
            disable_tf32(torch)
        elif require_gpu:
            device = None
        else:
            device = torch.device("cpu")
        if device is not None:
            result["device"] = str(torch.device(device.type, 0)) if device.type == "cuda" else "cpu"
            checks.run("tensor", lambda: original_output(torch, device))
            checks.run("matmul", lambda: matmul_check(torch, device))
            checks.run("autograd-sgd", lambda: autograd_check(torch, device))
        if arguments is not None and device is not None:
            procs = arguments.procs_per_node or (result["device_count"] if device.type == "cuda" else 1)
            shape = job_shape(procs)
            if shape is not None:
                children = [] if os.environ.get("RANK") else start_children(procs, shape, arguments.master_port)
                distributed_checks(torch, checks, device, shape, arguments.master_port,
                                   arguments.rendezvous_timeout)
                for local, child in enumerate(children, start=1):
                    code = child.wait()
                    checks.add(f"distributed:process-{local}", code == 0,
                               f"local process {local} of this node exited with {code}")
    result["checks"] = checks.items
    result["ok"] = checks.all_ok
    result["seconds"] = round(time.time() - started, 3)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify PyTorch inside a ModelArts training image.")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail when CUDA is unavailable instead of falling back to the CPU")
    parser.add_argument("--procs-per-node", type=int, default=None,
                        help="processes per worker of a distributed job (default: 1 on the CPU, the GPU count)")
    parser.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT,
                        help="the master's rendezvous port (default: %(default)s)")
    parser.add_argument("--rendezvous-timeout", type=int, default=RENDEZVOUS_TIMEOUT_S,
                        help="seconds a worker waits for the others (default: %(default)s)")
    arguments = parser.parse_args(argv)
    try:
        result = verify(arguments.require_gpu, arguments)
    except Exception as error:  # a bug in this script: still end with a result line the tools can read
        traceback.print_exc()
        result = {"schema": SCHEMA, "python": platform.python_version(), "ok": False,
                  "checks": [{"name": "script", "ok": False, "detail": f"{type(error).__name__}: {error}"}]}
    return finish(None, result)


_FINISHED = []


def finish(checks, result=None):
    """Print the result line once (the watchdog may get here first) and end the process."""
    if _FINISHED:
        return 0
    _FINISHED.append(True)
    if result is None:  # from the watchdog: what ran so far, and a failure
        result = {"schema": SCHEMA, "python": platform.python_version(), "ok": False, "checks": checks.items}
    sys.stderr.flush()
    if not os.environ.get(CHILD_MARKER) and int(os.environ.get("LOCAL_RANK") or 0) == 0:
        print(RESULT_PREFIX + json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    if checks is not None:
        os._exit(1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
