"""The pipeline: check the bases → fetch → build → verify → push, each step over the resolved options.

Both front ends (tasks.py, one task per step; the matrix, every step per cell) call these and nothing below
them. Each step returns a typed record and raises its stage's error: a failure of a layer it uses (the engine,
a file it writes) becomes that stage's error here, so the exit code always says which stage failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelarts_images.build import builder
from modelarts_images.engine.api import Engine
from modelarts_images.errors import (
    BuildError,
    ConfigError,
    EngineError,
    FetchError,
    ModelArtsImagesError,
    RegistryError,
    VerifyError,
    WriteError,
)
from modelarts_images.fetch import fetcher as fetching
from modelarts_images.inputs import INPUTS_LABEL, Steps, cell_inputs, image_hash, tree_digest
from modelarts_images.model import FetchedImage, ImageSpec
from modelarts_images.options import BuildOptions, DeviceChoice, FetchOptions, Options, PushOptions, VerifyOptions
from modelarts_images.paths import CONTEXT_TEMPLATE
from modelarts_images.publish import publisher, trainingjob
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.progress import ProgressCallback
from modelarts_images.verify import report as verify_report
from modelarts_images.verify import runs, verifier
from modelarts_images.verify.manifest import Manifest, capture_manifest


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
        gpu = engine.gpu_support(reference) if options.device is DeviceChoice.AUTO else None
        devices, skipped = runs.resolve_devices(options.device, gpu)
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
