"""The pipeline, declared once: STEPS lists the steps in the order they run, with what each needs and gives.

check the bases → fetch → build → verify → push, with the matrix's own steps in their places (is the cell's
tag in the registry unchanged, the package manifest, the training-job body). Both front ends (tasks.py, one
task per step or chain; the matrix, every step per cell) say which steps they want and call execute(), which
runs them in this order and never another; neither imports a stage module. Adding a step is one entry in
STEPS (and its name in StepName). Each step raises its stage's error: a failure of a layer it uses (the engine,
a file it writes) becomes that stage's error here, so the exit code always says which stage failed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelarts_images.build import builder
from modelarts_images.build.builder import BuildResult, RegistryCache, build_command_preview, format_result
from modelarts_images.cloud.api import CodeStore, Keys, ModelArts
from modelarts_images.cloud.sdk import Endpoints, SdkModelArts, SdkObs
from modelarts_images.declared import StepName
from modelarts_images.engine.api import Engine
from modelarts_images.errors import (
    BuildError,
    ConfigError,
    EngineError,
    FetchError,
    ModelArtsImagesError,
    PlatformError,
    RegistryError,
    VerifyError,
    WriteError,
)
from modelarts_images.fetch import fetcher as fetching
from modelarts_images.fetch.fetcher import format_fetched
from modelarts_images.inputs import INPUTS_LABEL, Steps, cell_inputs, image_hash, tree_digest
from modelarts_images.model import FetchedImage, ImageSpec
from modelarts_images.options import (
    BuildOptions,
    DeviceChoice,
    FetchOptions,
    Options,
    PlatformOptions,
    PushOptions,
    VerifyOptions,
)
from modelarts_images.paths import CONTEXT_TEMPLATE
from modelarts_images.platform import verifier as platform
from modelarts_images.platform.watch import REAL_TIME, Pace, sigterm_interrupts
from modelarts_images.publish import publisher, swr, trainingjob
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.files import check_writable
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.verify import report as verify_report
from modelarts_images.verify import runs, verifier
from modelarts_images.verify.manifest import Manifest, capture_manifest
from modelarts_images.verify.report import format_report, raise_for_reports

# What the front ends print and give, re-exported so that they import no stage module.
__all__ = ["RegistryCache", "format_report", "raise_for_reports"]


@contextlib.contextmanager
def stage(error: type[ModelArtsImagesError]) -> Iterator[None]:
    """Failures of the engine or of a file write inside a step, as the step's own error (same message)."""
    try:
        yield
    except (EngineError, WriteError) as failure:
        raise error(str(failure)) from failure


def connect(error: type[ModelArtsImagesError]) -> Engine:
    """The engine of DOCKER_HOST or the current docker context; none answering is an error of the stage that
    needed one (build 4, verify 5, registry 6)."""
    from modelarts_images.engine.adapter import connect as connect_docker  # the docker SDK, only when needed

    with stage(error):
        return connect_docker()


# --------------------------------------------------------------------------------------------------------------
# fetch


@dataclass(frozen=True, kw_only=True)
class Fetched:
    images: tuple[FetchedImage, ...]
    summary: fetching.FetchSummary


def fetch_step(images: Sequence[ImageSpec], options: FetchOptions, *,
               progress: ProgressCallback | None = None) -> Fetched:
    """Every artifact of the images in the cache, verified; versions.lock kept current."""
    with stage(FetchError):
        fetched, summary = fetching.fetch_images(images, options, progress=progress)
    return Fetched(images=tuple(fetched), summary=summary)


def planned_step(image: ImageSpec, options: FetchOptions) -> FetchedImage | None:
    """What fetching the image would give, from versions.lock alone (nothing downloaded), or None when the lock
    does not pin all of it: a cell's inputs, known before gigabytes are fetched."""
    with stage(FetchError):
        return fetching.locked_plan(image, options)


# --------------------------------------------------------------------------------------------------------------
# build


def check_bases_step(images: Sequence[ImageSpec], options: BuildOptions, engine: Engine) -> None:
    """Before any download: every base image is in the engine or in a registry that answers."""
    with stage(BuildError):
        builder.check_bases(images, options, engine)


def image_inputs(fetched: FetchedImage, options: Options, *, template_dir: Path = CONTEXT_TEMPLATE) -> dict[str, str]:
    """What decides the image and its verification, each hashed on its own, as the matrix hashes a cell: its
    hash labels the image, so a cell finds it unchanged in the registry whichever front end built it."""
    steps = Steps(build=options.build, device=options.verify.device, push=False)
    return cell_inputs(fetched, steps, context_digest=tree_digest(template_dir),
                       verify_digest=tree_digest(options.verify.script_dir))


def build_step(fetched: FetchedImage, options: BuildOptions, engine: Engine, *,
               inputs: Mapping[str, str] | None = None, cache: builder.RegistryCache | None = None,
               ) -> builder.BuildResult:
    """Build and tag one fetched image (its base checked by check_bases_step), labelled with the hash of its
    inputs (image_inputs; both front ends give them)."""
    labels = () if inputs is None else ((INPUTS_LABEL, image_hash(inputs)),)
    with stage(BuildError):
        return builder.build_image(fetched, options, engine, labels=labels, cache=cache)


# --------------------------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True, kw_only=True)
class Verified:
    report: verify_report.ImageReport
    path: Path  # where the report was saved


def verify_step(image: ImageSpec, options: VerifyOptions, engine: Engine, *, reference: str | None = None,
                ) -> Verified:
    """Run the verification script in the image as ModelArts would, on the devices asked for, check the image
    against ModelArts' rules, and save the report. A failed check is in the report, not raised."""
    with stage(VerifyError):
        reference = reference or image.reference
        auto = options.device is DeviceChoice.AUTO
        gpu = engine.gpu_support(reference) if auto and not image.is_npu else None
        npu = runs.npu_host() if image.is_npu or options.device is DeviceChoice.NPU else None
        devices, skipped = runs.resolve_devices(options.device, gpu, npu_image=image.is_npu, npu=npu)
        report = verifier.verify_image(engine, image, reference=reference, devices=devices, skipped=skipped,
                                       options=options)
        return Verified(report=report, path=verify_report.save_report(report, options.reports_dir))


def manifest_step(image: ImageSpec, options: VerifyOptions, engine: Engine) -> Manifest:
    """The image's package manifest; a failure to read it is recorded in it, never raised."""
    return capture_manifest(engine, image.reference, timeout=options.timeout, user=image.user)


# --------------------------------------------------------------------------------------------------------------
# push


def login_step(registry: str, options: PushOptions, engine: Engine, env: Mapping[str, str]) -> publisher.LoginResult:
    """Check that the registry accepts the credentials the environment gives for it."""
    with stage(RegistryError):
        return publisher.login(registry, engine=engine, env=env, region=options.region, project=options.project)


def push_step(images: Sequence[ImageSpec], options: PushOptions, engine: Engine, env: Mapping[str, str], *,
              progress: ProgressCallback | None = None) -> list[publisher.PushRecord]:
    """Push each image with the tag guard, confirm it over the registry's API, and record it."""
    with stage(RegistryError):
        return publisher.push_images(images, options, engine=engine, env=env, progress=progress)


def credentials_step(registry: str, options: PushOptions, engine: Engine, env: Mapping[str, str],
                     ) -> Credentials | None:
    """The login the environment (or, when allowed, the docker config) gives for a registry, if any."""
    with stage(RegistryError):
        return publisher.options_credentials(registry, options, engine=engine, env=env)


def remote_image_step(image: ImageSpec, options: PushOptions, credentials: Credentials | None,
                      ) -> publisher.RemoteImage | None:
    """The entry's tag in its registry with its image config's labels, read over the registry's API."""
    with stage(RegistryError):
        return publisher.remote_image(image, options, credentials=credentials)


def training_job_step(image: ImageSpec, digest: str, *, flavor_id: str | None, reports_dir: Path) -> Path:
    """The training-job body that runs the verification script in the pushed image on ModelArts, saved."""
    body = trainingjob.training_job_body(image, digest=digest, flavor_id=flavor_id)
    with stage(ConfigError):  # the reports directory is a setting
        return trainingjob.write_body(reports_dir, image.id, body)


def build_preview(images: Sequence[ImageSpec], options: BuildOptions) -> str:
    """Each image's build command (`inv build --dry-run`)."""
    return "\n".join(f"# {image.id}\n{build_command_preview(image, options)}" for image in images)


# --------------------------------------------------------------------------------------------------------------
# the declaration


class Stop(Exception):  # noqa: N818 - not an error: a front end's word that the run has done what it needed
    """Raised by a front end's `show` to end a run before its remaining steps (the matrix's unchanged cell)."""


@dataclass(frozen=True, kw_only=True)
class InRegistry:
    """What the registry says of an image before anything is fetched (the matrix's registry step)."""

    image: ImageSpec
    inputs: Mapping[str, str] | None  # from versions.lock; None when it does not pin all of the image
    remote: publisher.RemoteImage | None = None  # the image's tag there, if any
    problem: str | None = None  # why the registry could not say

    @property
    def unchanged(self) -> bool:
        """The tag there carries the hash of the inputs the image has now."""
        return (self.inputs is not None and self.remote is not None
                and self.remote.labels.get(INPUTS_LABEL) == image_hash(self.inputs))


@dataclass(frozen=True, kw_only=True)
class TrainingJob:
    image: ImageSpec
    body: Path  # where the training-job body was saved


def _no_cache(image: ImageSpec) -> RegistryCache | None:
    return None


def sdk_cloud(keys: Keys, region: str, options: PlatformOptions) -> tuple[ModelArts, CodeStore]:
    """ModelArts and OBS of the region through Huawei's SDKs, at the endpoints invoke.yaml sets, if any."""
    endpoints = Endpoints.of(region, modelarts=options.modelarts_endpoint, obs=options.obs_endpoint,
                             iam=options.iam_endpoint)
    return (SdkModelArts(keys, region=region, project_id=options.project_id, endpoints=endpoints),
            SdkObs(keys, endpoint=endpoints.obs))


def _nothing(step: StepName, item: object) -> None:
    return None


def _no_progress(step: StepName) -> AbstractContextManager[ProgressCallback | None]:
    return nullcontext(None)


@dataclass(kw_only=True)
class Run:
    """One execution of the pipeline: what the front end gives (above), and what the steps give (below)."""

    options: Options
    images: tuple[ImageSpec, ...]
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    # The engine, connected on first use, a failure to connect being the error of the step that needed it.
    connect: Callable[[type[ModelArtsImagesError]], Engine] = connect
    show: Callable[[StepName, Any], None] = _nothing  # each thing a step finished, as it finishes it
    starting: Callable[[StepName], None] = lambda step: None
    progress: Callable[[StepName], AbstractContextManager[ProgressCallback | None]] = _no_progress
    # What decides an image (its label); the matrix adds its push steps to the hash it keeps.
    inputs: Callable[[FetchedImage], Mapping[str, str]] | None = None
    cache: Callable[[ImageSpec], RegistryCache | None] = _no_cache  # BuildKit's registry cache for a build
    credentials: Callable[[str], Credentials | None] | None = None  # a registry's login (the registry step)
    reference: str | None = None  # verify this reference instead of the image's own (inv verify --image)
    registries: tuple[str, ...] = ()  # to log in to (default: the images')
    flavor_id: str | None = None  # the training-job bodies' flavour
    say: Callable[[str], None] = print  # a step's progress in words (a platform job's phases)
    # ModelArts and OBS for a region (the platform step), and how its watch waits
    cloud: Callable[[Keys, str, PlatformOptions], tuple[ModelArts, CodeStore]] = sdk_cloud
    pace: Pace = REAL_TIME
    # With the platform verification before the release (the matrix's --push --on modelarts): the image under the
    # tag it is pushed and verified as; the release step then gives it the entry's own tag.
    staged: Callable[[ImageSpec], ImageSpec] | None = None
    # given by the steps
    in_registry: tuple[InRegistry, ...] = ()
    fetched: tuple[FetchedImage, ...] = ()
    built: tuple[BuildResult, ...] = ()
    verified: tuple[Verified, ...] = ()
    manifests: tuple[Manifest, ...] = ()
    logins: tuple[tuple[str, publisher.LoginResult], ...] = ()
    pushed: tuple[publisher.PushRecord, ...] = ()
    training_jobs: tuple[TrainingJob, ...] = ()
    released: tuple[publisher.Released, ...] = ()
    stopped_at: StepName | None = None  # the step whose `show` raised Stop
    running: Step | None = field(default=None, repr=False)  # set by execute()
    _engines: dict[str, Engine] = field(default_factory=dict, repr=False)

    def published(self, image: ImageSpec) -> ImageSpec:
        """The image as it is pushed and verified on the platform: under its staging tag, if it has one."""
        return self.staged(image) if self.staged is not None else image

    def engine(self) -> Engine:
        """The engine, connected when a step first needs it: no engine is that step's error."""
        if "engine" not in self._engines:
            self._engines["engine"] = self.connect(self.running.error if self.running else ModelArtsImagesError)
        return self._engines["engine"]

    def image_inputs(self, fetched: FetchedImage) -> Mapping[str, str]:
        return self.inputs(fetched) if self.inputs is not None else image_inputs(fetched, self.options)


# What the front end gives a Run; every other field a step needs must be given by a step before it.
GIVEN = frozenset({"options", "images", "env", "connect", "inputs", "cache", "credentials", "reference",
                   "registries", "flavor_id", "say", "cloud", "pace", "staged"})


@dataclass(frozen=True, kw_only=True)
class Step:
    name: StepName
    body: Callable[[Run], tuple[Any, ...] | None]  # what it gives, or None
    needs: tuple[str, ...]  # the Run fields it reads
    gives: str | None  # the Run field its result fills
    error: type[ModelArtsImagesError]  # its stage's error (the exit code): a failed engine or write becomes it
    text: Callable[[Any], str] | None = None  # how a front end prints each thing it finished


def _each(run: Run, step: StepName, items: Iterable[Any]) -> tuple[Any, ...]:
    done = []
    for item in items:
        done.append(item)
        run.show(step, item)
    return tuple(done)


def _in_registry(run: Run) -> tuple[InRegistry, ...]:
    def ask(image: ImageSpec) -> InRegistry:
        planned = planned_step(image, run.options.fetch)
        if planned is None:
            return InRegistry(image=image, inputs=None)
        inputs = run.image_inputs(planned)
        try:
            credentials = run.credentials(image.registry) if run.credentials else None
            remote = remote_image_step(image, run.options.push, credentials)
        except ModelArtsImagesError as error:
            return InRegistry(image=image, inputs=inputs, problem=str(error))
        return InRegistry(image=image, inputs=inputs, remote=remote)

    return _each(run, StepName.REGISTRY, (ask(image) for image in run.images))


def _check_bases(run: Run) -> None:
    check_bases_step(run.images, run.options.build, run.engine())


def _fetch(run: Run) -> tuple[FetchedImage, ...]:
    with run.progress(StepName.FETCH) as progress:
        fetched = fetch_step(run.images, run.options.fetch, progress=progress)
    run.show(StepName.FETCH, fetched)
    return fetched.images


def _build(run: Run) -> tuple[BuildResult, ...]:
    engine = run.engine()
    return _each(run, StepName.BUILD, (
        build_step(item, run.options.build, engine, inputs=run.image_inputs(item), cache=run.cache(item.image))
        for item in run.fetched))


# What sets the verification reports' directory, for the message when it cannot be written.
_VERIFY_REPORTS = "--reports, or modelarts.reports_dir in invoke.yaml"


def _verify(run: Run) -> tuple[Verified, ...]:
    check_writable(run.options.verify.reports_dir, set_by=_VERIFY_REPORTS)  # before any run
    engine = run.engine()
    return _each(run, StepName.VERIFY, (verify_step(image, run.options.verify, engine, reference=run.reference)
                                        for image in run.images))


def _manifest(run: Run) -> tuple[Manifest, ...]:
    engine = run.engine()
    return _each(run, StepName.MANIFEST, (manifest_step(image, run.options.verify, engine) for image in run.images))


def _login(run: Run) -> tuple[tuple[str, publisher.LoginResult], ...]:
    hosts = run.registries or tuple(sorted({image.registry for image in run.images}))
    engine = run.engine()
    return _each(run, StepName.LOGIN, ((host, login_step(host, run.options.push, engine, run.env)) for host in hosts))


def _push(run: Run) -> tuple[publisher.PushRecord, ...]:
    engine = run.engine()
    images = tuple(run.published(image) for image in run.images)
    for image, published in zip(run.images, images, strict=True):
        if published != image:  # the local image, named as it is pushed
            engine.tag(image.reference, swr.Reference.of(published).repository_reference, published.tag)
    with run.progress(StepName.PUSH) as progress:
        records = tuple(push_step(images, run.options.push, engine, run.env, progress=progress))
    run.show(StepName.PUSH, records)
    return records


def _training_jobs(run: Run) -> tuple[TrainingJob, ...]:
    images = {image.id: image for image in run.images}
    return _each(run, StepName.TRAINING_JOB, (
        TrainingJob(image=images[record.id], body=training_job_step(
            images[record.id], record.digest, flavor_id=run.flavor_id, reports_dir=run.options.reports_dir))
        for record in run.pushed if record.digest))


def _registry_credentials(run: Run, image: ImageSpec) -> Credentials | None:
    return swr.resolve_credentials(image.registry, run.env, region=run.options.push.region,
                                   project=run.options.push.project)


def _target(run: Run, image: ImageSpec) -> platform.Target:
    """The image as a job pulls it: its tag, which must still name the digest that was pushed (this run's push,
    else the last push record); RegistryError when the registry cannot say."""
    credentials = _registry_credentials(run, image)
    remote = remote_image_step(image, run.options.push, credentials)
    if remote is None:
        raise PlatformError(f"{image.id}: {image.reference} is not in its registry as one image: push it first "
                            "(inv push), ModelArts runs the image from SWR")
    pushed = next((record.digest for record in run.pushed if record.id == image.id and record.digest), None)
    pushed = pushed or publisher.pushed_digest(run.options.reports_dir, image)
    if pushed is not None and pushed != remote.digest:
        raise PlatformError(f"{image.id}: {image.reference} moved: it names {remote.digest} in the registry, but "
                            f"{pushed} was pushed (and verified); push it again, or verify what the tag names now "
                            "after checking it")
    return platform.Target(image=image, image_url=remote.reference, digest=remote.digest)


def _platform(run: Run) -> tuple[Verified, ...]:
    options = run.options.platform
    check_writable(run.options.verify.reports_dir, set_by=_VERIFY_REPORTS)
    keys = platform.keys_from(run.env)
    done = []
    for image in map(run.published, run.images):
        region = platform.region_for(image, options)
        target = _target(run, image)
        api, store = run.cloud(keys, region, options)
        with sigterm_interrupts():
            report = platform.verify_on_modelarts(
                target, api=api, store=store, options=options, region=region, script_dir=run.options.verify.script_dir,
                devices=platform.devices_for(image, run.options.verify.device), say=run.say, pace=run.pace,
                verify=run.options.verify)
        if report is not None:
            verified = Verified(report=report, path=verify_report.save_report(report, run.options.verify.reports_dir))
            run.show(StepName.PLATFORM, verified)
            done.append(verified)
    return tuple(done)


def _release(run: Run) -> tuple[publisher.Released, ...]:
    passed = {item.report.id for item in run.verified if item.report.platform == "modelarts" and item.report.ok}
    return _each(run, StepName.RELEASE, (
        publisher.release(image, run.published(image), run.options.push,
                          credentials=_registry_credentials(run, image))
        for image in run.images if image.id in passed and run.published(image) != image))


def _say_released(released: publisher.Released) -> str:
    replaced = f" (it named {released.previous})" if released.previous else ""
    return f"{released.id}: released {released.staged} as {released.reference}{replaced}, {released.digest}"


def _say_pushed(records: Sequence[publisher.PushRecord]) -> str:
    return publisher.summary(records)


def _say_verified(verified: Verified) -> str:
    return f"{format_report(verified.report)}\n  result: {verified.path}"


STEPS: tuple[Step, ...] = (
    Step(name=StepName.REGISTRY, body=_in_registry, needs=("images",), gives="in_registry", error=RegistryError),
    Step(name=StepName.CHECK_BASES, body=_check_bases, needs=("images",), gives=None, error=BuildError),
    Step(name=StepName.FETCH, body=_fetch, needs=("images",), gives="fetched", error=FetchError,
         text=lambda fetched: format_fetched(fetched.images, fetched.summary)),
    Step(name=StepName.BUILD, body=_build, needs=("fetched",), gives="built", error=BuildError, text=format_result),
    Step(name=StepName.VERIFY, body=_verify, needs=("images",), gives="verified", error=VerifyError,
         text=_say_verified),
    Step(name=StepName.MANIFEST, body=_manifest, needs=("images",), gives="manifests", error=VerifyError),
    Step(name=StepName.LOGIN, body=_login, needs=("images",), gives="logins", error=RegistryError,
         text=lambda login: f"{login[0]}: login accepted for {login[1].user} ({login[1].source})"),
    Step(name=StepName.PUSH, body=_push, needs=("images",), gives="pushed", error=RegistryError, text=_say_pushed),
    Step(name=StepName.PLATFORM, body=_platform, needs=("images",), gives="verified", error=PlatformError,
         text=_say_verified),
    Step(name=StepName.RELEASE, body=_release, needs=("pushed", "verified"), gives="released", error=RegistryError,
         text=_say_released),
    Step(name=StepName.TRAINING_JOB, body=_training_jobs, needs=("pushed",), gives="training_jobs",
         error=ConfigError),
)
BY_NAME: Mapping[StepName, Step] = {step.name: step for step in STEPS}


def text(step: StepName, item: Any) -> str:
    """A step's finished thing as the front ends print it."""
    render = BY_NAME[step].text
    return render(item) if render is not None else str(item)


def execute(names: Iterable[StepName], run: Run, *, timed: Callable[[StepName, float], None] | None = None) -> Run:
    """Run the named steps in the declared order (whatever order `names` has), each given what the steps before
    it gave; `timed` hears how long each took. A front end's `show` may raise Stop to end the run there."""
    wanted = set(names)
    selected = [step for step in STEPS if step.name in wanted]
    given = set(GIVEN)
    for step in selected:
        missing = [need for need in step.needs if need not in given and not getattr(run, need)]
        if missing:
            raise LookupError(f"step {step.name} needs {', '.join(missing)}, which no step before it gives")
        given.update((step.gives,) if step.gives else ())
    for step in selected:
        run.starting(step.name)
        run.running, started = step, time.monotonic()
        try:
            with stage(step.error):
                result = step.body(run)
        except Stop:
            run.stopped_at = step.name
            return run
        finally:
            run.running = None
            if timed is not None:
                timed(step.name, time.monotonic() - started)
        if step.gives is not None:
            setattr(run, step.gives, result)
    return run
