"""The matrix report: one record per cell, merged into reports/matrix.json and reports/matrix.md, and a table.

    <reports_dir>/matrix/<id>.json   the last record of each cell (written when the cell ran)
    <reports_dir>/matrix.json        every cell of the versions file that has a record, in file order
    <reports_dir>/matrix.md          the same for people: a table, then per cell its layers, checks and packages

Rendering is pure (`render_json`, `render_markdown`, `summary_table` over CellRecords).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from modelarts_images.errors import ConfigError
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.matrix.records import RECORD_LIMIT, collect, load_json, load_record, read_record
from modelarts_images.shared.files import read_bounded, write_atomic
from modelarts_images.shared.text import size
from modelarts_images.verify.manifest import SECTIONS

log = logging.getLogger(__name__)

JSON_NAME = "matrix.json"
MD_NAME = "matrix.md"
CELLS_DIR = "matrix"
SCHEMA = 1
# matrix.json holds every cell's record: room for 64 of the largest.
REPORT_LIMIT = 64 * RECORD_LIMIT


# --------------------------------------------------------------------------------------------------------------
# Records on disk


def write_cell(reports_dir: Path, record: CellRecord) -> Path:
    path = reports_dir / CELLS_DIR / f"{record.id}.json"
    return write_atomic(path, json.dumps(record.to_json(), indent=2) + "\n", what="matrix cell record")


def read_cells(reports_dir: Path, ids: Sequence[str] | None = None) -> list[CellRecord]:
    """The last record of each cell (of `ids`, in that order; else every record, by id); one that cannot be read
    or is not a valid record filed under its own id is left out with a warning (a cell that never ran has none)."""
    directory = reports_dir / CELLS_DIR
    paths = [directory / f"{cell_id}.json" for cell_id in ids] if ids is not None else sorted(
        directory.glob("*.json"))
    records = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        record, problems = read_record(path)
        if record is None:
            log.warning("%s; the report leaves that cell out", problems[0])
        else:
            records.append(record)
    return records


def write_reports(reports_dir: Path, ids: Sequence[str]) -> list[CellRecord]:
    """matrix.json and matrix.md from the cell records of `ids` (the versions file's cells, in its order)."""
    records = read_cells(reports_dir, ids)
    _write_report_files(reports_dir, records)
    return records


def _write_report_files(reports_dir: Path, records: Sequence[CellRecord]) -> None:
    # atomically: concurrent shards sharing the directory each rewrite both files
    write_atomic(reports_dir / JSON_NAME, render_json(records), what="matrix report")
    write_atomic(reports_dir / MD_NAME, render_markdown(records), what="matrix report")


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _size(count: int | None) -> str:
    return "-" if count is None else size(count)


def _seconds(record: CellRecord, step: str) -> str:
    value = record.durations.get(step)
    return "-" if value is None else f"{value:.1f} s"


def device_results(record: CellRecord) -> dict[str, str]:
    """{"cpu": "pass"|"FAIL", "gpu": ...|"skipped"} from the verification report in the record."""
    report = record.verification
    if report is None:
        return {}
    results: dict[str, str] = {}
    for run in report.runs:  # a distributed run has a run per worker: the device passes when every one does
        results[run.device.value] = "FAIL" if not run.ok or results.get(run.device.value) == "FAIL" else "pass"
    if any(note.startswith("GPU") for note in report.skipped):
        results.setdefault("gpu", "skipped")
    return results


def conformance_result(record: CellRecord) -> str:
    checks = record.verification.conformance if record.verification is not None else ()
    if not checks:
        return "-"
    failed = [check.name for check in checks if check.blocking]
    return f"FAIL ({', '.join(failed)})" if failed else f"pass ({len(checks)})"


def render_json(records: Sequence[CellRecord]) -> str:
    return json.dumps({"schema": SCHEMA, "cells": [record.to_json() for record in records]}, indent=2) + "\n"


def layer_holders(records: Sequence[CellRecord]) -> dict[str, list[str]]:
    """Each diff id, with the cells whose image has that layer."""
    holders: dict[str, list[str]] = {}
    for record in records:
        for layer in record.layers:
            if layer.diff_id and record.id not in holders.setdefault(layer.diff_id, []):
                holders[layer.diff_id].append(record.id)
    return holders


def table_rows(records: Sequence[CellRecord]) -> list[list[str]]:
    rows = []
    for record in records:
        devices = device_results(record)
        rows.append([
            record.id, record.status.value, _size(record.size),
            _seconds(record, "fetch"), _seconds(record, "build"), _seconds(record, "verify"),
            devices.get("cpu", "-"), devices.get("gpu", "-"), conformance_result(record),
            (record.digest or "-")[:19],
        ])
    return rows


HEADERS = ["cell", "status", "size", "fetch", "build", "verify", "CPU", "GPU", "conformance", "digest"]


def platform_lines(record: CellRecord) -> list[str]:
    """The cell's training jobs on ModelArts: id, flavour, phase, queue and run time, and each check."""
    report = record.platform
    if report is None:
        return []
    lines = [f"- verified on ModelArts as `{record.staged}`"
             + (f", released as `{record.pushed}`" if record.pushed != record.staged else ", not released")]
    for run in report.runs:
        job = run.job
        if job is None:
            continue
        lines += ["", f"{run.device.value.upper()} on ModelArts ({'pass' if run.ok else 'FAIL'}): job `{job.job_id}` "
                      f"({job.name}) on {job.flavor} in {job.region}, {job.phase}, queued {job.queued:.0f} s, ran "
                      f"{job.ran:.0f} s", ""]
        lines += [f"- [{check.status}] {check.name}: {check.detail}" for check in run.outcomes]
    return lines


def render_markdown(records: Sequence[CellRecord]) -> str:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"

    lines = ["# Matrix report", "", cells(HEADERS), cells(["---"] * len(HEADERS))]
    lines += [cells(row) for row in table_rows(records)]
    holders = layer_holders(records)
    for record in records:
        lines += ["", f"## {record.id}", "",
                  f"- image: `{record.reference}`" + (f" (pushed as `{record.pushed}`)" if record.pushed else ""),
                  f"- status: **{record.status}**" + (f": {record.reason}" if record.reason else ""),
                  f"- torch {record.torch}, CUDA {record.cuda}, Python {record.python}",
                  f"- digest: `{record.digest or 'not pushed'}`",
                  f"- size: {_size(record.size)}; fetch {_seconds(record, 'fetch')}, build "
                  f"{_seconds(record, 'build')}, verify {_seconds(record, 'verify')}, push {_seconds(record, 'push')}",
                  f"- input hash: `{record.hash[:16]}`; changed since the last success: "
                  f"{', '.join(record.changed) or 'nothing'}",
                  *(f"- distributed on the {device.upper()}: {line}" for device, line in (
                      record.verification.distributed().items() if record.verification is not None else ()))]
        if record.training_job:
            lines.append(f"- ModelArts training-job body: `{record.training_job}`")
        lines += platform_lines(record)
        if record.layers:
            lines += ["", "Layers, oldest first (shared: the other images of this report with the same layer):", ""]
            for layer in record.layers:
                others = [cell for cell in holders.get(layer.diff_id, ()) if cell != record.id]
                origin = "(base) " if layer.from_base else ""
                lines.append(f"- {size(layer.size)} {origin}`{layer.step or layer.diff_id}`"
                             + (f"; shared: {', '.join(others)}" if others else ""))
            shared = sum(layer.size for layer in record.layers
                         if any(cell != record.id for cell in holders.get(layer.diff_id, ())))
            lines.append(f"- {size(shared)} of {size(sum(layer.size for layer in record.layers))} in layers another "
                         "image of this report has too")
        report = record.verification
        if report is not None:
            for run in report.runs:
                lines += ["", f"{run.label.upper()} verification ({'pass' if run.ok else 'FAIL'}):", ""]
                lines += [f"- [{check.status}] {check.name}: {check.detail}" for check in run.outcomes]
            lines += [f"- {note}" for note in report.skipped]
            for title, checks in (("ModelArts conformance", report.conformance), ("Stack", report.stack)):
                if checks:
                    lines += ["", f"{title}:", ""]
                    lines += [f"- [{check.status}] {check.name}: {check.detail}" for check in checks]
        for section in (*SECTIONS, "error"):
            entries = record.manifest.get(section)
            if entries:
                lines += ["", f"<details><summary>{section} ({len(entries)} entries)</summary>", "", "```",
                          *entries, "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def summary_table(records: Sequence[CellRecord], *, tty: bool) -> str:
    """The terminal summary: a rich table on a terminal, aligned plain columns otherwise."""
    rows = table_rows(records)
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="matrix")
        for header in HEADERS:
            table.add_column(header)
        for row in rows:
            style = {CellStatus.FAILED.value: "red", CellStatus.PASSED.value: "green"}.get(row[1], "")
            table.add_row(*row, style=style)
        console = Console(force_terminal=True, width=max(shutil.get_terminal_size().columns, 160))
        with console.capture() as capture:
            console.print(table)
        return capture.get().rstrip("\n")
    widths = [max(len(value) for value in column) for column in zip(HEADERS, *rows, strict=False)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in [HEADERS, *rows])


def merge(reports_dir: Path, paths: Sequence[Path], ids: Sequence[str], *, tty: bool | None = None) -> int:
    """The closing job of a CI matrix: the records its cell jobs left (`paths`), written as this directory's
    report (matrix/<id>.json, matrix.json, matrix.md); the table; 1 when a cell failed or left no record.
    Nothing is written unless every record is valid (collect)."""
    records, missing = collect(paths, ids)
    for record in records:
        write_cell(reports_dir, record)
    # from the records merged, not the directory: a record left there by an earlier merge is no cell of this one
    _write_report_files(reports_dir, records)
    return _show(records, tty=tty, missing=missing)


def _show(records: Sequence[CellRecord], *, tty: bool | None, missing: Sequence[str] = ()) -> int:
    """The table, then each failed cell with its reason and each cell without a record; 1 when there is any."""
    print(summary_table(records, tty=sys.stdout.isatty() if tty is None else tty))
    failed = [record for record in records if record.status is CellStatus.FAILED]
    for record in failed:
        print(f"FAILED {record.id}: {record.reason}")
    for cell_id in missing:
        print(f"FAILED {cell_id}: no record (its job did not run to the end)")
    return 1 if failed or missing else 0


def print_summary(reports_dir: Path, *, run_token: str = "", tty: bool | None = None) -> int:
    """For `nox -s matrix`'s closing session: the table of matrix.json's cells (those of run `run_token` when
    given); 1 when any of them failed, listing each with its reason."""
    path = reports_dir / JSON_NAME
    if not os.path.lexists(path):
        print(f"no matrix report at {path}")
        return 1
    try:
        document = load_json(read_bounded(path, limit=REPORT_LIMIT, what="matrix report"))
        cells = document.get("cells") if isinstance(document, dict) else None
        if not isinstance(cells, list):
            raise ValueError("it holds no 'cells' list")
        records = []
        for index, cell in enumerate(cells):
            try:
                records.append(load_record(cell))
            except ValueError as error:
                raise ValueError(f"cells[{index}]: {error}") from None
    except (ConfigError, ValueError) as error:
        print(f"the matrix report {path} cannot be read ({error}); run the matrix again to rewrite it")
        return 1
    if run_token:
        records = [record for record in records if record.run == run_token]
    return _show(records, tty=tty)
