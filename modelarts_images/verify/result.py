"""What verify/pytorch-verification.py reports from inside the container, and how it is checked against the
versions.yaml entry. Pure: no engine here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelarts_images.contract import SCRIPT_NAME
from modelarts_images.errors import VerifyError
from modelarts_images.model import X86_64, ImageSpec
from modelarts_images.options import Device
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.probes import tagged_json

RESULT_PREFIX = "MODELARTS_VERIFY_RESULT "  # what verify/pytorch-verification.py prints its result after


@dataclass(frozen=True, kw_only=True)
class VerificationResult:
    """What verify/pytorch-verification.py reported from inside the container."""

    ok: bool  # the script's own verdict: every check it ran passed
    python: str | None
    python_executable: str | None
    torch: str | None  # torch.__version__, None when torch did not import
    torch_cuda: str | None  # torch.version.cuda: None for a CPU build
    cudnn: str | None
    cuda_available: bool
    device_count: int
    devices: tuple[str, ...]
    device: str | None  # where the work ran: "cpu", "cuda:0", or None when it could not run
    uid: int | None
    gid: int | None
    user: str | None
    cwd: str | None
    environment: tuple[tuple[str, str], ...]  # the MA_* and VC_* variables it saw
    checks: tuple[CheckOutcome, ...]
    seconds: float | None
    prefix: str | None = None  # sys.prefix
    modules: tuple[tuple[str, str], ...] = ()  # library-backed standard modules: "ok" or why they did not import
    activated: tuple[str, ...] = ()  # activation variables that were set (CONDA_PREFIX, ...)
    platform: str | None = None  # platform.platform(): the machine the interpreter ran as ('...-aarch64-...')
    torch_npu: str | None = None  # torch_npu's version where it is installed
    npu_available: bool = False
    npu_device_count: int = 0
    npu_devices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "python": self.python, "python_executable": self.python_executable, "torch": self.torch,
            "torch_cuda": self.torch_cuda, "cudnn": self.cudnn, "cuda_available": self.cuda_available,
            "device_count": self.device_count, "devices": list(self.devices), "device": self.device,
            "uid": self.uid, "gid": self.gid, "user": self.user, "cwd": self.cwd,
            "environment": dict(self.environment), "checks": [check.to_json() for check in self.checks],
            "seconds": self.seconds, "prefix": self.prefix, "modules": dict(self.modules),
            "activated": list(self.activated), "platform": self.platform, "torch_npu": self.torch_npu,
            "npu_available": self.npu_available, "npu_device_count": self.npu_device_count,
            "npu_devices": list(self.npu_devices),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerificationResult:
        """The result from its JSON object: the script's result line, or what to_json() wrote."""
        return _from_object(data)


def _optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if kind is str:
        return str(value)
    if kind is int and isinstance(value, bool | int):
        return int(value)
    if kind is float and isinstance(value, int | float):
        return float(value)
    expected = {str: "a string", int: "an integer", float: "a number"}[kind]
    raise VerifyError(f"the result line's {key!r} is {value!r}, expected {expected} or null")


def parse_result(log_text: str) -> VerificationResult:
    """The result in the container's output: its last line starting with RESULT_PREFIX, then a JSON object.

    VerifyError, naming what was expected, when there is no such line or it is garbled."""
    return _from_object(tagged_json(log_text, RESULT_PREFIX, what=SCRIPT_NAME,
                                    hint="the script did not get to its end"))


def _from_object(data: Mapping[str, Any]) -> VerificationResult:
    for key in ("ok", "checks"):
        if key not in data:
            raise VerifyError(f"the {RESULT_PREFIX.strip()} line has no {key!r} key (keys: {', '.join(sorted(data))})")
    raw_checks = data["checks"]
    if not isinstance(raw_checks, list) or not all(
            isinstance(item, dict) and {"name", "ok"} <= item.keys() for item in raw_checks):
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line's 'checks' must be a list of objects with 'name', 'ok' "
                          "and 'detail'")
    environment = data.get("environment") or {}
    devices = data.get("devices") or []
    npu_devices = data.get("npu_devices") or []
    modules, activated = data.get("modules") or {}, data.get("activated") or []
    if not isinstance(environment, dict) or not isinstance(devices, list) or not isinstance(npu_devices, list):
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line's 'environment' must be an object and 'devices' a list")
    if not isinstance(modules, dict) or not isinstance(activated, list):
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line's 'modules' must be an object and 'activated' a list")
    return VerificationResult(
        ok=data["ok"] is True,
        python=_optional(data, "python", str),
        python_executable=_optional(data, "python_executable", str),
        torch=_optional(data, "torch", str),
        torch_cuda=_optional(data, "torch_cuda", str),
        cudnn=_optional(data, "cudnn", str),
        cuda_available=data.get("cuda_available") is True,
        device_count=_optional(data, "device_count", int) or 0,
        devices=tuple(str(name) for name in devices),
        device=_optional(data, "device", str),
        uid=_optional(data, "uid", int),
        gid=_optional(data, "gid", int),
        user=_optional(data, "user", str),
        cwd=_optional(data, "cwd", str),
        environment=tuple(sorted((str(key), str(value)) for key, value in environment.items())),
        checks=tuple(CheckOutcome.from_json(item) for item in raw_checks),
        seconds=_optional(data, "seconds", float),
        prefix=_optional(data, "prefix", str),
        modules=tuple(sorted((str(name), str(state)) for name, state in modules.items())),
        activated=tuple(str(name) for name in activated),
        platform=_optional(data, "platform", str),
        torch_npu=_optional(data, "torch_npu", str),
        npu_available=data.get("npu_available") is True,
        npu_device_count=_optional(data, "npu_device_count", int) or 0,
        npu_devices=tuple(str(name) for name in npu_devices),
    )


# --------------------------------------------------------------------------------------------------------------
# Checking the result against the entry


def _split_version(version: str) -> tuple[str, str]:
    public, _, local = version.partition("+")
    return public, local


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_against(result: VerificationResult, image: ImageSpec, device: Device) -> list[CheckOutcome]:
    """The result compared with the versions.yaml entry, plus each check the script ran (named script:<name>).

    - torch-version: torch.__version__ without its +local part is the entry's torch;
    - torch-build: a CUDA entry's torch carries +cuXYZ and torch.version.cuda is the entry's CUDA (major.minor);
      a CPU entry's torch is a CPU build (torch.version.cuda is None);
    - python-version: the entry's Python (major.minor);
    - cuda-available (GPU only): CUDA available, the work ran on a CUDA device;
    - arch (an image for another machine than x86_64): the interpreter ran as that machine;
    - torch-npu-version (Ascend images): the torch_npu installed is the entry's;
    - npu-available (NPU only): torch_npu sees an NPU, the work ran on it;
    - ma-user: the script ran as the entry's user (uid and gid), in its home, with MA_JOB_DIR set.
    """
    outcomes: list[CheckOutcome] = []
    expected_local = "" if image.is_cpu else image.variant
    expected = image.torch + (f"+{expected_local}" if expected_local else "")
    if result.torch is None:
        outcomes.append(CheckOutcome(name="torch-version", ok=False,
                                     detail=f"expected torch {expected}; torch did not import in the image"))
        outcomes.append(CheckOutcome(name="torch-build", ok=False, detail="torch did not import in the image"))
    else:
        public, local = _split_version(result.torch)
        want_public, _ = _split_version(image.torch)
        outcomes.append(CheckOutcome(
            name="torch-version", ok=public == want_public,
            detail=f"torch {result.torch}" + ("" if public == want_public else f", expected {expected}")))
        outcomes.append(_check_build(result, image, local))
    python_ok = result.python is not None and _major_minor(result.python) == _major_minor(image.python)
    outcomes.append(CheckOutcome(
        name="python-version", ok=python_ok,
        detail=f"Python {result.python}" + ("" if python_ok else f", expected {image.python}")))
    if device is Device.GPU:
        on_cuda = result.device is not None and result.device.startswith("cuda")
        ok = result.cuda_available and result.device_count > 0 and on_cuda
        detail = (f"{result.device_count} CUDA device(s): {', '.join(result.devices)}; the work ran on {result.device}"
                  if ok else f"CUDA is not available in the container (torch built for CUDA {result.torch_cuda}, "
                             f"{result.device_count} device(s) visible, work ran on {result.device})")
        outcomes.append(CheckOutcome(name="cuda-available", ok=ok, detail=detail))
    outcomes += _npu_checks(result, image, device)
    env = dict(result.environment)
    user = image.user
    as_ma_user = result.uid == user.uid and result.gid == user.gid
    where_ok = result.cwd == user.home and env.get("MA_JOB_DIR") == user.job_dir
    outcomes.append(CheckOutcome(
        name="ma-user", ok=as_ma_user and where_ok,
        detail=f"ran as {result.uid}:{result.gid} ({result.user or 'no passwd entry'}) in {result.cwd}, "
               f"MA_JOB_DIR={env.get('MA_JOB_DIR')}"))
    outcomes += [CheckOutcome(name=f"script:{check.name}", ok=check.ok, detail=check.detail)
                 for check in result.checks]
    return outcomes


def _npu_checks(result: VerificationResult, image: ImageSpec, device: Device) -> list[CheckOutcome]:
    outcomes = []
    if image.arch != X86_64:
        ran_as = result.platform or "an unknown platform"
        outcomes.append(CheckOutcome(name="arch", ok=image.arch in ran_as,
                                     detail=f"ran as {ran_as}" + ("" if image.arch in ran_as else
                                                                   f", expected {image.arch}")))
    if image.ascend is not None:
        wanted = image.ascend.torch_npu
        ok = result.torch_npu is not None and result.torch_npu.split("+")[0] == wanted
        outcomes.append(CheckOutcome(name="torch-npu-version", ok=ok, detail=(
            f"torch_npu {result.torch_npu}" if ok else
            f"torch_npu {result.torch_npu or 'is not installed'}, expected {wanted}")))
    if device is Device.NPU:
        on_npu = result.device is not None and result.device.startswith("npu")
        ok = result.npu_available and result.npu_device_count > 0 and on_npu
        outcomes.append(CheckOutcome(name="npu-available", ok=ok, detail=(
            f"{result.npu_device_count} NPU(s): {', '.join(result.npu_devices)}; the work ran on {result.device}" if ok
            else f"no usable NPU in the container ({result.npu_device_count} visible, work ran on {result.device})")))
    return outcomes


def _check_build(result: VerificationResult, image: ImageSpec, local: str) -> CheckOutcome:
    name = "torch-build"
    cuda = result.torch_cuda
    if image.is_cpu:
        if cuda is not None:
            return CheckOutcome(name=name, ok=False,
                                detail=f"torch {result.torch} is a CUDA {cuda} build; the entry is a CPU image")
        return CheckOutcome(name=name, ok=True, detail=f"CPU build ({result.torch})")
    problems = []
    if not local:
        problems.append(f"torch {result.torch} carries no +{image.variant} build tag")
    elif local != image.variant:
        problems.append(f"torch {result.torch} is the +{local} build, expected +{image.variant}")
    if cuda is None:
        problems.append("torch.version.cuda is None (a CPU build)")
    elif _major_minor(cuda) != _major_minor(image.cuda):
        problems.append(f"torch.version.cuda is {cuda}, expected {image.cuda}")
    if problems:
        return CheckOutcome(name=name, ok=False, detail="; ".join(problems))
    return CheckOutcome(name=name, ok=True, detail=f"+{local} build, torch.version.cuda {cuda}, cuDNN {result.cudnn}")
