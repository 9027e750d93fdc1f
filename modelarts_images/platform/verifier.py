"""Verify one image as ModelArts runs it: for each device a training job of the image in SWR, on a flavour the
region offers, with the verification script uploaded to OBS, watched to its end, its log judged with the same
checks as a local run, and the same report written (with `"platform": "modelarts"` and each run's job)."""

from __future__ import annotations

import functools
import itertools
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from modelarts_images.cloud.api import CloudError, CodeStore, Flavor, JobState, Keys, ModelArts, Phase
from modelarts_images.contract import LAUNCHER_SCRIPT, REQUIRE_GPU, REQUIRE_NPU, SCRIPT_NAME
from modelarts_images.declared import Launcher
from modelarts_images.errors import ConfigError, PlatformError
from modelarts_images.model import ImageSpec
from modelarts_images.options import Device, DeviceChoice, PlatformOptions, VerifyOptions
from modelarts_images.platform import code, flavors
from modelarts_images.platform.watch import REAL_TIME, Pace, Watched, watch
from modelarts_images.publish import swr
from modelarts_images.publish.trainingjob import training_job_body
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.distributed import Topology, platform_command
from modelarts_images.verify.report import DeviceRun, Expected, ImageReport, PlatformJob, Worker
from modelarts_images.verify.verifier import judge_run

T = TypeVar("T")
_NAME = re.compile(r"[^A-Za-z0-9_-]+")
# Where a job can be found in the console; the v2 console has no documented per-job link, so the region's list.
CONSOLE = "https://console.huaweicloud.com/modelarts/?region={region}#/trainingJobs"


@dataclass(frozen=True, kw_only=True)
class Target:
    """The image a job runs: as the job names it (by tag, the form ModelArts documents) and the digest it must
    still be (checked through the registry before a job is created)."""

    image: ImageSpec
    image_url: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class PlannedJob:
    device: Device
    flavor: Flavor
    upload: code.CodeUpload
    body: Mapping[str, Any]
    shape: Worker | None = None  # a distributed job's shape (index 0 stands for each worker); None: one node

    @property
    def where(self) -> str:
        """The flavour, and the nodes of a distributed job."""
        return self.flavor.id + (f" × {self.shape.nodes} nodes" if self.shape is not None else "")

    def described(self) -> str:
        keys = "\n".join(f"  obs://{self.upload.bucket}/{key}" for key in self.upload.object_keys())
        return (f"{self.body['metadata']['name']}: {self.device} on {self.flavor.described}\ncode:\n{keys}\n"
                f"request body (POST /v2/{{project_id}}/training-jobs):\n{json.dumps(self.body, indent=2)}")


def keys_from(env: Mapping[str, str]) -> Keys:
    """The AK/SK (and a temporary key's token) from the variables the SWR login reads; PlatformError naming them
    when none is set."""
    for access, secret, token in swr.AK_SK_SOURCES:
        ak, sk = env.get(access, "").strip(), env.get(secret, "")
        if ak and sk:
            return Keys(access_key=ak, secret_key=sk, security_token=env.get(token) or None)
        if ak or sk:
            raise PlatformError(f"{access if sk else secret} is not set but {secret if sk else access} is: set both")
    names = " or ".join(f"{access}/{secret}" for access, secret, _ in swr.AK_SK_SOURCES)
    raise PlatformError(f"verification on ModelArts needs an access key: set {names} (the same keys as the SWR "
                        "login; a temporary key's token in HUAWEICLOUD_SDK_SECURITY_TOKEN)")


def region_for(image: ImageSpec, options: PlatformOptions) -> str:
    region = options.region or swr.region_of(image.registry)
    if not region:
        raise ConfigError(f"{image.id}: the registry {image.registry} is not an SWR host that names its region: give "
                          "--region (the jobs run in the image's region)")
    return region


def devices_for(image: ImageSpec, choice: DeviceChoice) -> tuple[Device, ...]:
    """--device on the platform: auto is the entry's own (a CUDA entry on a GPU flavour), both is two jobs."""
    if choice is DeviceChoice.BOTH:
        return Device.CPU, Device.GPU
    if choice is DeviceChoice.AUTO:
        return (Device.NPU,) if image.is_npu else (Device.CPU,) if image.is_cpu else (Device.GPU,)
    return (Device(choice.value),)


def job_name(image: ImageSpec, device: Device, token: str) -> str:
    """Unique per run (1-64 of letters, digits, _ and -): the image id, the device, a random token."""
    tail = f"-{device}-{token}"
    return (_NAME.sub("-", f"verify-{image.id}").strip("-")[:64 - len(tail)] + tail).lstrip("-")


def plan_jobs(target: Target, devices: Sequence[Device], *, api: ModelArts, options: PlatformOptions,
              region: str, script_dir: Path, token: str | None = None,
              verify: VerifyOptions | None = None) -> tuple[PlannedJob, ...]:
    """Each device's job: its flavour (asked of the region), the code's OBS keys and the request body; a job of
    `verify.nodes` (else the entry's verify.nodes) nodes when that is more than one, started as the local
    distributed verification starts its workers."""
    if not options.obs_dir:
        raise ConfigError("verification on ModelArts needs an OBS folder for the jobs' code: give --obs-dir "
                          "obs://<bucket>/<folder>/ or set modelarts.obs_dir in invoke.yaml (a bucket in "
                          f"{region})")
    obs_dir = code.ObsDir.parse(options.obs_dir)
    upload = code.plan_upload(obs_dir, target.image.id, code.job_code(script_dir, target.image.stack.checks))
    token = token or secrets.token_hex(3)
    nodes = (verify.nodes if verify is not None else None) or target.image.nodes
    planned = []
    for device in devices:
        kind = flavors.flavor_type(device)
        offered = _asked(functools.partial(api.flavors, kind), what="list the training-job flavours", region=region)
        flavor = flavors.choose(offered, device=device, arch=target.image.arch, wanted=options.flavor, region=region,
                                nodes=nodes)
        gpu = device is Device.GPU
        topology = None if nodes == 1 else _topology(verify or VerifyOptions(reports_dir=Path()), nodes=nodes,
                                                     flavor=flavor, gpu=gpu, timeout=options.job_timeout)
        body = training_job_body(target.image, digest=target.digest, flavor_id=flavor.id, code_dir=upload.code_dir,
                                 gpu=gpu, npu=device is Device.NPU, image_url=target.image_url,
                                 name=job_name(target.image, device, token),
                                 node_count=nodes, command=None if topology is None else platform_command(
                                     target.image.user, topology, gpu=gpu))
        shape = None if topology is None else Worker(index=0, nodes=nodes, procs_per_node=topology.procs_per_node,
                                                     launcher=topology.launcher.value)
        planned.append(PlannedJob(device=device, flavor=flavor, upload=upload, body=body, shape=shape))
    return tuple(planned)


def _topology(verify: VerifyOptions, *, nodes: int, flavor: Flavor, gpu: bool, timeout: float) -> Topology:
    """A distributed job's: a process per GPU of the flavour (or --procs-per-node), one on a CPU flavour."""
    return Topology(nodes=nodes, procs_per_node=verify.procs_per_node or (max(flavor.accelerators, 1) if gpu else 1),
                    launcher=verify.launcher, master_port=verify.master_port, timeout=timeout,
                    rendezvous_timeout=verify.rendezvous_timeout)


def shape_of(job: JobState) -> Worker | None:
    """The shape of a job read back (--job): its tasks are its nodes, and its command says how each started."""
    if len(job.tasks) < 2:
        return None
    words = job.command.split()
    procs = next((int(after) for before, after in itertools.pairwise(words)
                  if before == "--procs-per-node" and after.isdigit()), 1)
    launcher = Launcher.TORCHRUN if any(word.endswith("/" + LAUNCHER_SCRIPT) for word in words) else Launcher.BOOT
    return Worker(index=0, nodes=len(job.tasks), procs_per_node=procs, launcher=launcher.value)


def _asked(call: Callable[[], T], *, what: str, region: str) -> T:
    try:
        return call()
    except CloudError as error:
        raise PlatformError(f"ModelArts in {region}: could not {what}: {error} [{error.code}]{advice(error)}") from None


def advice(error: CloudError) -> str:
    """What to do about a refusal, by the platform's code where it is known, else by its status and words."""
    text = str(error).lower()
    if error.code == "APIGW.0301" or error.status == 401:
        return "; the access key or secret key is wrong, or the temporary key expired"
    if error.status == 403:
        return ("; the keys' IAM user lacks ModelArts rights (modelarts:trainJob:create and :get), or ModelArts is not "
                "authorised to read OBS (ModelArts > Global Configuration) or SWR")
    if "quota" in text:
        return "; the account's ModelArts quota is used up: stop other jobs or ask for a larger quota"
    if "sold out" in text or "insufficient" in text or ("resource" in text and "not enough" in text):
        return "; the flavour is sold out in this region now: try another with --flavor, or later"
    if "image" in text and ("not exist" in text or "not found" in text or "pull" in text or "permission" in text):
        return "; ModelArts cannot read the image in SWR: check that it was pushed, and the keys' SWR read rights"
    if "region" in text or "project" in text:
        return "; check --region and --project-id: the project must belong to the jobs' region"
    if error.transient:
        return "; the service is busy or failing: try again later"
    return ""


def run_job(planned: PlannedJob, *, target: Target, api: ModelArts, options: PlatformOptions, region: str,
            say: Callable[[str], None], pace: Pace = REAL_TIME) -> tuple[DeviceRun, ...] | JobState:
    """Create the job (its code is on OBS already), watch it and judge its log; with --detach, the created job's
    state."""
    created = _asked(lambda: api.create(planned.body), what=f"create the training job for {target.image.id}",
                     region=region)
    say(f"{target.image.id}: training job {created.name} ({created.id}) on {planned.where}")
    if options.detach:
        return created
    return read_job(created, planned.device, flavor=planned.flavor.id, target=target, api=api, options=options,
                    region=region, say=say, pace=pace, shape=planned.shape)


def read_job(created: JobState, device: Device, *, flavor: str, target: Target, api: ModelArts,
             options: PlatformOptions, region: str, say: Callable[[str], None], pace: Pace = REAL_TIME,
             shape: Worker | None = None) -> tuple[DeviceRun, ...]:
    """Watch a job to its end and judge what each of its tasks printed: one run, or a run per worker of a
    distributed job (`shape`)."""
    watched = watch(api, created, timeout=options.job_timeout, say=say, pace=pace)
    if shape is None:
        return (judged(watched, device, flavor=flavor, target=target, api=api, region=region),)
    tasks = watched.state.tasks or tuple(f"worker-{index}" for index in range(shape.nodes))
    command = tuple(watched.state.command.split()) or None
    return tuple(replace(judged(watched, device, flavor=flavor, target=target, api=api, region=region, task=task,
                                command=command), worker=replace(shape, index=index))
                 for index, task in enumerate(tasks))


def judged(watched: Watched, device: Device, *, flavor: str, target: Target, api: ModelArts,
           region: str, task: str | None = None, command: tuple[str, ...] | None = None) -> DeviceRun:
    """What one task printed, judged as a local run is; `task`: the first by default."""
    state = watched.state
    task = task or (state.tasks[0] if state.tasks else "worker-0")
    status = state.task_status(task)
    exit_code = status.exit_code if status is not None else None
    preview = _asked(lambda: api.log_preview(state.id, task), what=f"read the log of {state.name} ({task})",
                     region=region)
    user = target.image.user
    command = command or (user.boot_python, f"{user.code_dir}/{SCRIPT_NAME}",
                          *((REQUIRE_GPU,) if device is Device.GPU else (REQUIRE_NPU,) if device is Device.NPU else ()))
    partial = (f" (the log preview holds its newest {preview.current_size} of {preview.full_size} bytes)"
               if preview.truncated else "")
    phase_note = "" if state.phase is Phase.COMPLETED else (
        f"; the job ended {state.phase}" + (f": {status.message}" if status is not None and status.message else ""))
    run = judge_run(target.image, device, command=command, log=preview.content, exit_code=exit_code,
                    timed_out=False, seconds=watched.time_in(Phase.RUNNING), shown=preview.content,
                    no_result=partial + phase_note)
    job = PlatformJob(job_id=state.id, name=state.name, region=region, flavor=flavor, phase=str(state.phase),
                      exit_code=exit_code, message=status.message if status is not None else "",
                      queued=round(watched.time_in(Phase.CREATING) + watched.time_in(Phase.PENDING), 3),
                      ran=round(watched.time_in(Phase.RUNNING), 3), console_url=CONSOLE.format(region=region),
                      log_bytes=(preview.current_size, preview.full_size))
    outcomes = run.outcomes
    if state.phase is not Phase.COMPLETED:
        outcomes = (*outcomes, CheckOutcome(name="job", ok=False, detail=f"training job {state.name} ({state.id}) "
                                            f"ended {state.phase}, task {task} exit code {exit_code}"
                                            + (f": {status.message}" if status and status.message else "")))
    return DeviceRun(device=run.device, command=run.command, exit_code=run.exit_code, timed_out=run.timed_out,
                     seconds=run.seconds, result=run.result, outcomes=outcomes, output_tail=run.output_tail, job=job)


def report_of(target: Target, runs: Sequence[DeviceRun]) -> ImageReport:
    return ImageReport(id=target.image.id, reference=target.image_url, expected=Expected.of(target.image),
                       image_id=target.digest, size=0, runs=tuple(runs), skipped=(), conformance=(),
                       platform="modelarts")


def verify_on_modelarts(target: Target, *, api: ModelArts, store: CodeStore, options: PlatformOptions,
                        devices: Sequence[Device], region: str, script_dir: Path, say: Callable[[str], None],
                        pace: Pace = REAL_TIME, verify: VerifyOptions | None = None) -> ImageReport | None:
    """The image's report from a job per device (or from the job --job names), a run per worker of a distributed
    job; None when nothing was judged: --dry-run (the jobs are shown) or --detach (they were created and named).
    `verify`: the distributed settings (--nodes, --procs-per-node, --launcher, --master-port,
    --rendezvous-timeout)."""
    if options.job:
        attached = _asked(lambda: api.job(str(options.job)), what=f"read training job {options.job}", region=region)
        words = attached.command.split()
        device = Device.GPU if REQUIRE_GPU in words else Device.NPU if REQUIRE_NPU in words else devices[0]
        runs = read_job(attached, device, flavor=attached.flavor or options.flavor or "", target=target, api=api,
                        options=options, region=region, say=say, pace=pace, shape=shape_of(attached))
        return report_of(target, runs)
    planned = plan_jobs(target, devices, api=api, options=options, region=region, script_dir=script_dir,
                        verify=verify)
    if options.dry_run:
        for job in planned:
            say(job.described())
        return None
    # Each job is billed for as long as it queues and runs: say so before the first is created.
    say(f"{target.image.id}: creating {len(planned)} billed training job(s) on ModelArts in {region}: "
        + ", ".join(f"{job.device} on {job.where}" for job in planned))
    # every device's job reads the same code: it is uploaded once
    sent = code.upload(store, planned[0].upload, region=region)
    say(f"{target.image.id}: code at obs://{sent.bucket}/{sent.folder} ({len(sent.sent)} of {len(sent.files)} "
        "files sent)")
    done = [run_job(job, target=target, api=api, options=options, region=region, say=say, pace=pace)
            for job in planned]
    judged_runs = [run for item in done if not isinstance(item, JobState) for run in item]
    if any(isinstance(item, JobState) for item in done):  # --detach
        for item in done:
            if isinstance(item, JobState):
                say(f"{target.image.id}: created {item.name} ({item.id}); read it later with "
                    f"inv verify --on modelarts --only {target.image.id} --job {item.id}")
        return None
    return report_of(target, judged_runs)
