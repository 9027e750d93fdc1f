"""The programs run inside an image, and the one parser for the tagged result lines they print.

Each program is a real file under verify/probes/, beside the verification script, so linters and tests read it
like any other source: Python 3.7+ stdlib probes and one POSIX sh script. Callers put a probe's text on the
container's command line (`python -c SOURCE`, `sh -c SCRIPT sh ARG`) instead of mounting the file, so a probe
needs nothing from the engine's filesystem and works with remote engines too.

Programs answer with one line `PREFIX {json object}` among whatever else they print; `tagged_json()` reads it.
"""

from __future__ import annotations

import json
from typing import Any

from modelarts_images.errors import VerifyError
from modelarts_images.paths import PROBES_DIR

CONFORMANCE_FACTS = "conformance_facts.py"  # as root: users, credential and setuid files, conda metadata
MANIFEST = "manifest.sh"  # as root: conda list / pip freeze / dpkg list
STACK_IMPORTS = "stack_imports.py"  # as the training user: the modules of each stack distribution import
PROBES = (CONFORMANCE_FACTS, MANIFEST, STACK_IMPORTS)
TAIL_LINES = 5  # lines of output quoted when the tagged line is missing


def probe_source(name: str) -> str:
    """The text of verify/probes/<name>; VerifyError naming the file when it cannot be read."""
    path = PROBES_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise VerifyError(f"probe {name}: cannot read {path} ({why}); it ships with modelarts-images in "
                          "verify/probes/, restore it from the repository") from error


def tagged_json(text: str, prefix: str, *, what: str, hint: str = "") -> dict[str, Any]:
    """The JSON object on the last line of `text` that starts with `prefix` (earlier ones are superseded).

    `what` names the program in the messages; `hint` says why the line may be missing. VerifyError when there is
    no such line (quoting the last lines of output), or its rest is not JSON, or not a JSON object."""
    tag = prefix.strip()
    # splitlines() also breaks at \r and \r\n: a log written with \r\n leaves no \r before the JSON
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    if not lines:
        tail = text.strip().splitlines()[-TAIL_LINES:]
        shown = " | ".join(tail) if tail else "no output at all"
        context = f"{hint}; last lines: {shown}" if hint else f"last lines: {shown}"
        raise VerifyError(f"{what}: expected a line starting with {tag!r} and a JSON object, found none ({context})")
    payload = lines[-1][len(prefix):]
    try:
        data = json.loads(payload)
    except ValueError as error:  # json.JSONDecodeError
        raise VerifyError(f"{what}: the {tag} line is not valid JSON ({error}): {payload[:200]}") from error
    if not isinstance(data, dict):
        raise VerifyError(f"{what}: the {tag} line holds {type(data).__name__}, expected a JSON object")
    return data
