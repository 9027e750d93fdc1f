"""verify/pytorch-verification.py's Ascend NPU path, run for real on the host: the real torch (CPU) of
python_with_torch, and stand-in `torch_npu` packages on PYTHONPATH that fail as torch_npu does without CANN, without
the driver, without a visible NPU.

Each stand-in comes with its dist-info and the `torch.backends` entry point of the real torch_npu, so a plain
`import torch` would load it (and fail) unless the script turned that off with TORCH_DEVICE_BACKEND_AUTOLOAD=0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.verify.result import RESULT_PREFIX, VerificationResult, parse_result
from tests.unit.test_verification_script import run_script

AUTOLOAD = "TORCH_DEVICE_BACKEND_AUTOLOAD"
RECORD = "NPU_STANDIN_RECORD"  # the file a stand-in writes what it saw of the environment to
VERSION = "2.1.0.post3"
CPU_CHECKS = ["tensor", "matmul", "autograd-sgd"]

# What every stand-in does first: note the auto-load variable as the script's process has it.
RECORDER = f"""import os
with open(os.environ[{RECORD!r}], "w") as record:
    record.write(repr(os.environ.get({AUTOLOAD!r})))
"""
HCCL_MISSING = 'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n'
HAL_MISSING = 'raise ImportError("libascend_hal.so: cannot open shared object file: No such file or directory")\n'
ASCENDCL_MISSING = "ImportError('libascendcl.so: cannot open shared object file: No such file or directory')"
NO_DEVICE = """import sys, types
import torch
npu = types.ModuleType("torch.npu")
npu.is_available = lambda: False
npu.device_count = lambda: 0
torch.npu = npu
sys.modules["torch.npu"] = npu
__version__ = "2.1.0.post3"
"""
ONE_DEVICE = """import sys, types
import torch
torch.utils.rename_privateuse1_backend("npu")
npu = types.ModuleType("torch.npu")
npu.is_available = lambda: True
npu.device_count = lambda: 1
npu.get_device_name = lambda index: "Ascend910B3"
torch.npu = npu
__version__ = "2.1.0.post3"
"""


@pytest.fixture(autouse=True)
def no_ascend_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own Ascend settings, if any, stay out of the script's environment."""
    for name in (AUTOLOAD, "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ASCEND_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def stand_in(site: Path, body: str) -> Path:
    """A torch_npu package whose import runs body, with the dist-info and entry point of the real one."""
    package = site / "torch_npu"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(RECORDER + body + "\ndef _autoload():\n    pass\n", encoding="utf-8")
    info = site / f"torch_npu-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_npu\nVersion: {VERSION}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n", encoding="utf-8")
    return site


def run(python: str, tmp_path: Path, site: Path, *arguments: str,
        extra_env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], VerificationResult,
                                                          dict[str, Any]]:
    env = {RECORD: str(tmp_path / "record"), **(extra_env or {})}
    completed = run_script(python, *arguments, cwd=tmp_path, extra_env=env, pythonpath=site)
    result = parse_result(completed.stdout)
    raw = json.loads(completed.stdout.splitlines()[-1][len(RESULT_PREFIX):])
    return completed, result, raw


def outcomes(result: VerificationResult) -> list[tuple[str, bool]]:
    return [(check.name, check.ok) for check in result.checks]


def recorded(tmp_path: Path) -> str | None:
    """What the stand-in saw of TORCH_DEVICE_BACKEND_AUTOLOAD (repr), None when it was never imported."""
    path = tmp_path / "record"
    return path.read_text(encoding="utf-8") if path.exists() else None


def test_missing_cann_fails_npu_cann_and_the_cpu_checks_still_run(python_with_torch: str, tmp_path: Path) -> None:
    site = stand_in(tmp_path / "site", HCCL_MISSING)
    completed, result, raw = run(python_with_torch, tmp_path, site)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    # torch imported although its entry point would load the stand-in: the script turned the auto-load off
    assert outcomes(result) == [("import-torch", True), ("npu:cann", False)] + [(name, True) for name in CPU_CHECKS]
    detail = result.checks[1].detail
    assert detail.startswith("CANN missing") and "libhccl.so" in detail
    assert "set_env.sh" in detail and "ASCEND_HOME_PATH is not set" in detail
    assert f"[FAIL] npu:cann: {detail}" in completed.stdout
    assert "Traceback" not in completed.stdout + completed.stderr
    assert result.device == "cpu"
    assert raw["torch_npu"] == VERSION and raw["require_npu"] is False and raw["ascend_home"] is None
    assert raw["npu_available"] is False and raw["npu_device_count"] == 0 and raw["npu_devices"] == []
    assert raw["npu_unavailable"].startswith("cann: CANN missing")
    assert recorded(tmp_path) == "'0'"  # the variable as the script's process had it when torch_npu imported


@pytest.mark.parametrize("require", [False, True], ids=["fallback", "require-npu"])
def test_an_unmounted_driver_fails_only_with_require_npu(python_with_torch: str, tmp_path: Path,
                                                        require: bool) -> None:
    site = stand_in(tmp_path / "site", HAL_MISSING)
    completed, result, raw = run(python_with_torch, tmp_path, site, *(["--require-npu"] if require else []))
    assert "Traceback" not in completed.stdout + completed.stderr
    assert raw["npu_unavailable"].startswith("driver: libascend_hal.so not found")
    if not require:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert outcomes(result) == [("import-torch", True)] + [(name, True) for name in CPU_CHECKS]
        assert result.device == "cpu"
        (info,) = [line for line in completed.stdout.splitlines() if line.startswith("[info] npu:")]
        assert "libascend_hal.so" in info and "--require-npu" in info
        return
    assert completed.returncode == 1
    assert outcomes(result) == [("import-torch", True), ("npu:driver", False)]
    assert result.device is None and raw["require_npu"] is True
    detail = result.checks[1].detail
    assert "/usr/local/Ascend/driver" in detail and "/dev/davinci" in detail


@pytest.mark.parametrize("require", [False, True], ids=["fallback", "require-npu"])
def test_no_visible_npu_fails_npu_device_only_with_require_npu(python_with_torch: str, tmp_path: Path,
                                                              require: bool) -> None:
    site = stand_in(tmp_path / "site", NO_DEVICE)
    completed, result, raw = run(python_with_torch, tmp_path, site, *(["--require-npu"] if require else []),
                                 extra_env={"ASCEND_VISIBLE_DEVICES": "3"})
    assert raw["torch_npu"] == VERSION and raw["npu_available"] is False and raw["npu_device_count"] == 0
    assert raw["npu_unavailable"].startswith("device: no visible NPU")
    if not require:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert outcomes(result) == [("import-torch", True)] + [(name, True) for name in CPU_CHECKS]
        return
    assert completed.returncode == 1
    assert outcomes(result) == [("import-torch", True), ("npu:device", False)]
    assert "no visible NPU" in result.checks[1].detail and "ASCEND_VISIBLE_DEVICES='3'" in result.checks[1].detail


def test_without_torch_npu_the_auto_load_is_left_alone_unless_an_npu_is_required(python_with_torch: str,
                                                                                   tmp_path: Path) -> None:
    # no torch_npu; another backend's entry point notes the variable when `import torch` auto-loads it
    site = tmp_path / "site"
    site.mkdir()
    (site / "autoload_probe.py").write_text(
        f"import os\ndef load():\n    open(os.environ[{RECORD!r}], 'w').write(repr(os.environ.get({AUTOLOAD!r})))\n",
        encoding="utf-8")
    info = site / "autoload_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: autoload_probe\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[torch.backends]\nprobe = autoload_probe:load\n", encoding="utf-8")

    completed, result, raw = run(python_with_torch, tmp_path, site)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert recorded(tmp_path) == "None"  # torch auto-loaded its backends: the variable was not set
    assert [name for name, _ in outcomes(result)] == ["import-torch", *CPU_CHECKS]
    assert raw["torch_npu"] is None and raw["npu_unavailable"] is None and raw["require_npu"] is False

    (tmp_path / "record").unlink()
    completed, result, raw = run(python_with_torch, tmp_path, site, "--require-npu")
    assert completed.returncode == 1
    assert recorded(tmp_path) is None  # --require-npu turned the auto-load off
    assert outcomes(result) == [("import-torch", True), ("npu:import", False)]
    assert result.checks[1].detail.startswith("torch_npu is not installed")
    assert raw["npu_unavailable"].startswith("missing: torch_npu is not installed")
    assert "Traceback" not in completed.stdout + completed.stderr


@pytest.mark.parametrize("how", ["wrapped", "auto-loaded"])
def test_a_wrapped_import_error_is_still_missing_cann(python_with_torch: str, tmp_path: Path, how: str) -> None:
    """torch's auto-load wraps the ImportError in a RuntimeError: raised by the stand-in itself, or by torch when the
    environment turned the auto-load on (then torch does not import, and the cause is named too)."""
    if how == "wrapped":
        body = ("raise RuntimeError('Failed to load the backend extension: torch_npu. You can disable extension "
                f"auto-loading with {AUTOLOAD}=0.') from {ASCENDCL_MISSING}\n")
        site = stand_in(tmp_path / "site", body)
        completed, result, _ = run(python_with_torch, tmp_path, site)
        assert outcomes(result) == [("import-torch", True), ("npu:cann", False)] + [(n, True) for n in CPU_CHECKS]
        cann = result.checks[1]
    else:
        site = stand_in(tmp_path / "site", f"raise {ASCENDCL_MISSING}\n")
        completed, result, raw = run(python_with_torch, tmp_path, site, extra_env={AUTOLOAD: "1"})
        assert outcomes(result) == [("import-torch", False), ("npu:cann", False)]
        assert "Failed to load the backend extension: torch_npu" in result.checks[0].detail
        assert f"{AUTOLOAD}='1'" in result.checks[0].detail
        assert result.torch is None and raw["torch_npu"] == VERSION
        cann = result.checks[1]
    assert completed.returncode == 1
    assert cann.detail.startswith("CANN missing: libascendcl.so")
    assert "Traceback" not in completed.stdout + completed.stderr


def test_a_usable_npu_is_where_the_checks_run(python_with_torch: str, tmp_path: Path) -> None:
    # the stand-in names the device type "npu" but has no kernels: the checks are tried on npu:0 and fail there
    site = stand_in(tmp_path / "site", ONE_DEVICE)
    completed, result, raw = run(python_with_torch, tmp_path, site, "--require-npu")
    assert outcomes(result)[:2] == [("import-torch", True), ("npu-available", True)]
    assert result.checks[1].detail == f"1 NPU(s): Ascend910B3 (torch_npu {VERSION})"
    assert result.device == "npu:0"
    assert raw["npu_available"] is True and raw["npu_device_count"] == 1 and raw["npu_devices"] == ["Ascend910B3"]
    assert raw["npu_unavailable"] is None
    assert [name for name, _ in outcomes(result)[2:]] == CPU_CHECKS
    assert completed.returncode == 1  # no kernels behind the stand-in's device


def test_require_gpu_and_require_npu_are_a_usage_error(tmp_path: Path) -> None:
    completed = run_script(sys.executable, "--require-gpu", "--require-npu", cwd=tmp_path)
    assert completed.returncode == 2 and "not allowed with argument" in completed.stderr
