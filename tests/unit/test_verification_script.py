"""verify/pytorch-verification.py run for real on the host.

With a real torch: an interpreter that imports torch, from $MODELARTS_IMAGES_TORCH_PYTHON, else this Python or
python3 on PATH when they have torch (the tests never install it). Without one those tests are skipped with the
reason; the failure paths run everywhere with a stand-in `torch` package that cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from modelarts_images.verify.result import RESULT_PREFIX, parse_result

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "verify" / "pytorch-verification.py"
TORCH_PYTHON = "MODELARTS_IMAGES_TORCH_PYTHON"
RUN_TIMEOUT = 300


@cache
def torch_python() -> tuple[str | None, str]:
    """(an interpreter that imports torch, or None; where it was looked for)."""
    override = os.environ.get(TORCH_PYTHON)
    candidates = [override] if override else [sys.executable, shutil.which("python3")]
    tried = []
    for candidate in candidates:
        if not candidate or candidate in tried:
            continue
        tried.append(candidate)
        probe = subprocess.run([candidate, "-c", "import torch"], capture_output=True, text=True, check=False,
                               timeout=RUN_TIMEOUT)
        if probe.returncode == 0:
            return candidate, ""
    return None, ", ".join(tried)


def run_script(python: str, *arguments: str, cwd: Path, extra_env: dict[str, str] | None = None,
               pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MA_", "VC_", "PYTHON"))}
    env.update(extra_env or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([python, str(SCRIPT), *arguments], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=RUN_TIMEOUT)


MODELARTS_ENV = {"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "VC_TASK_INDEX": "0",
                 "MA_SECRET_ACCESS_KEY": "do-not-print-me", "UNRELATED": "x"}


# --------------------------------------------------------------------------------------------------------------
# With a real torch


def test_the_script_verifies_torch_on_the_cpu(python_with_torch: str, tmp_path: Path) -> None:
    completed = run_script(python_with_torch, cwd=tmp_path, extra_env=MODELARTS_ENV)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    # the original recipe's output first: two 5x3 tensors
    assert sum(line.startswith("tensor([[") for line in lines) == 2
    assert lines[-1].startswith(RESULT_PREFIX)  # the result is the last line
    result = parse_result(completed.stdout)
    assert result.ok
    assert [check.name for check in result.checks] == ["import-torch", "tensor", "matmul", "autograd-sgd"]
    assert all(check.ok for check in result.checks)
    version = subprocess.run([python_with_torch, "-c", "import torch, platform; print(torch.__version__); "
                              "print(platform.python_version())"], capture_output=True, text=True, check=True)
    torch_version, python_version = version.stdout.split()
    assert result.torch == torch_version and result.python == python_version
    assert result.uid == os.getuid() and result.gid == os.getgid()
    assert result.cwd == str(tmp_path)
    if not result.cuda_available:
        assert result.device == "cpu" and result.device_count == 0
    environment = dict(result.environment)
    assert environment == {"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "VC_TASK_INDEX": "0",
                           "MA_SECRET_ACCESS_KEY": "***"}
    assert "do-not-print-me" not in completed.stdout
    raw = json.loads(lines[-1][len(RESULT_PREFIX):])
    assert {"torch_cuda", "cudnn", "cuda_available", "device_count", "devices", "uid", "gid"} <= raw.keys()


def test_require_gpu_fails_instead_of_falling_back(python_with_torch: str, tmp_path: Path) -> None:
    completed = run_script(python_with_torch, "--require-gpu", cwd=tmp_path)
    result = parse_result(completed.stdout)
    if result.cuda_available:
        assert completed.returncode == 0 and result.device == "cuda:0"
        return
    assert completed.returncode == 1
    assert not result.ok and result.device is None
    assert [(check.name, check.ok) for check in result.checks] == [("import-torch", True), ("cuda-available", False)]
    assert "CUDA is not available" in result.checks[1].detail
    assert "[FAIL] cuda-available" in completed.stdout


# --------------------------------------------------------------------------------------------------------------
# Everywhere: torch that cannot be imported, usage errors


def test_a_torch_that_cannot_import_still_ends_with_a_result_line(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise OSError('libtorch_cpu.so: cannot open shared object file')\n",
                                      encoding="utf-8")
    completed = run_script(sys.executable, cwd=tmp_path, pythonpath=tmp_path / "site")
    assert completed.returncode == 1
    result = parse_result(completed.stdout)
    assert not result.ok and result.torch is None and result.device is None
    (check,) = result.checks
    assert check.name == "import-torch" and not check.ok
    assert check.detail == "OSError: libtorch_cpu.so: cannot open shared object file"
    assert "Traceback" in completed.stderr  # the full story stays in the log


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    completed = run_script(sys.executable, "--no-such-flag", cwd=tmp_path)
    assert completed.returncode == 2 and "--require-gpu" in completed.stderr
