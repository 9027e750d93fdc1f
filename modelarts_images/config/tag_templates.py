"""Extra-tag templates (`--extra-tag`, `extra_tags` in invoke.yaml): checked when the settings are read, so a bad
one is a configuration error naming where it was set, before an engine or a registry is asked anything."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from modelarts_images.config.versions import schema
from modelarts_images.errors import ConfigError
from modelarts_images.shared import redact

PLACEHOLDERS = ("tag", "date", "revision")
# What each placeholder may become, to check that a template makes a tag SWR takes.
_SAMPLE = {"tag": "1.0", "date": "20240101", "revision": "0123456789ab"}
_USE = "use " + ", ".join(f"{{{name}}}" for name in PLACEHOLDERS) + " (plain, without a format spec or conversion)"


def template_fields(template: str, *, source: str = "") -> list[str]:
    """The fields a template names; ConfigError for anything but a plain {tag}, {date} or {revision}.

    A format spec or a conversion ({date:%Y}, {tag!r}) would reach str.format and fail there with a bare
    ValueError, or quietly make a tag SWR refuses; the documented fields are plain substitutions only.
    `source` (the flag, variable or invoke.yaml key that gave it) starts the message."""
    label = f"{source}: " if source else ""
    shown_template = redact.excerpt(template)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"{label}extra tag {shown_template}: {error}; {_USE}") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in PLACEHOLDERS:
            raise ConfigError(f"{label}extra tag {shown_template}: unknown placeholder {shown}; {_USE}")
        if spec or conversion:
            raise ConfigError(f"{label}extra tag {shown_template}: {shown} has a format spec or conversion; {_USE}")
        fields.append(name)
    return fields


def check_templates(templates: Iterable[str], *, source: str = "") -> None:
    """Every template is one expand_tags() can fill and makes a tag the registry takes; ConfigError naming
    `source` otherwise. Whether a git revision is known for {revision} is a question for the push itself."""
    label = f"{source}: " if source else ""
    definition = schema()["$defs"]["image"]["properties"]["tag"]
    for template in templates:
        template_fields(template, source=source)
        if not re.match(definition["pattern"], template.format(**_SAMPLE)):
            raise ConfigError(f"{label}extra tag {redact.excerpt(template)}: {definition['x-message']}")


def expand_tags(templates: Iterable[str], *, tag: str, date: str, revision: str | None) -> tuple[str, ...]:
    """Extra tags from their templates, without duplicates or the main tag itself, in order."""
    tags: list[str] = []
    for template in templates:
        if "revision" in template_fields(template) and revision is None:
            raise ConfigError(f"extra tag {redact.excerpt(template)}: no git revision is known here (not a git "
                              "checkout?)")
        expanded = template.format(tag=tag, date=date, revision=revision)
        if expanded != tag and expanded not in tags:
            tags.append(expanded)
    return tuple(tags)
