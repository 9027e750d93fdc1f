"""Tasks: `inv --list` shows them; each parses its flags and hands the work to modelarts_images."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from modelarts_images import fetch as fetching
from modelarts_images import plan as planning
from modelarts_images.cli import SELECTION_HELP, exits_cleanly, selected_images, tool_settings
from modelarts_images.progress import for_terminal, human

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
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    plans = [planning.make_plan(image) for image in selected_images(resolved)]
    print(planning.as_json(plans) if json_ else planning.as_text(plans))


def _fetch(c: Context, versions: str | None, only: list[str] | None, all_: bool, jobs: int | None, offline: bool,
           locked: bool, verify_cache: bool, no_closure: bool, refresh: bool) -> None:
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    images = selected_images(resolved)
    options = fetching.FetchOptions(
        cache_dir=resolved.cache_dir,
        lock_path=resolved.selection.versions.with_suffix(".lock"),
        jobs=jobs or resolved.jobs,
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


@task(iterable=["only"], help=FETCH_HELP)
@exits_cleanly
def fetch(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    jobs: int | None = None, offline: bool = False, locked: bool = False, verify_cache: bool = False,
    no_closure: bool = False,
) -> None:
    """Download the installer and wheels of the selected images into the cache, sha256-verified."""
    _fetch(c, versions, only, all_, jobs, offline, locked, verify_cache, no_closure, refresh=False)


@task(iterable=["only"], help={key: FETCH_HELP[key] for key in (*SELECTION_HELP, "jobs", "no_closure")})
@exits_cleanly
def lock(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False,
    jobs: int | None = None, no_closure: bool = False,
) -> None:
    """Resolve the selected images again and pin every artifact's sha256 in versions.lock."""
    _fetch(c, versions, only, all_, jobs, offline=False, locked=False, verify_cache=False, no_closure=no_closure,
           refresh=True)
