"""The matrix's command line: what `nox -s matrix -- ...` passes on (`python -m modelarts_images.matrix`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from modelarts_images.config import versions
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError, ModelArtsImagesError
from modelarts_images.frontend import load_section, options_for, output_failure, show_engine_log
from modelarts_images.matrix import ci
from modelarts_images.matrix import report as reporting
from modelarts_images.matrix.cells import parse_shard, shard_cells
from modelarts_images.matrix.runner import MatrixOptions, run_matrix
from modelarts_images.options import HELP, DeviceChoice, Flags, resolve
from modelarts_images.paths import ROOT

RUN_TOKEN_ENV = "MODELARTS_MATRIX_RUN"


def nox_cells(versions_file: Path | None = None) -> list[tuple[str, list[str]]]:
    """(id, tags) of each cell of versions.yaml (with invoke.yaml's fallbacks) for noxfile's parametrization:
    tags `cpu` or `cudaNN` (the CUDA major), e.g. `nox -t cuda11`."""
    options = resolve(load_section(None), Flags(versions=str(versions_file) if versions_file else None), root=ROOT)
    images = versions.load_versions(options.selection.versions, fallbacks=options.fallbacks).images
    return [(image.id, ci.cell_tags(image)) for image in images]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nox -s matrix --",
                                description="Fetch, build, verify (and push) every image of a versions file.")
    p.add_argument("--versions", help=HELP["versions"])
    p.add_argument("--only", action="append", default=[], help="cell id to run; repeat for several (default: all)")
    p.add_argument("--device", default=DeviceChoice.AUTO.value, choices=DeviceChoice.names(), help=HELP["device"])
    p.add_argument("--push", action="store_true", help="push each verified image and write its training-job body")
    p.add_argument("--backend", choices=Backend.names(), help=HELP["backend"])
    p.add_argument("--rerun", action="store_true", help="run every cell, even those unchanged since their success")
    p.add_argument("--force", action="store_true", help="the old name of --rerun (it says nothing about tags)")
    p.add_argument("--check-registry", action="store_true",
                   help="ask each cell's registry (as --push does): a tag carrying the cell's input hash is reported "
                        "unchanged without a build, and builds take unchanged layers from the tag's inline cache")
    p.add_argument("--replace-tag", action="store_true", help=HELP["replace_tag"])
    p.add_argument("--shard", help="K/N: run only the K-th of N deterministic slices of the cells")
    p.add_argument("--timeout", help=HELP["timeout"])
    p.add_argument("--offline", action="store_true", help=HELP["offline"])
    p.add_argument("--locked", action="store_true", help=HELP["locked"])
    p.add_argument("--region", help=HELP["region"])
    p.add_argument("--project", help=HELP["project"])
    p.add_argument("--flavor", help="ModelArts flavor_id for the training-job bodies (default: by CUDA or CPU)")
    p.add_argument("--config", help="an extra invoke-style YAML file with a `modelarts:` section (like inv -f)")
    p.add_argument("--summary", action="store_true",
                   help="print the summary table of the last reports (of --run TOKEN's cells) and exit")
    p.add_argument("--records", action="append", default=[], type=Path, metavar="PATH",
                   help="with --summary: merge the cell records in PATH (a file, or a directory of them, as a CI "
                        "system collects its jobs' reports/matrix/*.json) into this reports directory; repeatable. "
                        "Fails naming each failed cell and each cell with no record")
    p.add_argument("--list-json", action="store_true",
                   help="print the cells as a CI matrix, {\"include\": [{id, tags, gpu, runner, device}, ...]} "
                        "(GitHub Actions' fromJSON), and exit; runners from ci_runners in invoke.yaml")
    p.add_argument("--gitlab-pipeline", action="store_true",
                   help="print a GitLab child pipeline with one job per cell (extending .modelarts-cell from "
                        f"{ci.GITLAB_CELL_FILE}) and exit")
    p.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # nox: matrix_summary shows it
    p.add_argument("--run", default=os.environ.get(RUN_TOKEN_ENV, ""), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The matrix's exit code; output that cannot be written ends it as it ends a task (74, or 141 on a closed
    pipe)."""
    try:
        try:
            code = _main(argv)
        finally:  # argparse's --help and usage errors leave through SystemExit, with output still buffered
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except OSError as error:
        failure = output_failure(error)
        if failure is None:
            raise
        code, message = failure
        if message:
            print(message, file=sys.stderr)
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        flags = Flags(versions=args.versions, backend=args.backend, device=args.device, timeout=args.timeout,
                      offline=args.offline, locked=args.locked, region=args.region, project=args.project,
                      replace_tags=args.replace_tag)
        options = options_for(load_section(args.config), flags)
        if args.records and not args.summary:
            raise ConfigError("--records: goes with --summary (merge collected cell records into one report)")
        if args.summary and not args.records:
            return reporting.print_summary(options.reports_dir, run_token=args.run)
        if args.force:
            print("matrix: --force is now --rerun (run cells unchanged since their success); --replace-tag "
                  "replaces a pushed tag", file=sys.stderr)
        loaded = versions.load_versions(options.selection.versions, fallbacks=options.fallbacks)
        file_ids = [image.id for image in loaded.images]
        images = versions.select(loaded, only=versions.split_ids(args.only), all_images=not args.only)
        if args.summary:  # the cells the CI matrix was given (--only narrows it), in the file's order
            return reporting.merge(options.reports_dir, args.records, [image.id for image in images])
        if args.list_json or args.gitlab_pipeline:
            cells = ci.ci_cells(shard_cells(images, parse_shard(args.shard), file_ids=file_ids), options.ci_runners)
            document = ci.github_matrix(cells) if args.list_json else ci.gitlab_pipeline(cells)
            print(json.dumps(document, indent=None if args.list_json else 2))
            return 0
        matrix = MatrixOptions(options=options, push=args.push, rerun=args.rerun or args.force,
                               shard=parse_shard(args.shard), flavor_id=args.flavor, run_token=args.run,
                               check_registry=args.check_registry)
        show_engine_log()
        run_matrix(images, matrix, file_ids=file_ids, summary=not args.no_summary)
    except ModelArtsImagesError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


