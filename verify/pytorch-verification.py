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

Exit status: 0 when every check passed, 1 when one failed, 2 for a usage error.
"""

import argparse
import json
import os
import platform
import sys
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


class Checks:
    """The checks run so far, printed as they finish."""

    def __init__(self):
        self.items = []

    def add(self, name, ok, detail):
        self.items.append({"name": name, "ok": bool(ok), "detail": str(detail)})
        print("[{}] {}: {}".format(" ok " if ok else "FAIL", name, detail))
        sys.stdout.flush()
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


def verify(require_gpu):
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
    result["checks"] = checks.items
    result["ok"] = checks.all_ok
    result["seconds"] = round(time.time() - started, 3)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify PyTorch inside a ModelArts training image.")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail when CUDA is unavailable instead of falling back to the CPU")
    arguments = parser.parse_args(argv)
    try:
        result = verify(arguments.require_gpu)
    except Exception as error:  # a bug in this script: still end with a result line the tools can read
        traceback.print_exc()
        result = {"schema": SCHEMA, "python": platform.python_version(), "ok": False,
                  "checks": [{"name": "script", "ok": False, "detail": f"{type(error).__name__}: {error}"}]}
    sys.stderr.flush()
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
