"""Tasks: `inv --list` shows them; each parses its flags and hands the work to modelarts_images."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from modelarts_images.cli import (
    ROOT,
    SELECTION_HELP,
    exits_cleanly,
    positive_number,
    selected_images,
    tool_settings,
)
from modelarts_images.contract import IMAGE_SIZE_BUDGET, VERIFY_TIMEOUT_S
from modelarts_images.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from modelarts_images.model import FetchedImage, ImageSpec
    from modelarts_images.settings import Settings

# Each task imports the modules it needs when it runs: the docker SDK, requests and rich together take longer to
# import than a no-op rebuild takes to run, and `inv plan` or `inv fetch` need none of the engine's.

FETCH_HELP = {
    **SELECTION_HELP,
    "jobs": "parallel downloads (default: modelarts.jobs in invoke.yaml, 4)",
    "offline": "use the cache only; fail for anything missing",
    "locked": "refuse any artifact versions.lock does not pin (for CI)",
    "verify_cache": "re-hash cached files instead of trusting their recorded size, mtime and inode",
    "no_closure": "skip the dependency wheels; the build then installs them from pip_index",
}


@task(iterable=["only"], help={**SELECTION_HELP, "json": "print the plan as JSON instead of text"})
@exits_cleanly
def plan(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False, json_: bool = False
) -> None:
    """Show what would be built for the selected images: reference, base, artifacts, build arguments."""
    from modelarts_images import plan as planning

    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    plans = [planning.make_plan(image) for image in selected_images(resolved)]
    print(planning.as_json(plans) if json_ else planning.as_text(plans))


def _fetch(resolved: Settings, images: tuple[ImageSpec, ...], *, jobs: str | None, offline: bool, locked: bool,
           verify_cache: bool, no_closure: bool, refresh: bool) -> list[FetchedImage]:
    from modelarts_images import fetch as fetching
    from modelarts_images.progress import for_terminal, human

    options = fetching.FetchOptions(
        cache_dir=resolved.cache_dir,
        lock_path=resolved.selection.versions.with_suffix(".lock"),
        jobs=positive_number("--jobs", jobs, resolved.jobs, int),
        offline=offline,
        locked=locked,
        verify_cache=verify_cache,
        refresh=refresh,
        closure=not no_closure,
        mirrors=resolved.mirrors,
    )
    with for_terminal() as progress:
        fetched, summary = fetching.fetch_images(images, options, progress=progress)
    for image in fetched:
        closure = "no dependency wheels" if image.closure is None else f"{len(image.closure)} dependency wheels"
        print(f"{image.image.id}: installer, {len(image.wheels)} wheels, {closure}")
    print(f"fetched {summary.fetched}, reused {summary.reused}, {human(summary.bytes_transferred)} transferred "
          f"in {summary.seconds:.1f} s")
    if summary.lock_updated:
        print(f"versions.lock: pinned {', '.join(summary.lock_updated)}")
    return fetched


@task(iterable=["only"], help=FETCH_HELP)
@exits_cleanly
def fetch(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    jobs: str | None = None, offline: bool = False, locked: bool = False, verify_cache: bool = False,
    no_closure: bool = False,
) -> None:
    """Download the installer and wheels of the selected images into the cache, sha256-verified."""
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    _fetch(resolved, selected_images(resolved), jobs=jobs, offline=offline, locked=locked,
           verify_cache=verify_cache, no_closure=no_closure, refresh=False)


@task(iterable=["only"], help={key: FETCH_HELP[key] for key in (*SELECTION_HELP, "jobs", "no_closure")})
@exits_cleanly
def lock(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    jobs: str | None = None, no_closure: bool = False,
) -> None:
    """Resolve the selected images again and pin every artifact's sha256 in versions.lock."""
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    _fetch(resolved, selected_images(resolved), jobs=jobs, offline=False, locked=False, verify_cache=False,
           no_closure=no_closure, refresh=True)


BUILD_HELP = {
    **SELECTION_HELP,
    "backend": "docker (docker SDK, classic builder) or buildkit (docker buildx build --load, or DOCKER_BUILDKIT=1 "
               "with a docker CLI older than 23); default: modelarts.backend in invoke.yaml",
    "no_cache": "build every step again instead of reusing the engine's cache",
    "base_image": "use this base image for every selected entry instead of its base_image",
    "base_prefix": "registry prefix for base images that name no registry, e.g. mirror.example.com/library/ "
                   "(default: modelarts.base_prefix in invoke.yaml)",
    "platform": "target platform for the builder, e.g. linux/amd64",
    "dry_run": "print each selected image's build command and exit (nothing is fetched or built)",
    "offline": FETCH_HELP["offline"],
    "locked": FETCH_HELP["locked"],
}


@task(iterable=["only"], help=BUILD_HELP)
@exits_cleanly
def build(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    backend: str | None = None, no_cache: bool = False, base_image: str | None = None,
    base_prefix: str | None = None, platform: str | None = None, dry_run: bool = False,
    offline: bool = False, locked: bool = False,
) -> None:
    """Build the selected images (fetching what the cache lacks first) and tag them with their references."""
    from modelarts_images import build as building

    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_, backend=backend)
    images = selected_images(resolved)
    prefix = base_prefix if base_prefix is not None else resolved.base_prefix or None
    work_dir = ROOT / "build"
    if dry_run:
        for image in images:
            command = building.build_command_preview(
                image, backend=resolved.backend, work_dir=work_dir, no_cache=no_cache, base_image=base_image,
                platform=platform, base_prefix=prefix)
            print(f"# {image.id}\n{command}")
        return
    building.preflight(images, base_image=base_image, base_prefix=prefix)  # before any download
    fetched = _fetch(resolved, images, jobs=None, offline=offline, locked=locked, verify_cache=False,
                     no_closure=False, refresh=False)
    _show_engine_log()
    for item in fetched:
        result = building.build_image(item, backend=resolved.backend, work_dir=work_dir, no_cache=no_cache,
                                      base_image=base_image, platform=platform, base_prefix=prefix)
        print(building.format_result(result))


def _show_engine_log() -> None:
    """Build output is logged by the engine module; show it live on stderr unless logging is set up already."""
    engine_log = logging.getLogger("modelarts_images.engine")
    if not engine_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        engine_log.addHandler(handler)
        engine_log.setLevel(logging.INFO)


LOGIN_HELP = {
    **SELECTION_HELP,
    "registry": "log in to this registry host instead of those of the selected images",
    "region": "SWR region for the AK/SK login when the registry host does not name it (e.g. cn-north-4)",
}
PUSH_HELP = {
    **SELECTION_HELP,
    "force": "replace a tag that already names another image in the registry (tags are immutable otherwise)",
    "extra_tag": "also push under this tag; repeat for several; {tag}, {date} (UTC, YYYYMMDD) and {revision} "
                 "(git, 12 hex digits) are filled in, e.g. --extra-tag '{tag}-{date}' (default: "
                 "modelarts.extra_tags in invoke.yaml)",
    "reports_dir": "directory for the push-<id>.json records (default: modelarts.reports_dir, reports)",
    "region": LOGIN_HELP["region"],
    "dry_run": "check names, credentials and the registry's tags, and say what would be pushed; push nothing",
}


@task(iterable=["only"], help=LOGIN_HELP)
@exits_cleanly
def login(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    registry: str | None = None, region: str | None = None,
) -> None:
    """Check the registry login from the environment (SWR AK/SK, SWR login command, or user/password)."""
    from modelarts_images import engine
    from modelarts_images import publish as publishing

    if registry:
        registries = [registry]
    else:
        resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
        registries = sorted({image.registry for image in selected_images(resolved)})
    client = engine.connect(RegistryError)
    for host in registries:
        result = publishing.login(host, client=client, env=os.environ, region=region)
        print(f"{host}: login accepted for {result.user} ({result.source})")


@task(iterable=["only", "extra_tag"], help=PUSH_HELP)
@exits_cleanly
def push(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    force: bool = False, extra_tag: list[str] | None = None, reports_dir: str | None = None,
    region: str | None = None, dry_run: bool = False,
) -> None:
    """Push the selected images to their registry: SWR name rules, tag guard, login from the environment."""
    from modelarts_images import engine
    from modelarts_images import publish as publishing
    from modelarts_images.progress import for_terminal

    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    images = selected_images(resolved)
    options = publishing.PushOptions(
        reports_dir=ROOT / reports_dir if reports_dir else resolved.reports_dir,
        force=force,
        extra_tags=tuple(extra_tag or resolved.extra_tags),
        revision=publishing.git_revision(ROOT),
        region=region,
        dry_run=dry_run,
    )
    client = engine.connect(RegistryError)
    with for_terminal("push") as progress:
        records = publishing.push_images(images, options, client=client, env=os.environ, progress=progress)
    print(publishing.summary(records))


VERIFY_HELP = {
    **SELECTION_HELP,
    "image": "verify this image reference instead of the entry's own (exactly one entry selected)",
    "device": "cpu, gpu, both, or auto: the GPU when the engine can give one, else the CPU (default: auto)",
    "timeout": "seconds a verification container may run before it is killed (default: 600)",
    "size_budget": "image size budget in GB (10^9 bytes) for the conformance check (default: 9.5, ModelArts' limit)",
    "reports": "directory for the JSON results, one <id>.json per image (default: <reports_dir>/verify)",
}


@task(iterable=["only"], help=VERIFY_HELP)
@exits_cleanly
def verify(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    image: str | None = None, device: str = "auto", timeout: str | None = None, size_budget: str | None = None,
    reports: str | None = None,
) -> None:
    """Run pytorch-verification.py in the selected images as ModelArts does, and check ModelArts' image rules."""
    from modelarts_images import verify as verifying
    from modelarts_images.engine import run as engine_run
    from modelarts_images.files import check_writable

    if device not in verifying.DEVICE_CHOICES:
        raise ConfigError(f"--device: {device!r} is not one of {', '.join(verifying.DEVICE_CHOICES)}")
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    images = selected_images(resolved)
    if image and len(images) != 1:
        raise ConfigError(f"--image: verifies one entry, but {len(images)} are selected; pick one with --only")
    timeout_s = positive_number("--timeout", timeout, VERIFY_TIMEOUT_S, float)
    budget = int(positive_number("--size-budget", size_budget, IMAGE_SIZE_BUDGET / 1e9, float) * 1e9)
    reports_dir = ROOT / reports if reports else resolved.reports_dir / "verify"
    check_writable(reports_dir, set_by="--reports, or modelarts.reports_dir in invoke.yaml")  # before any run
    containers = engine_run.Containers(engine_run.connect(), timeout=timeout_s)
    done = []
    for entry in images:
        reference = image or entry.reference
        gpu = containers.gpu_support(reference) if device == "auto" else None
        devices, skipped = verifying.resolve_devices(device, gpu)
        report = verifying.verify_image(containers, entry, reference=reference, devices=devices, skipped=skipped,
                                        size_budget=budget)
        path = verifying.save_report(report, reports_dir)
        print(verifying.format_report(report))
        print(f"  result: {path}")
        done.append(report)
    verifying.raise_for_reports(done)
