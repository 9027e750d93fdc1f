"""The matrix: fetch → build → verify (→ push) for every entry of a versions file, resumable and shardable.

    python -m modelarts_images.matrix [--versions FILE] [--only ID ...] [--device auto] [--push] [--force]
                                      [--backend buildkit] [--shard K/N] [--config invoke-like.yaml]

`nox -s matrix` runs this module once per cell (`--only ID`), or once for every cell of `--versions FILE`.
Each cell calls the same library functions as `inv fetch build verify push`; a failing cell is recorded and the
next one runs; at the end MatrixError (exit 1) names every failed cell with its reason.

Resumable: a cell's input hash covers the build context template (context/), the build arguments and target,
the sha256 of every artifact fetch resolved (installer, wheels, dependency wheels), the verification script
(verify/), the backend and the steps asked for (device, push, extra tags). A cell whose hash equals the one of
its last success, and whose image is still in the engine, is skipped with a line saying so, unless --force.
State lives in <reports_dir>/matrix-state.json; a failed cell loses its entry, so it runs again next time.

Shardable: `--shard K/N` (1 <= K <= N) keeps the cells whose position in the versions file, counted from 0, is
K-1 modulo N: every cell is in exactly one shard, and the split depends only on the file's order. The position is
the one in the whole file, before --only narrows it, so a cell lands in the same shard whether it runs alone (as
in nox's per-cell sessions) or with the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import build as building
from . import config, settings, trainingjob
from . import fetch as fetching
from . import publish as publishing
from . import report as reporting
from . import verify as verifying
from .context import TEMPLATE_DIR, without_credentials
from .contract import VERIFY_TIMEOUT_S
from .errors import ConfigError, ModelArtsImagesError, RegistryError, VerifyError
from .files import check_writable, write_atomic
from .model import FetchedImage, ImageSpec

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = "matrix-state.json"
STATE_SCHEMA = 1
RUN_TOKEN_ENV = "MODELARTS_MATRIX_RUN"
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


class MatrixError(ModelArtsImagesError):
    """One or more cells of the matrix failed."""

    exit_code = 1


# --------------------------------------------------------------------------------------------------------------
# Pure: shards and input hashes


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N), 1 <= K <= N; None for no sharding."""
    if text is None or text == "":
        return None
    head, slash, tail = text.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index = count = 0
    if not slash or count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard: {text!r} must be K/N with 1 <= K <= N, e.g. --shard 2/3")
    return index, count


def in_shard(position: int, spec: tuple[int, int] | None) -> bool:
    """Whether the item at `position` (from 0) belongs to shard K of N (every item does without a spec)."""
    if spec is None:
        return True
    index, count = spec
    return position % count == index - 1


def shard_cells(images: Sequence[ImageSpec], spec: tuple[int, int] | None, *,
                file_ids: Sequence[str]) -> list[ImageSpec]:
    """The selected images that belong to shard K of N by their position among `file_ids` (every id of the
    versions file, in its order), not in the selection: `--only b --shard 2/2` must agree with `--shard 2/2`."""
    positions = {cell_id: position for position, cell_id in enumerate(file_ids)}
    missing = [image.id for image in images if image.id not in positions]
    if missing:
        raise ConfigError(f"--shard: {', '.join(missing)} not among the versions file's cells")
    return [image for image in images if in_shard(positions[image.id], spec)]


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the relative names and contents of every file under root (sorted); empty tree: its name."""
    digest = hashlib.sha256()
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Steps:
    """What the matrix is asked to do with each cell, as far as it decides whether a success still counts."""

    backend: str
    device: str
    push: bool
    extra_tags: tuple[str, ...] = ()
    base_prefix: str | None = None


def cell_inputs(fetched: FetchedImage, steps: Steps, *, context_digest: str, verify_digest: str) -> dict[str, str]:
    """Each input of a cell, hashed on its own (so a rerun can say which one changed)."""
    image = fetched.image
    inputs = building.build_inputs(fetched, base_prefix=steps.base_prefix)
    return {
        "dockerfile": context_digest,
        "build-args": _digest({
            "reference": inputs.reference, "target": inputs.target, "hermetic": inputs.hermetic,
            "args": inputs.build_args,
            # the index itself decides what a non-hermetic build installs; credentials only as part of a hash
            "pip_index": hashlib.sha256(image.pip_index.encode("utf-8")).hexdigest(),
            "pip_index_shown": without_credentials(image.pip_index),
        }),
        # by content only, in a fixed order: a closure fresh from the resolver and the same one read back from
        # versions.lock may list (and spell) the files differently
        "artifacts": _digest({"installer": fetched.installer.sha256,
                              "wheels": sorted(item.sha256 for item in fetched.wheels),
                              "closure": None if fetched.closure is None else sorted(
                                  item.sha256 for item in fetched.closure)}),
        "verify-script": verify_digest,
        "backend": _digest(steps.backend),
        "steps": _digest({"device": steps.device, "push": steps.push, "extra_tags": steps.extra_tags}),
    }


def cell_hash(parts: Mapping[str, str]) -> str:
    return _digest(dict(parts))


def changed_inputs(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str]:
    """Names of the inputs that differ (all of them when nothing was recorded)."""
    if not old:
        return sorted(new)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


# --------------------------------------------------------------------------------------------------------------
# State: the last success of each cell


class State:
    """<reports_dir>/matrix-state.json, read and updated under an exclusive lock (shards may share a directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            document = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        cells = document.get("cells") if isinstance(document, dict) else None
        return dict(cells) if isinstance(cells, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update(self, cell_id: str, entry: dict[str, Any] | None) -> None:
        try:
            with self._locked():
                cells = self.read()
                if entry is None:
                    cells.pop(cell_id, None)
                else:
                    cells[cell_id] = entry
                write_atomic(self.path, json.dumps({"schema": STATE_SCHEMA, "cells": cells}, indent=2,
                                                   sort_keys=True) + "\n", what="matrix state")
        except OSError as error:  # the lock file: write_atomic names its own failures
            raise ConfigError(f"cannot lock the matrix state {self.path}: {error.strerror or error}") from error


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True, kw_only=True)
class MatrixOptions:
    settings: settings.Settings
    device: str = "auto"
    push: bool = False
    force: bool = False
    shard: tuple[int, int] | None = None
    work_dir: Path = ROOT / "build"
    timeout: float = VERIFY_TIMEOUT_S
    offline: bool = False
    locked: bool = False
    region: str | None = None
    flavor_id: str | None = None
    run_token: str = ""
    verify_dir: Path = verifying.VERIFY_DIR
    template_dir: Path = TEMPLATE_DIR

    @property
    def reports_dir(self) -> Path:
        return self.settings.reports_dir

    @property
    def steps(self) -> Steps:
        return Steps(backend=self.settings.backend, device=self.device, push=self.push,
                     extra_tags=self.settings.extra_tags if self.push else (),
                     base_prefix=self.settings.base_prefix or None)


@dataclass
class Cell:
    """One cell's record while it runs; `record()` is what the reports and the state keep."""

    image: ImageSpec
    status: str = FAILED
    reason: str = ""
    hash: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    image_id: str = ""
    size: int | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    manifest: dict[str, list[str]] = field(default_factory=dict)
    digest: str | None = None
    pushed: str | None = None
    training_job: str | None = None
    finished: str = ""

    def record(self, run_token: str) -> dict[str, Any]:
        return {
            "id": self.image.id, "reference": self.image.reference, "status": self.status, "reason": self.reason,
            "hash": self.hash, "inputs": self.inputs, "changed": self.changed,
            "durations": {key: round(value, 3) for key, value in self.durations.items()},
            "image_id": self.image_id, "size": self.size, "layers": self.layers,
            "python": self.image.python, "cuda": self.image.cuda, "torch": self.image.torch,
            "verification": self.verification, "manifest": self.manifest, "digest": self.digest,
            "pushed": self.pushed, "training_job": self.training_job, "finished": self.finished, "run": run_token,
        }


Engines = Callable[[], tuple[Any, Any]]  # () -> (docker client, engine_run.Containers)


def _default_engines(timeout: float) -> Engines:
    cached: list[tuple[Any, Any]] = []

    def get() -> tuple[Any, Any]:
        if not cached:
            from .engine import run as engine_run

            client = engine_run.connect()
            cached.append((client, engine_run.Containers(client, timeout=timeout)))
        return cached[0]

    return get


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _still_there(client: Any, reference: str, image_id: str) -> bool:
    try:
        return bool(image_id) and str(client.images.get(reference).id) == image_id
    except Exception:  # not there, or the engine cannot say: run the cell
        return False


class Runner:
    def __init__(self, options: MatrixOptions, *, engines: Engines | None = None,
                 out: Callable[[str], None] = print) -> None:
        self.options = options
        self.engines = engines or _default_engines(options.timeout)
        self.out = out
        self.state = State(options.reports_dir / STATE_FILE)
        self.context_digest = tree_digest(options.template_dir)
        self.verify_digest = tree_digest(options.verify_dir)

    def fetch_options(self) -> fetching.FetchOptions:
        resolved = self.options.settings
        return fetching.FetchOptions(cache_dir=resolved.cache_dir,
                                     lock_path=resolved.selection.versions.with_suffix(".lock"),
                                     jobs=resolved.jobs, offline=self.options.offline, locked=self.options.locked,
                                     mirrors=resolved.mirrors)

    def run(self, images: Sequence[ImageSpec]) -> list[dict[str, Any]]:
        records = []
        last = self.state.read()
        for image in images:
            cell = Cell(image=image)
            try:
                self._run_cell(cell, last.get(image.id))
            except ModelArtsImagesError as error:
                cell.status, cell.reason = FAILED, str(error)
            except Exception as error:  # a bug or an engine hiccup in one cell must not stop the others
                log.debug("cell %s", image.id, exc_info=True)
                cell.status, cell.reason = FAILED, f"{type(error).__name__}: {error}"
            cell.finished = cell.finished or _now()
            record = cell.record(self.options.run_token)
            if cell.status == SKIPPED:
                # the report keeps what the last success found, marked as skipped in this run
                record = {**last[image.id], "status": SKIPPED, "run": self.options.run_token,
                          "reason": f"inputs unchanged since {last[image.id].get('finished')}", "changed": []}
            if cell.status == FAILED:
                self.out(f"{image.id}: FAILED: {cell.reason.splitlines()[0] if cell.reason else ''}")
                self.state.update(image.id, None)
            if cell.status == PASSED:
                self.state.update(image.id, record)
            reporting.write_cell(self.options.reports_dir, record)
            records.append(record)
        return records

    def _run_cell(self, cell: Cell, last: dict[str, Any] | None) -> None:
        options, spec = self.options, cell.image
        started = time.monotonic()
        (fetched,), _summary = fetching.fetch_images([spec], self.fetch_options())
        cell.durations["fetch"] = time.monotonic() - started
        cell.inputs = cell_inputs(fetched, options.steps, context_digest=self.context_digest,
                                  verify_digest=self.verify_digest)
        cell.hash = cell_hash(cell.inputs)
        cell.changed = changed_inputs(last.get("inputs") if last else None, cell.inputs)
        if last and last.get("hash") == cell.hash and not options.force:
            client, _ = self.engines()
            if _still_there(client, spec.reference, str(last.get("image_id", ""))):
                self.out(f"{spec.id}: skipped, inputs unchanged since its success at {last.get('finished')} "
                         f"(hash {cell.hash[:12]}; --force runs it again)")
                cell.status = SKIPPED
                cell.finished = str(last.get("finished", ""))
                return
            self.out(f"{spec.id}: inputs unchanged, but image {spec.reference} is gone from the engine: running it")
        elif last and not options.force:
            self.out(f"{spec.id}: running, changed: {', '.join(cell.changed)}")
        else:
            self.out(f"{spec.id}: running" + (" (--force)" if options.force and last else ""))
        self._build(cell, fetched)
        self._verify(cell)
        if options.push:
            self._push(cell)
        cell.status = PASSED

    def _build(self, cell: Cell, fetched: FetchedImage) -> None:
        options = self.options
        result = building.build_image(fetched, backend=options.settings.backend, work_dir=options.work_dir,
                                      base_prefix=options.settings.base_prefix or None)
        self.out(building.format_result(result))
        cell.durations["build"] = result.duration
        cell.image_id, cell.size = result.image_id, result.size
        cell.layers = [{"size": layer.size, "step": layer.step, "from_base": layer.from_base}
                       for layer in result.layers]

    def _verify(self, cell: Cell) -> None:
        options, spec = self.options, cell.image
        started = time.monotonic()
        _, containers = self.engines()
        gpu = containers.gpu_support(spec.reference) if options.device == "auto" else None
        devices, skipped = verifying.resolve_devices(options.device, gpu)
        report = verifying.verify_image(containers, spec, devices=devices, skipped=skipped,
                                        script_dir=options.verify_dir)
        verifying.save_report(report, options.reports_dir / "verify")
        cell.verification = verifying.report_dict(report)
        cell.manifest = reporting.capture_manifest(containers, spec.reference)
        cell.durations["verify"] = time.monotonic() - started
        self.out(verifying.format_report(report))
        message = verifying.failure_message(f"{spec.id} ({spec.reference})", report.outcomes())
        if message is not None:
            raise VerifyError(message)

    def _push(self, cell: Cell) -> None:
        from . import engine

        options, spec = self.options, cell.image
        started = time.monotonic()
        push_options = publishing.PushOptions(reports_dir=options.reports_dir, extra_tags=options.settings.extra_tags,
                                              revision=publishing.git_revision(ROOT), region=options.region)
        (record,) = publishing.push_images([spec], push_options, client=engine.connect(RegistryError),
                                           env=os.environ)
        cell.durations["push"] = time.monotonic() - started
        self.out(publishing.summary([record]))
        cell.digest, cell.pushed = record.digest, record.reference
        if record.digest:
            body = trainingjob.training_job_body(spec, digest=record.digest, flavor_id=options.flavor_id)
            cell.training_job = str(trainingjob.write_body(options.reports_dir, spec.id, body))


def run_matrix(images: Sequence[ImageSpec], options: MatrixOptions, *, file_ids: Sequence[str] | None = None,
               engines: Engines | None = None, out: Callable[[str], None] = print,
               summary: bool = True) -> list[dict[str, Any]]:
    """Run the selected cells of this shard, write the reports, and raise MatrixError naming every failed cell.

    `file_ids`: every cell id of the versions file, in its order (default: the selected ones); shards are cut by
    position in it, and the reports cover its cells, so runs of single cells add up to the whole matrix."""
    ids = list(file_ids) if file_ids is not None else [image.id for image in images]
    cells = shard_cells(images, options.shard, file_ids=ids)
    if options.shard is not None:
        out(f"shard {options.shard[0]}/{options.shard[1]}: {len(cells)} of {len(images)} selected cells: "
            + (", ".join(image.id for image in cells) or "none"))
    check_writable(options.reports_dir)  # before the builds, not after them
    records = Runner(options, engines=engines, out=out).run(cells)
    reporting.write_reports(options.reports_dir, ids)
    if summary:
        out(reporting.summary_table(records, tty=sys.stdout.isatty()))
    out(f"reports: {options.reports_dir / reporting.JSON_NAME}, {options.reports_dir / reporting.MD_NAME}")
    failed = [record for record in records if record["status"] == FAILED]
    if failed:
        raise MatrixError(f"{len(failed)} of {len(records)} matrix cell(s) failed:\n"
                          + "\n".join(f"  {record['id']}: {record['reason']}" for record in failed))
    return records


# --------------------------------------------------------------------------------------------------------------
# Command line (what noxfile.py runs)


def _plain(value: Any) -> Any:
    if hasattr(value, "keys"):
        return {key: _plain(value[key]) for key in value.keys()}  # noqa: SIM118 - invoke's proxies are not Mappings
    return value


def load_section(config_file: str | None) -> dict[str, Any] | None:
    """invoke.yaml's `modelarts` section as invoke sees it: the project file, a runtime file, INVOKE_MODELARTS_*."""
    from invoke.config import Config

    runtime = _runtime_file(config_file)
    loaded = Config(project_location=ROOT, runtime_path=runtime)
    loaded.load_project()
    if runtime is not None:
        try:
            loaded.load_runtime()
        except Exception as error:  # invoke's own errors, and the YAML parser's, name no flag
            raise ConfigError(f"--config {config_file}: cannot be read: {error}") from error
    loaded.load_shell_env()
    section = _plain(loaded.get(settings.SECTION, None))
    return section if isinstance(section, dict) else None


def _runtime_file(config_file: str | None) -> Path | None:
    """--config's file; ConfigError when it is missing (invoke would skip it and run with the defaults)."""
    if not config_file:
        return None
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"--config {config_file}: no such file" + (" (a directory)" if path.is_dir() else ""))
    return path


def nox_cells(versions: Path | None = None) -> list[tuple[str, list[str]]]:
    """(id, tags) of each cell of versions.yaml (with invoke.yaml's fallbacks) for noxfile's parametrization:
    tags `cpu` or `cudaNN` (the CUDA major), e.g. `nox -t cuda11`."""
    resolved = settings.resolve(load_section(None), root=ROOT, versions=str(versions) if versions else None)
    images = config.load_versions(resolved.selection.versions, fallbacks=resolved.fallbacks).images
    return [(image.id, ["cpu" if image.is_cpu else f"cuda{image.cuda.split('.')[0]}"]) for image in images]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nox -s matrix --", description=__doc__.splitlines()[0])
    p.add_argument("--versions", help="versions file (default: versions.yaml, or modelarts.versions in invoke.yaml)")
    p.add_argument("--only", action="append", default=[], help="cell id to run; repeat for several (default: all)")
    p.add_argument("--device", default="auto", choices=verifying.DEVICE_CHOICES,
                   help="where to verify: cpu, gpu, both, or auto (the GPU when the engine has one)")
    p.add_argument("--push", action="store_true", help="push each verified image and write its training-job body")
    p.add_argument("--backend", choices=settings.BACKENDS, help="docker or buildkit (default: invoke.yaml's)")
    p.add_argument("--force", action="store_true", help="run every cell, even those unchanged since their success")
    p.add_argument("--shard", help="K/N: run only the K-th of N deterministic slices of the cells")
    p.add_argument("--timeout", type=float, default=VERIFY_TIMEOUT_S,
                   help="seconds a verification container may run")
    p.add_argument("--offline", action="store_true", help="fetch from the cache only")
    p.add_argument("--locked", action="store_true", help="refuse artifacts versions.lock does not pin")
    p.add_argument("--region", help="SWR region for the AK/SK login when the registry host does not name it")
    p.add_argument("--flavor", help="ModelArts flavor_id for the training-job bodies (default: by CUDA or CPU)")
    p.add_argument("--config", help="an extra invoke-style YAML file with a `modelarts:` section (like inv -f)")
    p.add_argument("--summary", action="store_true",
                   help="print the summary table of the last reports (of --run TOKEN's cells) and exit")
    p.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # nox: matrix_summary shows it
    p.add_argument("--run", default=os.environ.get(RUN_TOKEN_ENV, ""), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        resolved = settings.resolve(load_section(args.config), root=ROOT, versions=args.versions,
                                    backend=args.backend)
        if args.summary:
            return reporting.print_summary(resolved.reports_dir, run_token=args.run)
        versions = config.load_versions(resolved.selection.versions, fallbacks=resolved.fallbacks)
        images = config.select(versions, only=config.split_ids(args.only), all_images=not args.only)
        file_ids = [image.id for image in versions.images]
        options = MatrixOptions(settings=resolved, device=args.device, push=args.push, force=args.force,
                                shard=parse_shard(args.shard), timeout=args.timeout, offline=args.offline,
                                locked=args.locked, region=args.region, flavor_id=args.flavor, run_token=args.run)
        _show_engine_log()
        run_matrix(images, options, file_ids=file_ids, summary=not args.no_summary)
    except ModelArtsImagesError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def _show_engine_log() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("modelarts_images.engine").setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
