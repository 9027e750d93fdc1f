"""The matrix: fetch → build → verify (→ push) for every entry of a versions file, resumable and shardable.

Each cell runs the pipeline's steps, as `inv fetch build verify push` does; a failing cell is recorded and the
next one runs; at the end MatrixError (exit 1) names every failed cell with its reason. A cell whose input hash
(matrix.cells) equals the one of its last success, and whose image is still in the engine, is skipped with a
line saying so, unless --rerun.

With the registry (--push or --check-registry), for runners that start empty: a cell whose tag in the registry
carries the image hash it has now (decided from versions.lock, before any download) is reported unchanged
without fetching or building, and a cell that runs builds with BuildKit's cache from its tag in the registry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelarts_images import declared, pipeline
from modelarts_images.declared import StepName
from modelarts_images.engine.api import Engine, RegistryLogin
from modelarts_images.errors import ConfigError, ModelArtsImagesError, VerifyError
from modelarts_images.inputs import Steps, cell_hash, cell_inputs, changed_inputs, image_hash, tree_digest
from modelarts_images.matrix import report as reporting
from modelarts_images.matrix.cells import CellRecord, CellStatus, shard_cells
from modelarts_images.matrix.state import State
from modelarts_images.model import FetchedImage, ImageSpec
from modelarts_images.options import Options
from modelarts_images.paths import CONTEXT_TEMPLATE
from modelarts_images.shared.credentials import Credentials
from modelarts_images.shared.files import check_writable
from modelarts_images.shared.text import one_line

log = logging.getLogger(__name__)


class MatrixError(ModelArtsImagesError):
    """One or more cells of the matrix failed."""

    exit_code = 1


@dataclass(frozen=True, kw_only=True)
class MatrixOptions:
    options: Options
    push: bool = False
    rerun: bool = False  # run cells unchanged since their last success too
    shard: tuple[int, int] | None = None
    flavor_id: str | None = None  # for the training-job bodies
    run_token: str = ""  # marks the records of one nox run, for its closing summary
    template_dir: Path = CONTEXT_TEMPLATE  # hashed into every cell's inputs
    check_registry: bool = False  # ask the registry whether a cell changed, and build with its cache
    on_platform: bool = False  # with push: staged, verified on ModelArts, then released under its own tag

    @property
    def asks_registry(self) -> bool:
        return self.push or self.check_registry

    @property
    def steps(self) -> Steps:
        options = self.options
        verify = options.verify
        return Steps(build=options.build, device=verify.device, push=self.push,
                     extra_tags=options.push.extra_tags if self.push else (), platform=self.on_platform,
                     nodes=verify.nodes, distributed=(verify.launcher.value, str(verify.procs_per_node or ""),
                                                      str(verify.master_port), str(verify.rendezvous_timeout)))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _Cell:
    """One cell's record while it runs: each step adds what it found, so a failure keeps what came before."""

    def __init__(self, image: ImageSpec) -> None:
        self.image = image
        self.record = CellRecord.start(image)

    def add(self, **found: Any) -> None:
        self.record = dataclasses.replace(self.record, **found)

    def took(self, clock: str, seconds: float) -> None:
        self.add(durations={**self.record.durations, clock: round(seconds, 3)})

    def clock(self, step: StepName, seconds: float) -> None:
        """A step's time, on the record's clock for it (the build's comes from the engine's own record)."""
        clock = _CLOCKS.get(step)
        if clock is None:
            return
        so_far = self.record.durations.get(clock, 0.0) if step is StepName.MANIFEST else 0.0
        self.took(clock, so_far + seconds)


# The record's clocks: the verification's includes the manifest of the image it verified.
_CLOCKS = {StepName.REGISTRY: "registry", StepName.FETCH: "fetch", StepName.VERIFY: "verify",
           StepName.MANIFEST: "verify", StepName.PUSH: "push"}


class Runner:
    def __init__(self, matrix: MatrixOptions, *, engine: Callable[[], Engine],
                 out: Callable[[str], None] = print) -> None:
        self.matrix = matrix
        self.options = matrix.options
        self._engine = engine
        self.out = out
        self.state = State(self.options.reports_dir)
        self._logins: dict[str, Credentials | None] = {}
        self.context_digest = tree_digest(matrix.template_dir)
        self.verify_digest = tree_digest(self.options.verify.script_dir)

    def run(self, images: Sequence[ImageSpec]) -> list[CellRecord]:
        records = []
        last = self.state.read()
        for image in images:
            cell = _Cell(image)
            try:
                self._run_cell(cell, last.get(image.id))
            except ModelArtsImagesError as error:
                cell.add(status=CellStatus.FAILED, reason=str(error))
            except Exception as error:  # a bug or an engine hiccup in one cell must not stop the others
                log.debug("cell %s", image.id, exc_info=True)
                cell.add(status=CellStatus.FAILED, reason=f"{type(error).__name__}: {error}")
            record = dataclasses.replace(cell.record, finished=cell.record.finished or _now(),
                                         run=self.matrix.run_token)
            if record.status is CellStatus.FAILED:
                self.out(f"{image.id}: FAILED: {record.reason.splitlines()[0] if record.reason else ''}")
                self.state.update(image.id, None)
            elif record.status is CellStatus.PASSED:
                self.state.update(image.id, record)
            with pipeline.stage(ConfigError):  # the reports directory is a setting
                reporting.write_cell(self.options.reports_dir, record)
            records.append(record)
        return records

    def _run_cell(self, cell: _Cell, last: CellRecord | None) -> None:
        matrix = self.matrix
        left_out = {StepName.REGISTRY} if not matrix.asks_registry or matrix.rerun else set()
        if not matrix.push:
            left_out |= {StepName.PUSH, StepName.TRAINING_JOB}
        if not matrix.on_platform:
            left_out |= {StepName.PLATFORM, StepName.RELEASE}
        steps = [step for step in declared.MATRIX.steps if step not in left_out]

        def staged(image: ImageSpec) -> ImageSpec:
            """The tag a cell is pushed and verified under on the platform: its own, with its input hash."""
            return dataclasses.replace(image, tag=f"{image.tag}-staging-{cell.record.hash[:12]}")

        run = pipeline.Run(options=self.options, images=(cell.image,), connect=lambda error: self._engine(),
                           show=lambda step, item: self._show(cell, last, step, item), inputs=self._inputs,
                           cache=self._registry_cache, credentials=self._credentials, flavor_id=matrix.flavor_id,
                           staged=staged if matrix.on_platform else None, say=self.out)
        if pipeline.execute(steps, run, timed=cell.clock).stopped_at is None:
            cell.add(status=CellStatus.PASSED)

    def _show(self, cell: _Cell, last: CellRecord | None, step: StepName, item: Any) -> None:
        """What the cell's record takes from each step, and the matrix's decisions between them."""
        if step is StepName.REGISTRY:
            self._registry(cell, item)
        elif step is StepName.FETCH:
            (fetched,) = item.images
            self._fetched(cell, last, fetched)
        elif step is StepName.BUILD:
            self.out(pipeline.text(step, item))
            cell.add(image_id=item.image_id, size=item.size, layers=item.stack or item.layers,
                     steps_ran=item.steps_ran, steps_cached=item.steps_cached, layers_pulled=item.pulled)
            cell.took("build", item.duration)
        elif step is StepName.VERIFY:
            cell.add(verification=item.report)
            self.out(pipeline.format_report(item.report))
        elif step is StepName.MANIFEST:
            cell.add(manifest=item)
            failure = cell.record.verification.failure() if cell.record.verification else None
            if failure is not None:  # after the manifest: a failed cell's record keeps what its image holds
                raise VerifyError(failure)
        elif step is StepName.PUSH:
            self.out(pipeline.text(step, item))
            (record,) = item
            cell.add(digest=record.digest, pushed=record.reference,
                     staged=record.reference if self.matrix.on_platform else None)
        elif step is StepName.PLATFORM:
            cell.add(platform=item.report)
            self.out(pipeline.format_report(item.report))
            failure = item.report.failure()
            if failure is not None:  # the staged tag stays; the release tag is not written
                raise VerifyError(failure)
        elif step is StepName.RELEASE:
            self.out(pipeline.text(step, item))
            cell.add(pushed=item.reference, digest=item.digest)
        elif step is StepName.TRAINING_JOB:
            cell.add(training_job=str(item.body))

    def _fetched(self, cell: _Cell, last: CellRecord | None, fetched: FetchedImage) -> None:
        """Whether the cell's success still counts: its inputs, known once fetched, against its last success's."""
        image = cell.image
        inputs = self._inputs(fetched)
        digest = cell_hash(inputs)
        cell.add(inputs=inputs, hash=digest,
                 changed=tuple(changed_inputs(last.inputs if last else None, inputs)))
        if last is not None and last.hash == digest and not self.matrix.rerun:
            if self._still_there(image.reference, last.image_id):
                self.out(f"{image.id}: skipped, inputs unchanged since its success at {last.finished} "
                         f"(hash {digest[:12]}; --rerun runs it again)")
                # the report keeps what the last success found, marked as skipped in this run
                cell.record = dataclasses.replace(last, status=CellStatus.SKIPPED, changed=(),
                                                  reason=f"inputs unchanged since {last.finished}")
                raise pipeline.Stop
            self.out(f"{image.id}: inputs unchanged, but image {image.reference} is gone from the engine: running it")
        elif last is not None and not self.matrix.rerun:
            self.out(f"{image.id}: running, changed: {', '.join(cell.record.changed)}")
        else:
            self.out(f"{image.id}: running" + (" (--rerun)" if self.matrix.rerun and last else ""))

    def _inputs(self, fetched: FetchedImage) -> dict[str, str]:
        return cell_inputs(fetched, self.matrix.steps, context_digest=self.context_digest,
                           verify_digest=self.verify_digest)

    def _registry(self, cell: _Cell, found: pipeline.InRegistry) -> None:
        """A cell whose tag in the registry carries the input hash the cell has now (decided from versions.lock's
        sha256, before any download) ends here, its record saying so. When the lock does not pin everything or
        the registry cannot say, the cell runs."""
        if found.inputs is None:
            log.info("%s: versions.lock does not pin all of it: fetching before asking the registry", cell.image.id)
            return
        if found.problem is not None:
            self.out(f"{cell.image.id}: the registry cannot say whether it changed ({one_line(found.problem, 160)}): "
                     "running it")
            return
        if not found.unchanged or found.remote is None:
            return
        remote = found.remote
        self.out(f"{cell.image.id}: unchanged, {remote.reference} in the registry carries its input hash "
                 f"{image_hash(found.inputs)[:12]} (--rerun runs it again)")
        cell.add(status=CellStatus.SKIPPED, inputs=found.inputs, hash=cell_hash(found.inputs), digest=remote.digest,
                 pushed=remote.reference, reason=f"unchanged in the registry: {remote.reference} ({remote.digest})")
        raise pipeline.Stop

    def _registry_cache(self, image: ImageSpec) -> pipeline.RegistryCache | None:
        """The cell's own tag in its registry, as BuildKit's cache source, with the login reading it needs."""
        if not self.matrix.asks_registry:
            return None
        try:
            credentials = self._credentials(image.registry)
        except ModelArtsImagesError as error:
            log.info("%s: no login for the registry cache (%s)", image.id, error)
            credentials = None
        logins = () if credentials is None else (
            RegistryLogin(registry=image.registry, username=credentials.username, password=credentials.password),)
        return pipeline.RegistryCache(references=(image.reference,), logins=logins)

    def _credentials(self, registry: str) -> Credentials | None:
        """The login for a registry, looked up once per run (asked by a cell's registry step and for its cache)."""
        if registry not in self._logins:
            self._logins[registry] = pipeline.credentials_step(registry, self.options.push, self._engine(),
                                                               os.environ)
        return self._logins[registry]

    def _still_there(self, reference: str, image_id: str) -> bool:
        try:
            config = self._engine().image(reference)
        except ModelArtsImagesError:  # the engine cannot say: run the cell
            return False
        return bool(image_id) and config is not None and config.image_id == image_id


def connect_once() -> Callable[[], Engine]:
    """The engine, connected on first use and shared by every cell: a matrix that selects no cell never needs one."""
    connected: list[Engine] = []

    def get() -> Engine:
        if not connected:
            from modelarts_images.engine.adapter import connect

            connected.append(connect())
        return connected[0]

    return get


def run_matrix(images: Sequence[ImageSpec], matrix: MatrixOptions, *, file_ids: Sequence[str] | None = None,
               engine: Callable[[], Engine] | None = None, out: Callable[[str], None] = print,
               summary: bool = True) -> list[CellRecord]:
    """Run the selected cells of this shard, write the reports, and raise MatrixError naming every failed cell.

    `file_ids`: every cell id of the versions file, in its order (default: the selected ones); shards are cut by
    position in it, and the reports cover its cells, so runs of single cells add up to the whole matrix."""
    ids = list(file_ids) if file_ids is not None else [image.id for image in images]
    cells = shard_cells(images, matrix.shard, file_ids=ids)
    if matrix.shard is not None:
        out(f"shard {matrix.shard[0]}/{matrix.shard[1]}: {len(cells)} of {len(images)} selected cells: "
            + (", ".join(image.id for image in cells) or "none"))
    reports_dir = matrix.options.reports_dir
    check_writable(reports_dir)  # before the builds, not after them
    records = Runner(matrix, engine=engine or connect_once(), out=out).run(cells)
    with pipeline.stage(ConfigError):
        reporting.write_reports(reports_dir, ids)
    if summary:
        out(reporting.summary_table(records, tty=sys.stdout.isatty()))
    out(f"reports: {reports_dir / reporting.JSON_NAME}, {reports_dir / reporting.MD_NAME}")
    failed = [record for record in records if record.status is CellStatus.FAILED]
    if failed:
        raise MatrixError(f"{len(failed)} of {len(records)} matrix cell(s) failed:\n"
                          + "\n".join(f"  {record.id}: {record.reason}" for record in failed))
    return records
