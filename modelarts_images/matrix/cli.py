"""The matrix's command line: what `nox -s matrix -- ...` passes on (`python -m modelarts_images.matrix`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from modelarts_images import declared
from modelarts_images.errors import ConfigError, Interrupted, ModelArtsImagesError
from modelarts_images.frontend import file_images, load_section, options_for, output_failure, show_engine_log
from modelarts_images.matrix import ci
from modelarts_images.matrix import report as reporting
from modelarts_images.matrix.cells import parse_shard, shard_cells
from modelarts_images.matrix.runner import MatrixOptions, run_matrix
from modelarts_images.options import Flags, Where, resolve
from modelarts_images.paths import ROOT

RUN_TOKEN_ENV = "MODELARTS_MATRIX_RUN"


def nox_cells(versions_file: Path | None = None) -> list[tuple[str, list[str]]]:
    """(id, tags) of each cell of versions.yaml (with invoke.yaml's fallbacks) for noxfile's parametrization:
    tags `cpu` or `cudaNN` (the CUDA major), e.g. `nox -t cuda11`."""
    options = resolve(load_section(None), Flags(versions=str(versions_file) if versions_file else None), root=ROOT)
    images, _ = file_images(options)
    return [(image.id, ci.cell_tags(image)) for image in images]


def parser() -> argparse.ArgumentParser:
    """The matrix's options: the settings declared for it (declared.MATRIX.flags), with their help."""
    p = argparse.ArgumentParser(prog="nox -s matrix --",
                                description="Fetch, build, verify (and push) every image of a versions file.")
    for setting in declared.flags_of(declared.MATRIX.flags, "matrix"):
        shown = argparse.SUPPRESS if setting.hidden else setting.help_in("matrix")
        if setting.takes is declared.Takes.SWITCH:
            p.add_argument(str(setting.flag), dest=setting.parameter, action="store_true", help=shown)
        elif setting.takes is declared.Takes.REPEAT:
            p.add_argument(str(setting.flag), dest=setting.parameter, action="append", default=[], help=shown,
                           metavar=setting.metavar)
        else:
            p.add_argument(str(setting.flag), dest=setting.parameter, help=shown, metavar=setting.metavar,
                           default=None if setting.key else setting.default, choices=setting.choices or None)
    p.set_defaults(run=os.environ.get(RUN_TOKEN_ENV, ""))
    return p


def _flags(args: argparse.Namespace) -> Flags:
    """The matrix's flags that fill Flags (it selects its cells itself: --only is not a selection of tasks)."""
    return Flags(**{str(setting.fills): getattr(args, str(setting.parameter))
                    for setting in declared.flags_of(declared.MATRIX.flags, "matrix")
                    if setting.fills and setting.name != "only"})


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
    except Interrupted:  # the cell's training jobs were stopped before this
        print("matrix: interrupted (SIGTERM)", file=sys.stderr)
        code = Interrupted.exit_code
    except KeyboardInterrupt:
        print("matrix: interrupted", file=sys.stderr)
        code = 130
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        options = options_for(load_section(args.config), _flags(args))
        if args.records and not args.summary:
            raise ConfigError("--records: goes with --summary (merge collected cell records into one report)")
        if any(not path for path in args.records):  # Path("") is ".": the whole working directory searched
            raise ConfigError("--records: an empty path; give a cell record, or a directory of them")
        if args.summary and not args.records:
            return reporting.print_summary(options.reports_dir, run_token=args.run)
        if args.force:
            print("matrix: --force is now --rerun (run cells unchanged since their success); --replace-tag "
                  "replaces a pushed tag", file=sys.stderr)
        everything, images = file_images(options, args.only)
        file_ids = [image.id for image in everything]
        if args.summary:  # the cells the CI matrix was given (--only narrows it), in the file's order
            return reporting.merge(options.reports_dir, [Path(path) for path in args.records],
                                   [image.id for image in images])
        if args.list_json or args.gitlab_pipeline:
            cells = ci.ci_cells(shard_cells(images, parse_shard(args.shard), file_ids=file_ids), options.ci_runners)
            document = ci.github_matrix(cells) if args.list_json else ci.gitlab_pipeline(cells)
            print(json.dumps(document, indent=None if args.list_json else 2))
            return 0
        on_platform = options.platform.on is Where.MODELARTS
        if on_platform and not args.push:
            raise ConfigError("--on modelarts: needs --push (ModelArts runs the image from SWR)")
        matrix = MatrixOptions(options=options, push=args.push, rerun=args.rerun or args.force,
                               shard=parse_shard(args.shard), flavor_id=args.flavor, run_token=args.run,
                               check_registry=args.check_registry, on_platform=on_platform)
        show_engine_log()
        run_matrix(images, matrix, file_ids=file_ids, summary=not args.no_summary)
    except ModelArtsImagesError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


