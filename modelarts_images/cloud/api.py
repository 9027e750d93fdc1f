"""What the tool asks of ModelArts' training API (v2) and of OBS, as typed protocols, and the records they give.

Nothing here talks to Huawei Cloud: `cloud.sdk` implements the protocols with huaweicloudsdkmodelarts and
esdk-obs-python, and unit tests implement them with fakes. Every failure is a CloudError carrying the platform's
own error code; the step that asked turns it into a PlatformError with what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelarts_images.shared.choices import Choice


class Phase(Choice):
    """A training job's status.phase (secondary_phase is not relied on)."""

    CREATING = "Creating"
    PENDING = "Pending"  # queued for its flavour
    RUNNING = "Running"
    TERMINATING = "Terminating"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"
    ABNORMAL = "Abnormal"

    @property
    def finished(self) -> bool:
        return self in (Phase.COMPLETED, Phase.FAILED, Phase.TERMINATED, Phase.ABNORMAL)

    @property
    def stoppable(self) -> bool:
        """Only a creating, pending or running job can be stopped."""
        return self in (Phase.CREATING, Phase.PENDING, Phase.RUNNING)

    @classmethod
    def read(cls, text: str) -> Phase:
        try:
            return cls(text)
        except ValueError:
            return cls.ABNORMAL if text else cls.CREATING  # a phase this tool does not know is no success


class FlavorType(Choice):
    CPU = "CPU"
    GPU = "GPU"
    ASCEND = "Ascend"

    @classmethod
    def read(cls, text: str) -> FlavorType:
        """The platform's spelling, whatever its case (GPU, gpu, ASCEND)."""
        for kind in cls:
            if kind.value.lower() == text.lower():
                return kind
        raise ValueError(f"unknown flavour type {text!r}")


@dataclass(frozen=True, kw_only=True)
class Flavor:
    id: str
    type: FlavorType
    arch: str  # x86, aarch64 (as the platform spells it)
    cpus: int
    memory_gib: float
    accelerators: int  # GPUs or NPUs per node
    accelerator: str = ""  # the product name (v100, p4, ...)
    max_nodes: int = 1

    @property
    def described(self) -> str:
        extra = f", {self.accelerators} x {self.accelerator or self.type}" if self.accelerators else ""
        return f"{self.id} ({self.cpus} vCPU, {self.memory_gib:g} GiB{extra})"


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    task: str
    exit_code: int | None
    message: str


@dataclass(frozen=True, kw_only=True)
class JobState:
    id: str
    name: str
    phase: Phase
    tasks: tuple[str, ...]  # worker-0, worker-1, ...
    task_statuses: tuple[TaskStatus, ...] = ()
    duration_s: float | None = None  # running time the platform counts
    flavor: str = ""  # spec.resource.flavor_id, as created
    command: str = ""  # algorithm.command, as created

    def task_status(self, task: str) -> TaskStatus | None:
        return next((status for status in self.task_statuses if status.task == task), None)


@dataclass(frozen=True, kw_only=True)
class LogPreview:
    content: str  # the newest part of the task's log
    current_size: int
    full_size: int

    @property
    def truncated(self) -> bool:
        return self.current_size < self.full_size


class CloudError(Exception):
    """The platform's refusal or failure, with its own code (`APIGW.0301`, `ModelArts.0111`, `NoSuchBucket`)."""

    def __init__(self, message: str, *, operation: str, status: int | None, code: str) -> None:
        super().__init__(message)
        self.operation, self.status, self.code = operation, status, code

    @property
    def transient(self) -> bool:
        """Worth asking again: throttled, or the service's own failure (or no answer at all)."""
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass(frozen=True, kw_only=True)
class Keys:
    """An access key: what both clients sign with (never shown: the repr keeps 4 characters of the AK)."""

    access_key: str
    secret_key: str
    security_token: str | None = None  # a temporary key's

    def __repr__(self) -> str:
        return f"Keys(access_key={self.access_key[:4]}..., secret_key=***)"


class ModelArts(Protocol):
    """The training-job calls of ModelArts' v2 API, for one project in one region."""

    def flavors(self, kind: FlavorType) -> tuple[Flavor, ...]: ...

    def create(self, body: Mapping[str, Any]) -> JobState: ...

    def job(self, job_id: str) -> JobState: ...

    def stop(self, job_id: str) -> None: ...

    def log_preview(self, job_id: str, task: str) -> LogPreview: ...


class CodeStore(Protocol):
    """OBS, as far as a job's code needs it."""

    def bucket_region(self, bucket: str) -> str: ...

    def etag(self, bucket: str, key: str) -> str | None:
        """The object's ETag (its MD5 in hex for a single-part upload), None when there is none."""

    def put(self, bucket: str, key: str, data: bytes) -> None: ...

