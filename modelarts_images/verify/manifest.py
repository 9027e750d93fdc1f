"""The package manifest of an image (conda list or pip freeze, and the dpkg list), read by a probe."""

from __future__ import annotations

import shlex

from modelarts_images.contract import DEFAULT_USER, VERIFY_TIMEOUT_S, RunUser
from modelarts_images.engine.api import ContainerRun, Engine
from modelarts_images.errors import ModelArtsImagesError
from modelarts_images.verify.probes import MANIFEST, probe_source

SECTIONS = ("conda", "pip", "dpkg")
# The marker line before each section that verify/probes/manifest.sh prints.
_MARK = "### modelarts-images manifest: "

Manifest = dict[str, tuple[str, ...]]  # section -> lines; "error" when it could not be read


def manifest_spec(reference: str, *, timeout: float = VERIFY_TIMEOUT_S, user: RunUser = DEFAULT_USER) -> ContainerRun:
    """A short container without network that prints conda list (or pip freeze) and the dpkg list.

    verify/probes/manifest.sh runs as `sh -c SCRIPT sh PREFIX`: "sh" is its $0, the conda prefix its $1."""
    return ContainerRun(image=reference, command=("/bin/sh", "-c", probe_source(MANIFEST), "sh",
                                                  user.conda_prefix),
                        user="0:0", working_dir="/", network=False, timeout=timeout)


def parse_manifest(text: str) -> Manifest:
    """The sections verify/probes/manifest.sh printed: {"conda"|"pip": (...), "dpkg": (...)}, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_MARK):
            current = sections.setdefault(line[len(_MARK):], [])
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return {name: tuple(lines) for name, lines in sections.items()}


def capture_manifest(engine: Engine, reference: str, *, timeout: float = VERIFY_TIMEOUT_S,
                     user: RunUser = DEFAULT_USER) -> Manifest:
    """The package manifest of an image; a failure to read it is recorded under "error", never raised: the
    manifest is information, and a cell does not fail over it."""
    try:
        spec = manifest_spec(reference, timeout=timeout, user=user)  # an unreadable probe file is recorded like a failed run
        output = engine.run(spec)
    except ModelArtsImagesError as error:
        return {"error": (str(error),)}
    sections = parse_manifest(output.stdout)
    if output.exit_code != 0 or not sections:
        sections["error"] = (f"{shlex.join(spec.command[:2])} exited with {output.exit_code}: "
                             + output.stderr.strip()[-300:],)
    return sections
