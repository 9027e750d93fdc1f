"""Verification on ModelArts, the pure parts: the flavour chosen, the job's code on OBS, the watch over a job's
phases (with a fake platform and a fake clock: no time passes)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.cloud.api import CloudError, Flavor, FlavorType, JobState, LogPreview, Phase
from modelarts_images.errors import ConfigError, Interrupted, PlatformError
from modelarts_images.options import Device
from modelarts_images.paths import VERIFY_DIR
from modelarts_images.platform import code, flavors
from modelarts_images.platform.watch import Pace, sigterm_interrupts, watch

OFFERED = (
    Flavor(id="modelarts.vm.cpu.8u", type=FlavorType.CPU, arch="x86", cpus=8, memory_gib=32, accelerators=0),
    Flavor(id="modelarts.vm.cpu.2u", type=FlavorType.CPU, arch="x86", cpus=2, memory_gib=8, accelerators=0),
    Flavor(id="modelarts.vm.gpu.8v100", type=FlavorType.GPU, arch="x86", cpus=64, memory_gib=512, accelerators=8,
           accelerator="v100"),
    Flavor(id="modelarts.vm.gpu.p4", type=FlavorType.GPU, arch="x86", cpus=8, memory_gib=64, accelerators=1,
           accelerator="p4"),
    Flavor(id="modelarts.kat1.xlarge", type=FlavorType.ASCEND, arch="aarch64", cpus=24, memory_gib=96,
           accelerators=1, accelerator="Ascend-910"),
)


# --------------------------------------------------------------------------------------------------------------
# flavours


@pytest.mark.parametrize(("device", "expected"), [(Device.CPU, "modelarts.vm.cpu.2u"),
                                                  (Device.GPU, "modelarts.vm.gpu.p4")])
def test_the_smallest_flavour_of_the_device_is_chosen(device: Device, expected: str) -> None:
    assert flavors.choose(OFFERED, device=device, arch="x86_64").id == expected
    assert flavors.choose(tuple(reversed(OFFERED)), device=device, arch="x86_64").id == expected


def test_a_flavour_asked_for_is_taken_when_it_fits() -> None:
    assert flavors.choose(OFFERED, device=Device.GPU, arch="x86_64", wanted="modelarts.vm.gpu.8v100").accelerators == 8


@pytest.mark.parametrize(("wanted", "device", "message"), [
    ("modelarts.vm.gpu.a100", Device.GPU, "--flavor modelarts.vm.gpu.a100: is not offered in cn-north-4; GPU "
                                          "flavours for x86 offered: modelarts.vm.gpu.p4 (8 vCPU, 64 GiB, 1 x p4); "
                                          "modelarts.vm.gpu.8v100"),
    ("modelarts.vm.cpu.2u", Device.GPU, "--flavor modelarts.vm.cpu.2u: is a CPU flavour for x86 in cn-north-4"),
])
def test_a_flavour_that_does_not_fit_names_those_that_do(wanted: str, device: Device, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        flavors.choose(OFFERED, device=device, arch="x86_64", wanted=wanted, region="cn-north-4")
    assert str(caught.value).startswith(message)


def test_no_flavour_of_the_architecture_is_an_error_listing_the_region() -> None:
    with pytest.raises(ConfigError, match=r"no GPU flavour for aarch64 is offered in cn-north-4 \(training-job "
                                          r"flavours: modelarts.kat1.xlarge, "):
        flavors.choose(OFFERED, device=Device.GPU, arch="aarch64", region="cn-north-4")


def test_a_distributed_job_takes_the_smallest_flavour_that_takes_its_nodes() -> None:
    offered = (*OFFERED, Flavor(id="modelarts.vm.cpu.4u", type=FlavorType.CPU, arch="x86", cpus=4, memory_gib=16,
                                accelerators=0, max_nodes=4))
    assert flavors.choose(offered, device=Device.CPU, arch="x86_64", nodes=2).id == "modelarts.vm.cpu.4u"
    assert flavors.choose(offered, device=Device.CPU, arch="x86_64", nodes=1).id == "modelarts.vm.cpu.2u"
    with pytest.raises(ConfigError) as caught:
        flavors.choose(offered, device=Device.CPU, arch="x86_64", nodes=5, region="cn-north-4")
    assert str(caught.value) == (
        "no CPU flavour for x86 in cn-north-4 takes 5 nodes (offered: modelarts.vm.cpu.2u (2 vCPU, 8 GiB) up to 1 "
        "node(s); modelarts.vm.cpu.4u (4 vCPU, 16 GiB) up to 4 node(s); modelarts.vm.cpu.8u (8 vCPU, 32 GiB) up to "
        "1 node(s)); fewer --nodes, or another region")


# --------------------------------------------------------------------------------------------------------------
# code on OBS


@pytest.mark.parametrize(("text", "bucket", "prefix"), [
    ("obs://verify-bucket/images/", "verify-bucket", "images"), ("obs://verify-bucket", "verify-bucket", ""),
    ("/verify-bucket/a/b", "verify-bucket", "a/b"), (" obs://b.example-1/x/ ", "b.example-1", "x"),
])
def test_an_obs_folder_is_read_in_both_spellings(text: str, bucket: str, prefix: str) -> None:
    parsed = code.ObsDir.parse(text)
    assert (parsed.bucket, parsed.prefix) == (bucket, prefix)


@pytest.mark.parametrize("text", ["s3://bucket/x", "obs://Bucket/x", "obs://ab", "bucket/x", "obs://b-b/a/../c",
                                  "obs://b-b/a//c", ""])
def test_a_bad_obs_folder_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match="--obs-dir: "):
        code.ObsDir.parse(text)


class Bucket:
    """A CodeStore in memory: one bucket in one region, counting what is put."""

    def __init__(self, region: str = "cn-north-4", fail: CloudError | None = None) -> None:
        self.region, self.fail = region, fail
        self.objects: dict[tuple[str, str], bytes] = {}
        self.puts: list[str] = []

    def bucket_region(self, bucket: str) -> str:
        if self.fail is not None:
            raise self.fail
        return self.region

    def etag(self, bucket: str, key: str) -> str | None:
        import hashlib

        data = self.objects.get((bucket, key))
        return None if data is None else f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.objects[(bucket, key)] = data
        self.puts.append(key)


def test_the_code_is_the_script_and_its_probes_only() -> None:
    names = [file.name for file in code.code_files(VERIFY_DIR)]
    assert "pytorch-verification.py" in names and "probes/conformance_facts.py" in names
    assert all(not name.endswith(".pyc") for name in names)


def test_the_stack_checks_go_beside_the_script(tmp_path: Path) -> None:
    check = tmp_path / "check_tokenizers.py"
    check.write_text("import tokenizers\n")
    names = [file.name for file in code.job_code(VERIFY_DIR, (check,))]
    assert names[-1] == "check_tokenizers.py" and "pytorch-verification.py" in names


def test_code_goes_under_its_content_hash_and_is_sent_once(tmp_path: Path) -> None:
    (tmp_path / "pytorch-verification.py").write_text("print('x')\n")
    files = code.code_files(tmp_path)
    planned = code.plan_upload(code.ObsDir.parse("obs://verify-bucket/ci/"), "pytorch-2.1", files)
    assert planned.folder == f"ci/pytorch-2.1/{code.content_hash(files)}/code/"
    assert planned.code_dir == f"/verify-bucket/ci/pytorch-2.1/{code.content_hash(files)}/code/"
    store = Bucket()
    assert code.upload(store, planned, region="cn-north-4").sent == ("pytorch-verification.py",)
    assert code.upload(store, planned, region="cn-north-4").sent == ()  # the same content is not sent again
    assert store.puts == [planned.folder + "pytorch-verification.py"]
    (tmp_path / "pytorch-verification.py").write_text("print('y')\n")
    changed = code.plan_upload(code.ObsDir.parse("obs://verify-bucket/ci/"), "pytorch-2.1", code.code_files(tmp_path))
    assert changed.folder != planned.folder  # a job created earlier keeps reading the code it was created with


def test_a_bucket_of_another_region_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("")
    store = Bucket(region="cn-south-1")
    planned = code.plan_upload(code.ObsDir.parse("obs://verify-bucket"), "x", code.code_files(tmp_path))
    with pytest.raises(PlatformError, match="is in cn-south-1, but the job runs in cn-north-4"):
        code.upload(store, planned, region="cn-north-4")
    assert store.puts == []


def test_an_obs_refusal_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("")
    refused = CloudError("Access Denied", operation="bucket location", status=403, code="AccessDenied")
    planned = code.plan_upload(code.ObsDir.parse("obs://verify-bucket"), "x", code.code_files(tmp_path))
    with pytest.raises(PlatformError, match=r"\[AccessDenied\]; the keys' IAM user needs OBS write rights"):
        code.upload(Bucket(fail=refused), planned, region="cn-north-4")


# --------------------------------------------------------------------------------------------------------------
# watching a job


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def pace(self) -> Pace:
        return Pace(clock=self, sleep=self.sleep)


class Jobs:
    """A ModelArts that answers the status calls from a list of phases (or errors), and records stops."""

    def __init__(self, answers: list[Phase | CloudError | BaseException], *, stop_fails: bool = False) -> None:
        self.answers = answers
        self.stopped: list[str] = []
        self.stop_fails = stop_fails

    def flavors(self, kind: FlavorType) -> tuple[Flavor, ...]:
        return OFFERED

    def create(self, body: Mapping[str, Any]) -> JobState:
        return state(Phase.CREATING)

    def job(self, job_id: str) -> JobState:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return state(answer)

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)
        if self.stop_fails:
            raise CloudError("job is not running", operation="stop", status=400, code="ModelArts.2836")

    def log_preview(self, job_id: str, task: str) -> LogPreview:
        return LogPreview(content="", current_size=0, full_size=0)


def state(phase: Phase) -> JobState:
    return JobState(id="job-1", name="verify-x", phase=phase, tasks=("worker-0",))


def test_the_phases_are_said_as_they_change_with_the_time_spent() -> None:
    clock, said = Clock(), list[str]()
    jobs = Jobs([Phase.PENDING, Phase.PENDING, Phase.RUNNING, Phase.RUNNING, Phase.COMPLETED])
    watched = watch(jobs, state(Phase.CREATING), timeout=3600, say=said.append, pace=clock.pace)
    assert watched.state.phase is Phase.COMPLETED and watched.calls == 5 and jobs.stopped == []
    assert said == ["verify-x: Creating", "verify-x: Creating -> Pending after 5 s",
                    "verify-x: Pending -> Running after 19 s", "verify-x: Running -> Completed after 42 s"]
    assert watched.time_in(Phase.PENDING) == pytest.approx(18.75)


def test_a_long_phase_says_it_is_still_going_about_once_a_minute() -> None:
    clock, said = Clock(), list[str]()
    watch(Jobs([*[Phase.PENDING] * 12, Phase.COMPLETED]), state(Phase.PENDING), timeout=7200, say=said.append,
          pace=clock.pace)
    still = [line for line in said if "still Pending" in line]
    assert still[0] == "verify-x: still Pending, 66 s so far" and 3 <= len(still) <= 6


def test_status_calls_back_off_to_at_most_twelve_a_minute() -> None:
    clock = Clock()
    watch(Jobs([*[Phase.RUNNING] * 40, Phase.COMPLETED]), state(Phase.RUNNING), timeout=7200, say=lambda _: None,
          pace=clock.pace)
    assert clock.sleeps[:4] == [5.0, 7.5, 11.25, 16.875] and max(clock.sleeps) == 30.0
    assert min(clock.sleeps) >= 5.0  # 60 s / 5 s: 12 calls a minute at most


def test_a_job_past_its_timeout_is_stopped_and_named() -> None:
    clock, jobs = Clock(), Jobs([Phase.PENDING])
    with pytest.raises(PlatformError, match=r"training job verify-x \(job-1\) was still Pending after 60 s "
                                            r"\(--job-timeout\); stopped it \(terminate\)") as caught:
        watch(jobs, state(Phase.PENDING), timeout=60, say=lambda _: None, pace=clock.pace)
    assert jobs.stopped == ["job-1"] and caught.value.exit_code == 7
    assert clock.now <= 61  # the last sleep is cut to the timeout


def test_throttled_or_failing_status_calls_are_asked_again() -> None:
    clock = Clock()
    busy = CloudError("Too Many Requests", operation="show", status=429, code="APIGW.0308")
    down = CloudError("Service Unavailable", operation="show", status=503, code="ModelArts.0001")
    watched = watch(Jobs([busy, down, Phase.COMPLETED]), state(Phase.RUNNING), timeout=600, say=lambda _: None,
                    pace=clock.pace)
    assert watched.state.phase is Phase.COMPLETED and watched.calls == 3


def test_a_refused_status_call_stops_the_job_and_says_why() -> None:
    refused = CloudError("Incorrect IAM authentication information", operation="show", status=401,
                         code="APIGW.0301")
    clock, jobs = Clock(), Jobs([refused])
    with pytest.raises(PlatformError, match=r"could not be read: Incorrect IAM .*\[APIGW.0301\]; stopped it"):
        watch(jobs, state(Phase.RUNNING), timeout=600, say=lambda _: None, pace=clock.pace)
    assert jobs.stopped == ["job-1"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), Interrupted("signal 15")])
def test_ctrl_c_or_sigterm_while_running_stops_the_job(interruption: BaseException) -> None:
    clock, said = Clock(), list[str]()
    jobs = Jobs([Phase.RUNNING, interruption])
    with pytest.raises(type(interruption)):
        watch(jobs, state(Phase.CREATING), timeout=600, say=said.append, pace=clock.pace)
    assert jobs.stopped == ["job-1"] and said[-1] == "verify-x: interrupted while Running: stopped it (terminate)"


def test_a_stop_that_fails_says_so() -> None:
    clock, jobs = Clock(), Jobs([Phase.PENDING], stop_fails=True)
    with pytest.raises(PlatformError, match=r"stopping it failed \(job is not running \[ModelArts.2836\]\): stop it "
                                            "in the console"):
        watch(jobs, state(Phase.PENDING), timeout=10, say=lambda _: None, pace=clock.pace)


def test_sigterm_raises_interrupted_while_watching_and_not_after() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted), sigterm_interrupts():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_an_unknown_phase_is_no_success() -> None:
    assert Phase.read("Exploded") is Phase.ABNORMAL and Phase.read("Running") is Phase.RUNNING
    assert all(not phase.stoppable for phase in Phase if phase.finished)


@pytest.mark.parametrize(("interruption", "code"), [(Interrupted("signal 15"), 143), (KeyboardInterrupt(), 130)])
def test_an_interrupted_task_ends_with_the_signals_code_and_no_traceback(interruption: BaseException,
                                                                         code: int) -> None:
    from invoke.exceptions import Exit

    from modelarts_images.frontend import exits_cleanly

    def task() -> None:
        raise interruption

    with pytest.raises(Exit) as caught:
        exits_cleanly(task)()
    assert caught.value.code == code and "interrupted" in str(caught.value.message)
