"""Tasks: `inv --list` shows them; each runs the pipeline's steps declared for it, and prints what they finish.

A task's steps and flags are declared in modelarts_images/declared.py (TASKS), the flags' help with them; the
steps run in the pipeline's declared order (modelarts_images/pipeline.py: STEPS).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

from invoke.context import Context

from modelarts_images.declared import StepName
from modelarts_images.errors import ConfigError
from modelarts_images.frontend import (
    Call,
    declared_task,
    guard_invoke,
    options_for,
    section_of,
    selected_images,
)
from modelarts_images.options import Where

if TYPE_CHECKING:
    from modelarts_images.options import Options
    from modelarts_images.pipeline import Run

# Each task imports the pipeline when it runs (about 0.3 s: requests, the stages), not when invoke lists the
# tasks; `inv plan` needs none of it.

guard_invoke()  # before invoke reads invoke.yaml or a -f file


def _options(c: Context, call: Call) -> Options:
    """The run's options from invoke.yaml (as invoke merged it) and this task's flags."""
    return options_for(section_of(c.config), call.flags)


def _run(options: Options, call: Call, **given: Any) -> Run:
    """The task's steps over the selected images, printing each thing a step finishes."""
    from modelarts_images import pipeline
    from modelarts_images.frontend import show_engine_log
    from modelarts_images.shared.progress import for_terminal

    def starting(step: StepName) -> None:
        if step in (StepName.BUILD, StepName.PUSH):
            show_engine_log()  # build and push output (the engine's INFO lines) live on stderr

    run = pipeline.Run(options=options, images=given.pop("images", None) or selected_images(options),
                       show=lambda step, item: print(pipeline.text(step, item)), starting=starting,
                       progress=lambda step: for_terminal(str(step)), **given)
    return pipeline.execute(call.steps, run)


@declared_task("plan")
def plan(c: Context, call: Call) -> None:
    """Show what would be built for the selected images: reference, base, artifacts, build arguments."""
    from modelarts_images import plan as planning  # the pure core only: a plan fetches and builds nothing

    print(planning.shown(selected_images(_options(c, call)), in_json=call.given["json"]))


@declared_task("doctor")
def doctor(c: Context, call: Call) -> None:
    """Check what this machine and configuration can do for the selected images: Python, the engine, BuildKit,
    the GPU runtime, emulation, disk, every source, the registry login, ModelArts; exit 8 when something is missing."""
    from modelarts_images.doctor import report, run

    options = _options(c, call)
    checked = run.examine(selected_images(options), options, env=os.environ)
    print(report.shown(checked, in_json=call.given["json"]))
    problem = report.error(checked)
    if problem is not None:
        raise problem


@declared_task("fetch")
def fetch(c: Context, call: Call) -> None:
    """Download the installer and wheels of the selected images into the cache, sha256-verified."""
    _run(_options(c, call), call)


@declared_task("lock")
def lock(c: Context, call: Call) -> None:
    """Resolve the selected images again and pin every artifact's sha256 in versions.lock."""
    _run(_options(c, call), call)


@declared_task("build")
def build(c: Context, call: Call) -> None:
    """Build the selected images (fetching what the cache lacks first) and tag them with their references."""
    options = _options(c, call)
    if call.given["dry_run"]:
        from modelarts_images import pipeline

        print(pipeline.build_preview(selected_images(options), options.build))
        return
    _run(options, call)  # the bases are checked before any download


@declared_task("login")
def login(c: Context, call: Call) -> None:
    """Check the registry login from the environment (SWR AK/SK, SWR login command, or user/password)."""
    registry = call.given["registry"]
    _run(_options(c, call), call, registries=(registry,) if registry else ())


@declared_task("push")
def push(c: Context, call: Call) -> None:
    """Push the selected images to their registry: SWR name rules, tag guard, login from the environment."""
    flags = call.flags
    if call.given["force"]:
        print("push: --force is now --replace-tag (it replaces a tag that names another image)", file=sys.stderr)
        flags = flags.replace(replace_tags=True)
    _run(options_for(section_of(c.config), flags), call, env=os.environ)


@declared_task("verify")
def verify(c: Context, call: Call) -> None:
    """Run pytorch-verification.py in the selected images as ModelArts does, and check ModelArts' image rules;
    with --on modelarts, as training jobs on ModelArts itself."""
    from modelarts_images import pipeline

    options = _options(c, call)
    images = selected_images(options)
    image = call.given["image"]
    if image and len(images) != 1:
        raise ConfigError(f"--image: verifies one entry, but {len(images)} are selected; pick one with --only")
    on_platform = options.platform.on is Where.MODELARTS
    if on_platform and image:
        raise ConfigError("--image: ModelArts runs the entry's own image from SWR; --image is for local runs")
    if options.platform.job and len(images) != 1:
        raise ConfigError(f"--job: reads one job of one entry, but {len(images)} are selected; pick one with --only")
    step = StepName.PLATFORM if on_platform else StepName.VERIFY
    run = _run(options, dataclasses.replace(call, steps=(step,)), images=images, reference=image)
    pipeline.raise_for_reports([verified.report for verified in run.verified])
