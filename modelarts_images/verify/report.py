"""The verification report of one image: its runs, its conformance checks; saved as reports/verify/<id>.json,
read back by the matrix, shown on a terminal."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelarts_images.contract import DEFAULT_USER, RunUser
from modelarts_images.errors import VerifyError
from modelarts_images.model import ImageSpec
from modelarts_images.options import Device
from modelarts_images.shared.files import write_atomic
from modelarts_images.verify.checks import CheckOutcome, failure_message
from modelarts_images.verify.result import RESULT_PREFIX, VerificationResult

SCHEMA = 1
COLLECTIVES = ("all_reduce", "broadcast", "barrier")  # the script's distributed:<name> checks after the rendezvous
_COLLECTIVE_CHECKS = frozenset(f"distributed:{name}" for name in COLLECTIVES)
_CHECK_SECONDS = re.compile(r"\((\d+(?:\.\d+)?) s\)$")  # the time the script's distributed details end with


@dataclass(frozen=True, kw_only=True)
class Expected:
    """What the versions.yaml entry says the image holds."""

    python: str
    cuda: str
    variant: str
    packages: tuple[tuple[str, str], ...]  # (name, version), torch first
    user: RunUser = DEFAULT_USER

    @classmethod
    def of(cls, image: ImageSpec) -> Expected:
        return cls(python=image.python, cuda=image.cuda, variant=image.variant, packages=image.packages,
                   user=image.user)


@dataclass(frozen=True, kw_only=True)
class PlatformJob:
    """The training job a run was on ModelArts: where, on what, how it ended and how long it queued and ran."""

    job_id: str
    name: str
    region: str
    flavor: str
    phase: str  # the final status.phase
    exit_code: int | None  # the task's, as the platform reports it
    message: str  # the platform's own words on the task
    queued: float  # seconds Creating and Pending
    ran: float  # seconds Running
    console_url: str
    log_bytes: tuple[int, int] = (0, 0)  # (read, the whole log): the preview holds only the newest part

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "name": self.name, "region": self.region, "flavor": self.flavor,
                "phase": self.phase, "exit_code": self.exit_code, "message": self.message,
                "queued_seconds": self.queued, "run_seconds": self.ran, "console_url": self.console_url,
                "log_bytes": {"read": self.log_bytes[0], "full": self.log_bytes[1]}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlatformJob:
        return cls(job_id=str(data["job_id"]), name=str(data["name"]), region=str(data["region"]),
                   flavor=str(data["flavor"]), phase=str(data["phase"]), exit_code=data["exit_code"],
                   message=str(data["message"]), queued=float(data["queued_seconds"]),
                   ran=float(data["run_seconds"]), console_url=str(data["console_url"]),
                   log_bytes=(int(data["log_bytes"]["read"]), int(data["log_bytes"]["full"])))


@dataclass(frozen=True, kw_only=True)
class Worker:
    """Which worker of a distributed run a run was, and the run's shape."""

    index: int
    nodes: int
    procs_per_node: int
    launcher: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "nodes": self.nodes, "procs_per_node": self.procs_per_node,
                "launcher": self.launcher}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Worker:
        return cls(index=int(data["index"]), nodes=int(data["nodes"]), procs_per_node=int(data["procs_per_node"]),
                   launcher=str(data["launcher"]))


@dataclass(frozen=True, kw_only=True)
class DeviceRun:
    device: Device
    command: tuple[str, ...]
    exit_code: int | None
    timed_out: bool
    seconds: float
    result: VerificationResult | None  # None when the output held no usable result line
    outcomes: tuple[CheckOutcome, ...]
    output_tail: tuple[str, ...]  # the last lines of the output (stdout then stderr), for the report
    job: PlatformJob | None = None  # the training job it ran as on ModelArts; None: a local container
    worker: Worker | None = None  # the worker of a distributed run it was; None: a single-node run

    @property
    def ok(self) -> bool:
        return not any(outcome.blocking for outcome in self.outcomes)

    @property
    def label(self) -> str:
        """'cpu', or 'cpu worker 1/2' for a worker of a distributed run (counted from 0, as VC_TASK_INDEX)."""
        worker = self.worker
        return str(self.device) if worker is None else f"{self.device} worker {worker.index}/{worker.nodes}"

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device.value,
            "ok": self.ok,
            "command": list(self.command),
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "seconds": self.seconds,
            "result": self.result.to_json() if self.result is not None else None,
            "checks": [outcome.to_json() for outcome in self.outcomes],
            "output_tail": list(self.output_tail),
            **({"job": self.job.to_json()} if self.job is not None else {}),
            **({"worker": self.worker.to_json()} if self.worker is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceRun:
        return cls(device=Device(data["device"]), command=tuple(data["command"]), exit_code=data["exit_code"],
                   timed_out=bool(data["timed_out"]), seconds=float(data["seconds"]),
                   result=None if data["result"] is None else VerificationResult.from_json(data["result"]),
                   outcomes=tuple(CheckOutcome.from_json(item) for item in data["checks"]),
                   output_tail=tuple(data["output_tail"]),
                   job=PlatformJob.from_json(data["job"]) if data.get("job") else None,
                   worker=Worker.from_json(data["worker"]) if data.get("worker") else None)


@dataclass(frozen=True, kw_only=True)
class ImageReport:
    id: str
    reference: str
    expected: Expected
    image_id: str
    size: int
    runs: tuple[DeviceRun, ...]
    skipped: tuple[str, ...]  # "GPU: skipped, no GPU runtime (...)"
    conformance: tuple[CheckOutcome, ...]
    stack: tuple[CheckOutcome, ...] = ()  # pip check, imports and the checks: scripts, for an image with a stack
    platform: str = "local"  # where the runs were: local containers, or "modelarts" training jobs

    def distributed(self) -> dict[str, str]:
        """{device: its distributed run in one line} (none for a single-node run); see distributed_summary."""
        lines = {}
        for device in dict.fromkeys(run.device for run in self.runs if run.worker is not None):
            lines[device.value] = distributed_summary([run for run in self.runs if run.device is device])
        return lines

    def outcomes(self) -> list[tuple[str, CheckOutcome]]:
        pairs = [(run.label, outcome) for run in self.runs for outcome in run.outcomes]
        return (pairs + [("conformance", outcome) for outcome in self.conformance]
                + [("stack", outcome) for outcome in self.stack])

    @property
    def ok(self) -> bool:
        return not any(outcome.blocking for _, outcome in self.outcomes())

    def failure(self) -> str | None:
        """One message naming each failed check, or None when the image passed."""
        return failure_message(f"{self.id} ({self.reference})", self.outcomes())

    def to_json(self) -> dict[str, Any]:
        expected = self.expected
        return {
            "schema": SCHEMA,
            "platform": self.platform,
            "id": self.id,
            "reference": self.reference,
            "image_id": self.image_id,
            "size": self.size,
            "ok": self.ok,
            "expected": {"python": expected.python, "cuda": expected.cuda, "variant": expected.variant,
                         "packages": dict(expected.packages),
                         "user": {"name": expected.user.name, "uid": expected.user.uid, "gid": expected.user.gid}},
            "boot_command": expected.user.boot_command,
            "runs": [run.to_json() for run in self.runs],
            **({"distributed": distributed} if (distributed := self.distributed()) else {}),
            "skipped": list(self.skipped),
            "conformance": [outcome.to_json() for outcome in self.conformance],
            "stack": [outcome.to_json() for outcome in self.stack],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageReport:
        expected = data["expected"]
        user = expected.get("user")  # absent from reports written before the user could be set
        return cls(id=str(data["id"]), reference=str(data["reference"]),
                   expected=Expected(python=str(expected["python"]), cuda=str(expected["cuda"]),
                                     variant=str(expected["variant"]),
                                     packages=tuple((str(k), str(v)) for k, v in expected["packages"].items()),
                                     user=DEFAULT_USER if user is None else RunUser(
                                         name=str(user["name"]), uid=int(user["uid"]), gid=int(user["gid"]))),
                   image_id=str(data["image_id"]), size=int(data["size"]),
                   runs=tuple(DeviceRun.from_json(run) for run in data["runs"]),
                   skipped=tuple(str(note) for note in data["skipped"]),
                   conformance=tuple(CheckOutcome.from_json(item) for item in data["conformance"]),
                   stack=tuple(CheckOutcome.from_json(item) for item in data.get("stack", ())),
                   platform=str(data.get("platform", "local")))


def distributed_summary(runs: Sequence[DeviceRun]) -> str:
    """A distributed run's workers (of one device) in one line: the shape, the backend, and the collectives with
    the slowest worker's time for them, e.g. '2 nodes × 2, gloo: all_reduce, broadcast, barrier ok (0.40 s)', or
    the first failed check and the worker that failed it."""
    workers = [(run.worker, run) for run in runs if run.worker is not None]
    shape = workers[0][0]
    head = f"{shape.nodes} nodes × {shape.procs_per_node}, {'nccl' if workers[0][1].device is Device.GPU else 'gloo'}"
    failed = [(worker.index, outcome) for worker, run in workers for outcome in run.outcomes if outcome.blocking]
    if failed:
        index, first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{head}: FAIL, worker {index} {first.name}{more}"
    seconds = max(sum(_seconds_of(check.detail) for check in run.result.checks if check.name in _COLLECTIVE_CHECKS)
                  for _, run in workers if run.result is not None)
    return f"{head}: {', '.join(COLLECTIVES)} ok ({seconds:.2f} s)"


def _seconds_of(detail: str) -> float:
    found = _CHECK_SECONDS.search(detail)
    return float(found.group(1)) if found else 0.0


def save_report(report: ImageReport, directory: Path) -> Path:
    """<directory>/<id>.json, replaced whole; WriteError naming it when it cannot be written."""
    text = json.dumps(report.to_json(), indent=2) + "\n"
    return write_atomic(directory / f"{report.id}.json", text, what="verification result")


def format_report(report: ImageReport) -> str:
    """The report for a terminal: one line per check, grouped by device and conformance."""
    lines = [f"{report.id}: {report.reference} ({'passed' if report.ok else 'FAILED'})"]
    lines += [f"  {device.upper()} distributed: {line}" for device, line in report.distributed().items()]
    for run in report.runs:
        facts = ""
        if run.result is not None:
            result = run.result
            facts = (f" python {result.python}, torch {result.torch}, CUDA {result.torch_cuda}, "
                     f"device {result.device}, uid {result.uid} gid {result.gid}")
        lines.append(f"  {run.label.upper()} run ({run.seconds:.1f} s, exit {run.exit_code}):{facts}")
        lines += [f"    {outcome.line()}" for outcome in run.outcomes]
        if run.output_tail and not run.ok:
            lines.append("    output (last lines):")
            lines += [f"      | {line}" for line in run.output_tail if not line.startswith(RESULT_PREFIX)]
    lines += [f"  {note}" for note in report.skipped]
    if report.conformance:
        lines.append("  ModelArts conformance:")
        lines += [f"    {outcome.line()}" for outcome in report.conformance]
    if report.stack:
        lines.append("  Stack:")
        lines += [f"    {outcome.line()}" for outcome in report.stack]
    return "\n".join(lines)


def raise_for_reports(reports: Sequence[ImageReport]) -> None:
    """One VerifyError (exit 5) for every image that failed, each with its failed checks."""
    failed = [message for message in (report.failure() for report in reports) if message is not None]
    if failed:
        raise VerifyError("\n".join(failed))
