"""Tasks: `inv --list` shows them; each parses its flags, calls the pipeline's steps, and prints."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from modelarts_images.errors import ConfigError
from modelarts_images.frontend import (
    exits_cleanly,
    guard_invoke,
    options_for,
    section_of,
    selected_images,
    show_engine_log,
)
from modelarts_images.options import HELP, Flags

if TYPE_CHECKING:
    from modelarts_images.model import FetchedImage, ImageSpec
    from modelarts_images.options import Options

# Each task imports the modules it needs when it runs: the docker SDK, requests and rich together take longer to
# import than a no-op rebuild takes to run, and `inv plan` or `inv fetch` need none of the engine's.

guard_invoke()  # before invoke reads invoke.yaml or a -f file

SELECTION = ("versions", "only", "all")
FETCH_FLAGS = (*SELECTION, "jobs", "offline", "locked", "verify_cache", "no_closure")
BUILD_FLAGS = (*SELECTION, "backend", "no_cache", "base_image", "base_prefix", "platform", "offline", "locked")


def _help(names: tuple[str, ...], **more: str) -> dict[str, str]:
    return {**{name: HELP[name] for name in names}, **more}


def _options(c: Context, flags: Flags) -> Options:
    """The run's options from invoke.yaml (as invoke merged it) and this task's flags."""
    return options_for(section_of(c.config), flags)


@task(iterable=["only"], help=_help(SELECTION, json="print the plan as JSON instead of text"))
@exits_cleanly
def plan(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
         json_: bool = False) -> None:
    """Show what would be built for the selected images: reference, base, artifacts, build arguments."""
    from modelarts_images import plan as planning

    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_))
    plans = [planning.make_plan(image) for image in selected_images(options)]
    print(planning.as_json(plans) if json_ else planning.as_text(plans))


def _fetch(options: Options, images: tuple[ImageSpec, ...]) -> tuple[FetchedImage, ...]:
    from modelarts_images import pipeline
    from modelarts_images.fetch.fetcher import format_fetched
    from modelarts_images.shared.progress import for_terminal

    with for_terminal() as progress:
        fetched = pipeline.fetch_step(images, options.fetch, progress=progress)
    print(format_fetched(fetched.images, fetched.summary))
    return fetched.images


@task(iterable=["only"], help=_help(FETCH_FLAGS))
@exits_cleanly
def fetch(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
          jobs: str | None = None, offline: bool = False, locked: bool = False, verify_cache: bool = False,
          no_closure: bool = False) -> None:
    """Download the installer and wheels of the selected images into the cache, sha256-verified."""
    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, jobs=jobs, offline=offline,
                                locked=locked, verify_cache=verify_cache, no_closure=no_closure))
    _fetch(options, selected_images(options))


@task(iterable=["only"], help=_help((*SELECTION, "jobs", "no_closure")))
@exits_cleanly
def lock(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
         jobs: str | None = None, no_closure: bool = False) -> None:
    """Resolve the selected images again and pin every artifact's sha256 in versions.lock."""
    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, jobs=jobs,
                                no_closure=no_closure, refresh=True))
    _fetch(options, selected_images(options))


@task(iterable=["only"], help=_help(BUILD_FLAGS, dry_run="print each selected image's build command and exit "
                                                         "(nothing is fetched or built)"))
@exits_cleanly
def build(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
          backend: str | None = None, no_cache: bool = False, base_image: str | None = None,
          base_prefix: str | None = None, platform: str | None = None, dry_run: bool = False,
          offline: bool = False, locked: bool = False) -> None:
    """Build the selected images (fetching what the cache lacks first) and tag them with their references."""
    from modelarts_images import pipeline
    from modelarts_images.build.builder import build_command_preview, format_result
    from modelarts_images.errors import BuildError

    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, backend=backend,
                                no_cache=no_cache, base_image=base_image, base_prefix=base_prefix, platform=platform,
                                offline=offline, locked=locked))
    images = selected_images(options)
    if dry_run:
        for image in images:
            print(f"# {image.id}\n{build_command_preview(image, options.build)}")
        return
    engine = pipeline.connect(BuildError)
    pipeline.check_bases_step(images, options.build, engine)  # before any download
    fetched = _fetch(options, images)
    show_engine_log()
    for item in fetched:
        print(format_result(pipeline.build_step(item, options.build, engine,
                                                inputs=pipeline.image_inputs(item, options))))


@task(iterable=["only"], help=_help(SELECTION, registry="log in to this registry host instead of those of the "
                                                        "selected images", region=HELP["region"],
                                  project=HELP["project"]))
@exits_cleanly
def login(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
          registry: str | None = None, region: str | None = None, project: str | None = None) -> None:
    """Check the registry login from the environment (SWR AK/SK, SWR login command, or user/password)."""
    from modelarts_images import pipeline
    from modelarts_images.errors import RegistryError

    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, region=region, project=project))
    registries = [registry] if registry else sorted({image.registry for image in selected_images(options)})
    engine = pipeline.connect(RegistryError)
    for host in registries:
        result = pipeline.login_step(host, options.push, engine, os.environ)
        print(f"{host}: login accepted for {result.user} ({result.source})")


PUSH_HELP = _help(SELECTION, replace_tag=HELP["replace_tag"], extra_tag=HELP["extra_tag"], region=HELP["region"],
                  project=HELP["project"],
                  force="the old name of --replace-tag",
                  reports_dir="directory for the push-<id>.json records (default: modelarts.reports_dir, reports)",
                  dry_run="check names, credentials and the registry's tags, and say what would be pushed; push "
                          "nothing")


@task(iterable=["only", "extra_tag"], help=PUSH_HELP)
@exits_cleanly
def push(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
         replace_tag: bool = False, force: bool = False, extra_tag: list[str] | None = None,
         reports_dir: str | None = None, region: str | None = None, project: str | None = None,
         dry_run: bool = False) -> None:
    """Push the selected images to their registry: SWR name rules, tag guard, login from the environment."""
    from modelarts_images import pipeline
    from modelarts_images.errors import RegistryError
    from modelarts_images.publish.publisher import summary
    from modelarts_images.shared.progress import for_terminal

    if force:
        print("push: --force is now --replace-tag (it replaces a tag that names another image)", file=sys.stderr)
    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, replace_tags=replace_tag or force,
                                extra_tags=tuple(extra_tag or ()), reports_dir=reports_dir, region=region,
                                project=project, dry_run=dry_run))
    images = selected_images(options)
    engine = pipeline.connect(RegistryError)
    show_engine_log()
    with for_terminal("push") as progress:
        records = pipeline.push_step(images, options.push, engine, os.environ, progress=progress)
    print(summary(records))


VERIFY_HELP = _help((*SELECTION, "device", "timeout", "size_budget"),
                    image="verify this image reference instead of the entry's own (exactly one entry selected)",
                    reports="directory for the JSON results, one <id>.json per image (default: <reports_dir>/verify)")


@task(iterable=["only"], help=VERIFY_HELP)
@exits_cleanly
def verify(c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
           image: str | None = None, device: str = "auto", timeout: str | None = None,
           size_budget: str | None = None, reports: str | None = None) -> None:
    """Run pytorch-verification.py in the selected images as ModelArts does, and check ModelArts' image rules."""
    from modelarts_images import pipeline
    from modelarts_images.errors import VerifyError
    from modelarts_images.shared.files import check_writable
    from modelarts_images.verify.report import format_report, raise_for_reports

    options = _options(c, Flags(versions=versions, only=only or (), all_images=all_, device=device,
                                timeout=timeout, size_budget=size_budget, verify_reports=reports))
    images = selected_images(options)
    if image and len(images) != 1:
        raise ConfigError(f"--image: verifies one entry, but {len(images)} are selected; pick one with --only")
    check_writable(options.verify.reports_dir,  # before any run
                   set_by="--reports, or modelarts.reports_dir in invoke.yaml")
    engine = pipeline.connect(VerifyError)
    done = []
    for entry in images:
        verified = pipeline.verify_step(entry, options.verify, engine, reference=image)
        print(format_report(verified.report))
        print(f"  result: {verified.path}")
        done.append(verified.report)
    raise_for_reports(done)
