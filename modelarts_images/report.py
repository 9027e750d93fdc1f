"""The matrix report: one record per cell, merged into reports/matrix.json and reports/matrix.md, and a table.

    <reports_dir>/matrix/<id>.json   the last record of each cell (written when the cell ran)
    <reports_dir>/matrix.json        every cell of the versions file that has a record, in file order
    <reports_dir>/matrix.md          the same for people: a table, then per cell its layers, checks and packages

Rendering is pure (`render_json`, `render_markdown`, `summary_table` over plain record dicts); the package
manifest is read from the image through engine.run's container helpers (`capture_manifest`).
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .contract import CONDA_PREFIX
from .engine.run import ContainerOutput, ContainerRun
from .files import write_atomic

JSON_NAME = "matrix.json"
MD_NAME = "matrix.md"
CELLS_DIR = "matrix"
SCHEMA = 1
SECTIONS = ("conda", "pip", "dpkg")
_MARK = "### modelarts-images manifest: "
MANIFEST_SCRIPT = f"""
if [ -x {CONDA_PREFIX}/bin/conda ]; then
  echo '{_MARK}conda'; {CONDA_PREFIX}/bin/conda list --export 2>/dev/null || true
elif [ -x {CONDA_PREFIX}/bin/python ]; then
  echo '{_MARK}pip'; {CONDA_PREFIX}/bin/python -m pip freeze --all 2>/dev/null || true
fi
if command -v dpkg-query >/dev/null 2>&1; then
  echo '{_MARK}dpkg'; dpkg-query -W -f '${{Package}}=${{Version}}\\n' 2>/dev/null || true
fi
"""


class Runs(Protocol):
    def run(self, spec: ContainerRun) -> ContainerOutput: ...


# --------------------------------------------------------------------------------------------------------------
# The package manifest


def manifest_spec(reference: str) -> ContainerRun:
    """A short container without network that prints conda list (or pip freeze) and the dpkg list."""
    return ContainerRun(image=reference, command=("/bin/sh", "-c", MANIFEST_SCRIPT), user="0:0", working_dir="/",
                        network=False)


def parse_manifest(text: str) -> dict[str, list[str]]:
    """The sections MANIFEST_SCRIPT printed: {"conda"|"pip": [...], "dpkg": [...]}, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_MARK):
            current = sections.setdefault(line[len(_MARK):], [])
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return sections


def capture_manifest(engine: Runs, reference: str) -> dict[str, list[str]]:
    """The package manifest of an image; a failure to read it is recorded, never raised."""
    try:
        output = engine.run(manifest_spec(reference))
    except Exception as error:  # the manifest is information: the cell does not fail over it
        return {"error": [str(error)]}
    sections = parse_manifest(output.stdout)
    if output.exit_code != 0 or not sections:
        sections["error"] = [f"{shlex.join(manifest_spec(reference).command[:2])} exited with {output.exit_code}: "
                             + output.stderr.strip()[-300:]]
    return sections


# --------------------------------------------------------------------------------------------------------------
# Records on disk


def write_cell(reports_dir: Path, record: Mapping[str, Any]) -> Path:
    path = reports_dir / CELLS_DIR / f"{record['id']}.json"
    return write_atomic(path, json.dumps(record, indent=2) + "\n", what="matrix cell record")


def read_cells(reports_dir: Path, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The last record of each cell (of `ids`, in that order; else every record, by id)."""
    directory = reports_dir / CELLS_DIR
    paths = [directory / f"{cell_id}.json" for cell_id in ids] if ids is not None else sorted(
        directory.glob("*.json"))
    records = []
    for path in paths:
        try:
            records.append(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError):
            continue
    return records


def write_reports(reports_dir: Path, ids: Sequence[str]) -> list[dict[str, Any]]:
    """matrix.json and matrix.md from the cell records of `ids` (the versions file's cells, in its order)."""
    records = read_cells(reports_dir, ids)
    # atomically: concurrent shards sharing the directory each rewrite both files
    write_atomic(reports_dir / JSON_NAME, render_json(records), what="matrix report")
    write_atomic(reports_dir / MD_NAME, render_markdown(records), what="matrix report")
    return records


# --------------------------------------------------------------------------------------------------------------
# Rendering


def human(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


def _seconds(record: Mapping[str, Any], step: str) -> str:
    value = (record.get("durations") or {}).get(step)
    return "-" if value is None else f"{value:.1f} s"


def device_results(record: Mapping[str, Any]) -> dict[str, str]:
    """{"cpu": "pass"|"FAIL", "gpu": ...|"skipped"} from the verification report in the record."""
    verification = record.get("verification") or {}
    results = {run["device"]: ("pass" if run.get("ok") else "FAIL") for run in verification.get("runs", [])}
    if any(note.startswith("GPU") for note in verification.get("skipped", [])):
        results.setdefault("gpu", "skipped")
    return results


def conformance_result(record: Mapping[str, Any]) -> str:
    checks = (record.get("verification") or {}).get("conformance") or []
    if not checks:
        return "-"
    failed = [check["name"] for check in checks if check.get("status") == "FAIL"]
    return f"FAIL ({', '.join(failed)})" if failed else f"pass ({len(checks)})"


def render_json(records: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"schema": SCHEMA, "cells": list(records)}, indent=2) + "\n"


def table_rows(records: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for record in records:
        devices = device_results(record)
        rows.append([
            str(record["id"]), str(record["status"]), human(record.get("size")),
            _seconds(record, "fetch"), _seconds(record, "build"), _seconds(record, "verify"),
            devices.get("cpu", "-"), devices.get("gpu", "-"), conformance_result(record),
            str(record.get("digest") or "-")[:19],
        ])
    return rows


HEADERS = ["cell", "status", "size", "fetch", "build", "verify", "CPU", "GPU", "conformance", "digest"]


def render_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"

    lines = ["# Matrix report", "", cells(HEADERS), cells(["---"] * len(HEADERS))]
    lines += [cells(row) for row in table_rows(records)]
    for record in records:
        lines += ["", f"## {record['id']}", "",
                  f"- image: `{record['reference']}`" + (f" (pushed as `{record['pushed']}`)" if record.get("pushed")
                                                         else ""),
                  f"- status: **{record['status']}**" + (f": {record['reason']}" if record.get("reason") else ""),
                  f"- torch {record.get('torch')}, CUDA {record.get('cuda')}, Python {record.get('python')}",
                  f"- digest: `{record.get('digest') or 'not pushed'}`",
                  f"- size: {human(record.get('size'))}; fetch {_seconds(record, 'fetch')}, build "
                  f"{_seconds(record, 'build')}, verify {_seconds(record, 'verify')}, push {_seconds(record, 'push')}",
                  f"- input hash: `{str(record.get('hash', ''))[:16]}`; changed since the last success: "
                  f"{', '.join(record.get('changed') or []) or 'nothing'}"]
        if record.get("training_job"):
            lines.append(f"- ModelArts training-job body: `{record['training_job']}`")
        if record.get("layers"):
            lines += ["", "Largest layers:", ""]
            lines += [f"- {human(layer['size'])} {'(base) ' if layer.get('from_base') else ''}`{layer['step']}`"
                      for layer in record["layers"]]
        verification = record.get("verification") or {}
        for run in verification.get("runs", []):
            lines += ["", f"{run['device'].upper()} verification ({'pass' if run.get('ok') else 'FAIL'}):", ""]
            lines += [f"- [{check['status']}] {check['name']}: {check['detail']}" for check in run.get("checks", [])]
        lines += [f"- {note}" for note in verification.get("skipped", [])]
        if verification.get("conformance"):
            lines += ["", "ModelArts conformance:", ""]
            lines += [f"- [{check['status']}] {check['name']}: {check['detail']}"
                      for check in verification["conformance"]]
        manifest = record.get("manifest") or {}
        for section in (*SECTIONS, "error"):
            if manifest.get(section):
                entries = manifest[section]
                lines += ["", f"<details><summary>{section} ({len(entries)} entries)</summary>", "", "```",
                          *entries, "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def summary_table(records: Sequence[Mapping[str, Any]], *, tty: bool) -> str:
    """The terminal summary: a rich table on a terminal, aligned plain columns otherwise."""
    rows = table_rows(records)
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="matrix")
        for header in HEADERS:
            table.add_column(header)
        for row in rows:
            style = {"failed": "red", "passed": "green"}.get(row[1], "")
            table.add_row(*row, style=style)
        console = Console(force_terminal=True, width=max(shutil.get_terminal_size().columns, 160))
        with console.capture() as capture:
            console.print(table)
        return capture.get().rstrip("\n")
    widths = [max(len(value) for value in column) for column in zip(HEADERS, *rows, strict=False)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in [HEADERS, *rows])


def print_summary(reports_dir: Path, *, run_token: str = "", tty: bool | None = None) -> int:
    """For `nox -s matrix`'s closing session: the table of matrix.json's cells (those of run `run_token` when
    given); 1 when any of them failed, listing each with its reason."""
    import sys

    try:
        records = json.loads((reports_dir / JSON_NAME).read_text("utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        print(f"no matrix report at {reports_dir / JSON_NAME}")
        return 1
    if run_token:
        records = [record for record in records if record.get("run") == run_token]
    print(summary_table(records, tty=sys.stdout.isatty() if tty is None else tty))
    failed = [record for record in records if record["status"] == "failed"]
    for record in failed:
        print(f"FAILED {record['id']}: {record['reason']}")
    return 1 if failed else 0
