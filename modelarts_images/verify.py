"""Verification of an image the way ModelArts runs it: the run spec, the result line, the checks, the report.

ModelArts starts a training job's container as uid 1000 gid 100 in /home/ma-user, with MA_JOB_DIR and friends
set, the job's code from OBS under ${MA_JOB_DIR}/<code dir>, and the boot command run as it is typed: no login
shell, no profile, so no `conda activate`. `run_spec()` describes exactly that container (with verify/ mounted
read-only where OBS code would land); `parse_result()` reads the JSON line verify/pytorch-verification.py ends
with; `check_against()` compares it with the versions.yaml entry. Everything here is pure except
`verify_image()`, which drives an injected engine (engine.run.Containers, or a fake in the unit tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import conformance
from .conformance import CheckOutcome, ContainerEngine
from .contract import (
    BOOT_COMMAND,
    BOOT_PYTHON,
    CODE_DIR,
    IMAGE_SIZE_BUDGET,
    MA_GID,
    MA_HOME,
    MA_JOB_DIR,
    MA_UID,
    SCRIPT_NAME,
    WORKER_HOSTNAME,
    job_environment,
)
from .engine.run import ContainerOutput, ContainerRun, GpuSupport, ImageConfig, Mount
from .errors import ConfigError, VerifyError
from .files import write_atomic
from .model import ImageSpec

RESULT_PREFIX = "MODELARTS_VERIFY_RESULT "
VERIFY_DIR = Path(__file__).resolve().parent.parent / "verify"
DEVICES = ("cpu", "gpu")
DEVICE_CHOICES = ("cpu", "gpu", "both", "auto")
LOG_TAIL = 40
REPORT_SCHEMA = 1


# --------------------------------------------------------------------------------------------------------------
# The run spec


def run_spec(reference: str, *, device: str, script_dir: Path = VERIFY_DIR, gpus: int = 1) -> ContainerRun:
    """The container ModelArts would start for the boot command, on a CPU flavor or a `gpus`-GPU flavor.

    On a GPU the script gets --require-gpu, so a missing CUDA fails instead of falling back to the CPU.
    """
    if device not in DEVICES:
        raise ConfigError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
    if gpus < 1:
        raise ConfigError(f"gpus: {gpus} must be 1 or more")
    gpu = device == "gpu"
    command: tuple[str, ...] = (BOOT_PYTHON, f"{CODE_DIR}/{SCRIPT_NAME}")
    return ContainerRun(
        image=reference,
        command=command + (("--require-gpu",) if gpu else ()),
        user=f"{MA_UID}:{MA_GID}",
        working_dir=MA_HOME,
        environment=job_environment(gpus=gpus if gpu else 0),
        mounts=(Mount(source=str(Path(script_dir).resolve()), target=CODE_DIR, read_only=True),),
        gpus=gpus if gpu else 0,
        hostname=WORKER_HOSTNAME,
    )


def resolve_devices(requested: str, gpu: GpuSupport | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(devices to run on, notes on what was skipped) for --device cpu|gpu|both|auto.

    auto: the GPU when the engine can give one, otherwise the CPU and a "GPU: skipped" note. `gpu` is only
    needed for auto.
    """
    if requested == "both":
        return DEVICES, ()
    if requested in DEVICES:
        return (requested,), ()
    if requested != "auto":
        raise ConfigError(f"--device: {requested!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if gpu is not None and gpu.available:
        return ("gpu",), ()
    reason = gpu.reason if gpu is not None else "not asked"
    return ("cpu",), (f"GPU: skipped, no GPU runtime ({reason})",)


# --------------------------------------------------------------------------------------------------------------
# The result line


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "python": self.python, "python_executable": self.python_executable, "torch": self.torch,
            "torch_cuda": self.torch_cuda, "cudnn": self.cudnn, "cuda_available": self.cuda_available,
            "device_count": self.device_count, "devices": list(self.devices), "device": self.device,
            "uid": self.uid, "gid": self.gid, "user": self.user, "cwd": self.cwd,
            "environment": dict(self.environment), "checks": [check.as_dict() for check in self.checks],
            "seconds": self.seconds,
        }


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
    lines = [line.rstrip("\r") for line in log_text.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        tail = log_text.strip().splitlines()[-5:]
        shown = " | ".join(tail) if tail else "no output at all"
        raise VerifyError(f"no result line: expected a line starting with {RESULT_PREFIX.strip()!r} and a JSON "
                          f"object from {SCRIPT_NAME} (the script did not get to its end; last lines: {shown})")
    text = lines[-1][len(RESULT_PREFIX):]
    try:
        data = json.loads(text)
    except ValueError as error:
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line is not valid JSON ({error}): {text[:200]}") from error
    if not isinstance(data, dict):
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line holds {type(data).__name__}, expected a JSON object")
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
    if not isinstance(environment, dict) or not isinstance(devices, list):
        raise VerifyError(f"the {RESULT_PREFIX.strip()} line's 'environment' must be an object and 'devices' a list")
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
        checks=tuple(CheckOutcome(name=str(item["name"]), ok=item["ok"] is True, detail=str(item.get("detail", "")))
                     for item in raw_checks),
        seconds=_optional(data, "seconds", float),
    )


# --------------------------------------------------------------------------------------------------------------
# Checking the result against the entry


def _split_version(version: str) -> tuple[str, str]:
    public, _, local = version.partition("+")
    return public, local


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_against(result: VerificationResult, image: ImageSpec, device: str) -> list[CheckOutcome]:
    """The result compared with the versions.yaml entry, plus each check the script ran (named script:<name>).

    - torch-version: torch.__version__ without its +local part is the entry's torch;
    - torch-build: a CUDA entry's torch carries +cuXYZ and torch.version.cuda is the entry's CUDA (major.minor);
      a CPU entry's torch is a CPU build (torch.version.cuda is None);
    - python-version: the entry's Python (major.minor);
    - cuda-available (GPU only): CUDA available, the work ran on a CUDA device;
    - ma-user: the script ran as uid 1000 gid 100, in /home/ma-user, with MA_JOB_DIR set.
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
    if device == "gpu":
        on_cuda = result.device is not None and result.device.startswith("cuda")
        ok = result.cuda_available and result.device_count > 0 and on_cuda
        detail = (f"{result.device_count} CUDA device(s): {', '.join(result.devices)}; the work ran on {result.device}"
                  if ok else f"CUDA is not available in the container (torch built for CUDA {result.torch_cuda}, "
                             f"{result.device_count} device(s) visible, work ran on {result.device})")
        outcomes.append(CheckOutcome(name="cuda-available", ok=ok, detail=detail))
    env = dict(result.environment)
    as_ma_user = result.uid == MA_UID and result.gid == MA_GID
    where_ok = result.cwd == MA_HOME and env.get("MA_JOB_DIR") == MA_JOB_DIR
    outcomes.append(CheckOutcome(
        name="ma-user", ok=as_ma_user and where_ok,
        detail=f"ran as {result.uid}:{result.gid} ({result.user or 'no passwd entry'}) in {result.cwd}, "
               f"MA_JOB_DIR={env.get('MA_JOB_DIR')}"))
    outcomes += [CheckOutcome(name=f"script:{check.name}", ok=check.ok, detail=check.detail)
                 for check in result.checks]
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


def failure_message(subject: str, outcomes: Iterable[tuple[str, CheckOutcome]]) -> str | None:
    """One message naming each failed (blocking) check, as `where/name: detail` lines; None when none failed.

    `outcomes` pairs each outcome with where it was checked ("cpu", "gpu", "conformance")."""
    failed = [(where, outcome) for where, outcome in outcomes if outcome.blocking]
    if not failed:
        return None
    lines = [f"  {where}/{outcome.name}: {outcome.detail}" for where, outcome in failed]
    names = ", ".join(f"{where}/{outcome.name}" for where, outcome in failed)
    return f"{subject} failed verification ({len(failed)} check(s): {names}):\n" + "\n".join(lines)


def raise_for_failures(subject: str, outcomes: Iterable[tuple[str, CheckOutcome]]) -> None:
    """VerifyError (exit 5) naming each failed check, if any failed."""
    message = failure_message(subject, outcomes)
    if message is not None:
        raise VerifyError(message)


# --------------------------------------------------------------------------------------------------------------
# One image: the runs, the conformance checks, the report


@dataclass(frozen=True, kw_only=True)
class DeviceRun:
    device: str
    command: tuple[str, ...]
    exit_code: int | None
    timed_out: bool
    seconds: float
    result: VerificationResult | None  # None when the output held no usable result line
    outcomes: tuple[CheckOutcome, ...]
    output_tail: tuple[str, ...]  # the last lines of the output (stdout then stderr), for the report


@dataclass(frozen=True, kw_only=True)
class ImageReport:
    id: str
    reference: str
    image: ImageSpec
    image_id: str
    size: int
    runs: tuple[DeviceRun, ...]
    skipped: tuple[str, ...]  # "GPU: skipped, no GPU runtime (...)"
    conformance: tuple[CheckOutcome, ...]

    def outcomes(self) -> list[tuple[str, CheckOutcome]]:
        pairs = [(run.device, outcome) for run in self.runs for outcome in run.outcomes]
        return pairs + [("conformance", outcome) for outcome in self.conformance]

    @property
    def ok(self) -> bool:
        return not any(outcome.blocking for _, outcome in self.outcomes())


def _run_device(engine: ContainerEngine, image: ImageSpec, reference: str, device: str, script_dir: Path,
                gpus: int) -> DeviceRun:
    spec = run_spec(reference, device=device, script_dir=script_dir, gpus=gpus)
    try:
        output: ContainerOutput = engine.run(spec)
    except VerifyError as error:  # the container did not start: no GPU runtime, ...
        return DeviceRun(device=device, command=spec.command, exit_code=None, timed_out=False, seconds=0.0,
                         result=None, outcomes=(CheckOutcome(name="run", ok=False, detail=str(error)),),
                         output_tail=())
    tail = tuple((output.stdout.rstrip("\n") + "\n" + output.stderr).strip("\n").splitlines()[-LOG_TAIL:])
    outcomes: list[CheckOutcome] = []
    result: VerificationResult | None = None
    if output.timed_out:
        outcomes.append(CheckOutcome(name="run", ok=False,
                                     detail=f"timed out after {output.seconds:.0f} s; the container was killed"))
    try:
        result = parse_result(output.stdout)
    except VerifyError as error:
        outcomes.append(CheckOutcome(name="result-line", ok=False,
                                     detail=f"exit status {output.exit_code}; {error}"))
    if result is not None:
        outcomes += check_against(result, image, device)
        outcomes.append(CheckOutcome(name="exit-status", ok=output.exit_code == 0,
                                     detail=f"{spec.command[0]} exited with {output.exit_code}"))
    return DeviceRun(device=device, command=spec.command, exit_code=output.exit_code, timed_out=output.timed_out,
                     seconds=output.seconds, result=result, outcomes=tuple(outcomes), output_tail=tail)


def base_image_of(config: ImageConfig, image: ImageSpec) -> str:
    """The base the image was built from: its OCI base-name label (what the build used), else the entry's."""
    return config.label("org.opencontainers.image.base.name") or image.base_image


def verify_image(engine: ContainerEngine, image: ImageSpec, *, reference: str | None = None,
                 devices: Sequence[str] = ("cpu",), skipped: Sequence[str] = (), script_dir: Path = VERIFY_DIR,
                 gpus: int = 1, size_budget: int = IMAGE_SIZE_BUDGET,
                 check_conformance: bool = True) -> ImageReport:
    """Run the verification script in `reference` (default: the entry's reference) on each device, check the
    results against the entry and the image against ModelArts' rules. Failed checks are in the report;
    VerifyError only when the image is not there at all."""
    reference = reference or image.reference
    config = engine.image(reference)
    if config is None:
        raise VerifyError(f"{image.id}: image {reference} is not in the engine; build it first (inv build "
                          f"--only {image.id}) or pass --image")
    runs = tuple(_run_device(engine, image, reference, device, script_dir, gpus) for device in devices)
    checks: tuple[CheckOutcome, ...] = ()
    if check_conformance:
        checks = tuple(conformance.check_image(engine, reference, base_image=base_image_of(config, image),
                                               size_budget=size_budget,
                                               environment=job_environment(gpus=0)))
    return ImageReport(id=image.id, reference=reference, image=image, image_id=config.image_id, size=config.size,
                       runs=runs, skipped=tuple(skipped), conformance=checks)


def report_dict(report: ImageReport) -> dict[str, Any]:
    image = report.image
    return {
        "schema": REPORT_SCHEMA,
        "id": report.id,
        "reference": report.reference,
        "image_id": report.image_id,
        "size": report.size,
        "ok": report.ok,
        "expected": {"python": image.python, "cuda": image.cuda, "variant": image.variant,
                     "packages": dict(image.packages)},
        "boot_command": BOOT_COMMAND,
        "runs": [
            {
                "device": run.device,
                "ok": not any(outcome.blocking for outcome in run.outcomes),
                "command": list(run.command),
                "exit_code": run.exit_code,
                "timed_out": run.timed_out,
                "seconds": round(run.seconds, 3),
                "result": run.result.as_dict() if run.result is not None else None,
                "checks": [outcome.as_dict() for outcome in run.outcomes],
                "output_tail": list(run.output_tail),
            }
            for run in report.runs
        ],
        "skipped": list(report.skipped),
        "conformance": [outcome.as_dict() for outcome in report.conformance],
    }


def report_json(report: ImageReport) -> str:
    """The report as saved under reports/verify/<id>.json."""
    return json.dumps(report_dict(report), indent=2, sort_keys=False) + "\n"


def save_report(report: ImageReport, directory: Path) -> Path:
    """<directory>/<id>.json, replaced whole; ConfigError naming it when it cannot be written."""
    return write_atomic(directory / f"{report.id}.json", report_json(report), what="verification result")


def format_report(report: ImageReport) -> str:
    """The report for a terminal: one line per check, grouped by device and conformance."""
    lines = [f"{report.id}: {report.reference} ({'passed' if report.ok else 'FAILED'})"]
    for run in report.runs:
        facts = ""
        if run.result is not None:
            result = run.result
            facts = (f" python {result.python}, torch {result.torch}, CUDA {result.torch_cuda}, "
                     f"device {result.device}, uid {result.uid} gid {result.gid}")
        lines.append(f"  {run.device.upper()} run ({run.seconds:.1f} s, exit {run.exit_code}):{facts}")
        lines += [f"    {outcome.line()}" for outcome in run.outcomes]
        if run.output_tail and any(outcome.blocking for outcome in run.outcomes):
            lines.append("    output (last lines):")
            lines += [f"      | {line}" for line in run.output_tail if not line.startswith(RESULT_PREFIX)]
    lines += [f"  {note}" for note in report.skipped]
    if report.conformance:
        lines.append("  ModelArts conformance:")
        lines += [f"    {outcome.line()}" for outcome in report.conformance]
    return "\n".join(lines)


def raise_for_report(report: ImageReport) -> None:
    """VerifyError (exit 5) naming each failed check of the report."""
    raise_for_failures(f"{report.id} ({report.reference})", report.outcomes())


def raise_for_reports(reports: Sequence[ImageReport]) -> None:
    """One VerifyError (exit 5) for every image that failed, each with its failed checks."""
    messages = [failure_message(f"{report.id} ({report.reference})", report.outcomes()) for report in reports]
    failed = [message for message in messages if message is not None]
    if failed:
        raise VerifyError("\n".join(failed))
