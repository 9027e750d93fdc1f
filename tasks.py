"""Tasks: `inv --list` shows them; each parses its flags and hands the work to modelarts_images."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from modelarts_images import plan as planning
from modelarts_images.cli import SELECTION_HELP, exits_cleanly, selected_images, tool_settings


@task(iterable=["only"], help={**SELECTION_HELP, "json": "print the plan as JSON instead of text"})
@exits_cleanly
def plan(
    c: Context, versions: str | None = None, only: list[str] | None = None, all_: bool = False, json_: bool = False
) -> None:
    """Show what would be built for the selected images: reference, base, artifacts, build arguments."""
    resolved = tool_settings(c, versions=versions, only=only or (), all_images=all_)
    plans = [planning.make_plan(image) for image in selected_images(resolved)]
    print(planning.as_json(plans) if json_ else planning.as_text(plans))
