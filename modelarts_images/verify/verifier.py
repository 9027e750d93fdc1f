"""Verify one image on an engine: the script on each device, the result checked against the entry, ModelArts'
rules checked on the image; everything lands in the report, a failed check included."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from modelarts_images.engine.api import ContainerOutput, ContainerRun, Engine, GroupEngine, GroupNetwork, ImageConfig
from modelarts_images.errors import EngineError, VerifyError
from modelarts_images.model import X86_64, ImageSpec
from modelarts_images.options import Device, VerifyOptions
from modelarts_images.verify import conformance
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.distributed import Topology, worker_runs
from modelarts_images.verify.report import DeviceRun, Expected, ImageReport, Worker
from modelarts_images.verify.result import VerificationResult, check_against, parse_result
from modelarts_images.verify.runs import npu_host, run_spec
from modelarts_images.verify.stack import check_stack

LOG_TAIL = 40  # lines of a run's output kept in the report
JOB_PREFIX = "modelarts-verify-"  # a distributed run's job name: its network and its workers' names


def _not_started(device: Device, command: tuple[str, ...], error: EngineError,
                 worker: Worker | None = None) -> DeviceRun:
    """A run whose container did not start (no GPU runtime, ...): failed, saying why."""
    return DeviceRun(device=device, command=command, exit_code=None, timed_out=False, seconds=0.0, result=None,
                     outcomes=(CheckOutcome(name="run", ok=False, detail=str(error)),), output_tail=(), worker=worker)


def _judged(image: ImageSpec, device: Device, spec: ContainerRun, output: ContainerOutput, *,
            killed: str) -> DeviceRun:
    """A local container's run judged on its output; `killed`: what a timeout killed."""
    return judge_run(image, device, command=spec.command, log=output.stdout, exit_code=output.exit_code,
                     timed_out=output.timed_out, seconds=output.seconds,
                     shown=output.stdout.rstrip("\n") + "\n" + output.stderr,
                     timeout_detail=f"timed out after {output.seconds:.0f} s; {killed} was killed")


def _run_device(engine: Engine, image: ImageSpec, reference: str, device: Device, options: VerifyOptions,
                gpus: int) -> DeviceRun:
    spec = run_spec(reference, device=device, script_dir=options.script_dir, gpus=gpus, timeout=options.timeout,
                    user=image.user, platform=image.platform if image.arch != X86_64 else None,
                    npu=npu_host() if device is Device.NPU else None)
    try:
        output = engine.run(spec)
    except EngineError as error:
        return _not_started(device, spec.command, error)
    return _judged(image, device, spec, output, killed="the container")


def _run_workers(engine: Engine, image: ImageSpec, reference: str, device: Device, options: VerifyOptions,
                 gpus: int, nodes: int) -> tuple[DeviceRun, ...]:
    """The workers of a distributed run, each judged as a run of its own; a failed start fails every worker."""
    topology = Topology(nodes=nodes, procs_per_node=options.procs_per_node or (gpus if device is Device.GPU else 1),
                        launcher=options.launcher, master_port=options.master_port, timeout=options.timeout,
                        rendezvous_timeout=options.rendezvous_timeout)
    job = f"{JOB_PREFIX}{uuid.uuid4().hex[:8]}"
    planned: list[ContainerRun] = []

    def plan(network: GroupNetwork) -> Sequence[ContainerRun]:
        planned.extend(worker_runs(reference, network, job=job, device=device, topology=topology, user=image.user,
                                   script_dir=options.script_dir))
        return planned

    def worker(index: int) -> Worker:
        return Worker(index=index, nodes=nodes, procs_per_node=topology.procs_per_node,
                      launcher=topology.launcher.value)

    try:
        if not isinstance(engine, GroupEngine):
            raise EngineError(f"{engine.endpoint} cannot run a group of containers on a network of their own")
        outputs = engine.run_group(plan, network=job)
    except EngineError as error:
        command = planned[0].command if planned else ()
        return tuple(_not_started(device, command, error, worker(index)) for index in range(nodes))
    return tuple(replace(_judged(image, device, spec, output, killed="every worker's container"),
                         worker=worker(index))
                 for index, (spec, output) in enumerate(zip(planned, outputs, strict=True)))


def judge_run(image: ImageSpec, device: Device, *, command: tuple[str, ...], log: str, exit_code: int | None,
              timed_out: bool, seconds: float, shown: str, timeout_detail: str = "", no_result: str = "",
              ) -> DeviceRun:
    """A run of the script judged on what it printed (`log`) and how it ended: the result line against the
    entry, then its exit status; the same checks wherever it ran. `shown`: the output whose tail the report
    keeps; `no_result`: why a missing result line may be missing (a log only partly read)."""
    tail = tuple(shown.strip("\n").splitlines()[-LOG_TAIL:])
    outcomes: list[CheckOutcome] = []
    result: VerificationResult | None = None
    if timed_out:
        outcomes.append(CheckOutcome(name="run", ok=False, detail=timeout_detail or "timed out"))
    try:
        result = parse_result(log)
    except VerifyError as error:
        outcomes.append(CheckOutcome(name="result-line", ok=False,
                                     detail=f"exit status {exit_code}; {error}{no_result}"))
    if result is not None:
        outcomes += check_against(result, image, device)
        outcomes.append(CheckOutcome(name="exit-status", ok=exit_code == 0,
                                     detail=f"{command[0]} exited with {exit_code}"))
    return DeviceRun(device=device, command=command, exit_code=exit_code, timed_out=timed_out,
                     seconds=round(seconds, 3), result=result, outcomes=tuple(outcomes), output_tail=tail)


def _boot_of(runs: Sequence[DeviceRun], image: ImageSpec) -> conformance.BootFacts:
    """How the boot command's python started: from the first run that reported it (the CPU's when there is one)."""
    for run in runs:
        if run.result is not None:
            return conformance.judge_boot(run.result, user=image.user)
    why = "; ".join(f"{run.device.value}: {outcome.detail}" for run in runs for outcome in run.outcomes
                    if not outcome.ok) or "no run"
    return conformance.judge_boot(None, why=why, user=image.user)


def base_image_of(config: ImageConfig, image: ImageSpec) -> str:
    """The base the image was built from: its OCI base-name label (what the build used), else the entry's."""
    return config.label("org.opencontainers.image.base.name") or image.base_image


def verify_image(engine: Engine, image: ImageSpec, *, options: VerifyOptions, reference: str | None = None,
                 devices: Sequence[Device] = (Device.CPU,), skipped: Sequence[str] = (), gpus: int = 1,
                 check_conformance: bool = True) -> ImageReport:
    """Run the verification script in `reference` (default: the entry's reference) on each device, check the
    results against the entry and the image against ModelArts' rules. Failed checks are in the report;
    VerifyError only when the image is not there at all."""
    reference = reference or image.reference
    config = engine.image(reference)
    if config is None:
        raise VerifyError(f"{image.id}: image {reference} is not in the engine; build it first (inv build "
                          f"--only {image.id}) or pass --image")
    # The device runs, the conformance probes and the stack's checks are containers of their own that depend on
    # nothing but the image: they all start at once. How the boot command's python started is judged on what the
    # device runs reported.
    with ThreadPoolExecutor(max_workers=len(devices) + 2) as pool:
        nodes = options.nodes or image.nodes
        running = [pool.submit(_run_workers, engine, image, reference, device, options, gpus, nodes) if nodes > 1
                   else pool.submit(lambda device: (_run_device(engine, image, reference, device, options, gpus),),
                                    device)
                   for device in devices]
        gathering = pool.submit(conformance.gather, engine, config, base_image=base_image_of(config, image),
                                timeout=options.timeout, user=image.user) if check_conformance else None
        stacking = pool.submit(check_stack, engine, image, reference, timeout=options.timeout) \
            if check_conformance else None
    runs = tuple(run for future in running for run in future.result())
    checks: tuple[CheckOutcome, ...] = ()
    if gathering is not None:
        checks = tuple(conformance.evaluate(gathering.result(), boot=_boot_of(runs, image),
                                            size_budget=options.size_budget, user=image.user, npu=image.is_npu))
    stack = stacking.result() if stacking is not None else ()
    return ImageReport(id=image.id, reference=reference, expected=Expected.of(image), image_id=config.image_id,
                       size=config.size, runs=runs, skipped=tuple(skipped), conformance=checks, stack=stack)
