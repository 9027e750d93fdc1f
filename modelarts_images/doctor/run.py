"""Doctor's run: every probe at once in threads, each bounded by its own timeout, the whole by a deadline; then
one row per check in a fixed order (report.py renders them, rows.py decides them)."""

from __future__ import annotations

import os
import platform as host_platform
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelarts_images.build import emulation
from modelarts_images.doctor import local, needs, rows
from modelarts_images.doctor.report import Level, Need, Report, Row
from modelarts_images.engine import probe
from modelarts_images.engine.adapter import engine_address
from modelarts_images.engine.api import is_local
from modelarts_images.engine.cli import BuildKitCli, find_buildkit_cli
from modelarts_images.errors import ConfigError, EngineError, RegistryError
from modelarts_images.fetch import lockfile
from modelarts_images.http import reach
from modelarts_images.model import ImageSpec
from modelarts_images.options import Options
from modelarts_images.publish import swr
from modelarts_images.shared.credentials import Credentials

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Bounds:
    """Seconds each probe may take, and all of them together (they run at once)."""

    source: float = reach.TIMEOUT_S  # DNS, TCP, TLS and the HTTP status of one host together
    engine: int = probe.TIMEOUT_S  # each request to the engine
    cli: float = 3.0  # each `docker ... version` the BuildKit check starts
    login: float = reach.TIMEOUT_S  # reaching a registry and trying its login together
    total: float = 4.5  # a check still running then is reported unfinished


@dataclass(frozen=True, kw_only=True)
class _Timed:
    value: Any
    seconds: float


def _timed(call: Callable[[], T]) -> Callable[[], _Timed]:
    def run() -> _Timed:
        started = time.monotonic()
        return _Timed(value=call(), seconds=time.monotonic() - started)
    return run


def _buildkit(timeout: float) -> tuple[BuildKitCli | None, str]:
    try:
        return find_buildkit_cli(timeout=timeout), ""
    except EngineError as error:
        return None, str(error)


def _credentials(registry: str, env: Mapping[str, str], options: Options) -> tuple[Credentials | None, str]:
    try:
        return swr.resolve_credentials(registry, env, region=options.push.region, project=options.push.project), ""
    except RegistryError as error:
        return None, str(error)


def _lock(path: Path) -> tuple[dict[str, lockfile.LockedImage], Row | None]:
    try:
        return lockfile.read(path), None
    except ConfigError as error:
        return {}, Row(check="versions.lock", level=Level.WARNING, detail=str(error),
                       fix="run `inv lock` to write it again", required=False)


def examine(images: Sequence[ImageSpec], options: Options, *, env: Mapping[str, str] | None = None,
            bounds: Bounds | None = None) -> Report:
    """What this machine and configuration can do for `images` under `options`: one row per check."""
    started = time.monotonic()
    env = os.environ if env is None else env
    bounds = bounds or Bounds()
    lock, lock_row = _lock(options.fetch.lock_path)
    cached = local.cached_digests(options.fetch.cache_dir, needs.pinned_digests(images, lock))
    pip_index, _ = local.host_pip_index(env)
    platform = local.platform_facts(env, options.platform.obs_dir)
    need = needs.needs_of(images, options, lock=lock, cached=cached, host_pip_index=pip_index,
                          keys_present=platform.configured)
    logins = {registry: _credentials(registry, env, options) for registry in need.registries}

    pool = ThreadPoolExecutor(max_workers=min(32, 4 + len(need.sources) + len(logins)),
                              thread_name_prefix="doctor")
    try:
        python_job = pool.submit(_timed(local.python_facts))
        engine_job = pool.submit(probe.probe, bounds.engine)
        buildkit_job = pool.submit(_timed(lambda: _buildkit(bounds.cli)))
        source_jobs = [pool.submit(reach.reach, source.url, timeout=bounds.source) for source in need.sources]
        login_jobs = {registry: pool.submit(reach.try_login, registry, credentials, timeout=bounds.login)
                      for registry, (credentials, problem) in logins.items() if not problem}
        every: list[Future[Any]] = [python_job, engine_job, buildkit_job, *source_jobs, *login_jobs.values()]
        wait(every, timeout=max(0.0, bounds.total - (time.monotonic() - started)))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # each probe ends by its own timeout

    def result(job: Future[T]) -> T | None:
        return job.result() if job.done() and not job.cancelled() else None

    out: list[Row] = []
    python = result(python_job)
    out.append(rows.python_row(python.value, python.seconds) if python else rows.unfinished("python", True,
                                                                                            bounds.total))
    engine = result(engine_job)
    out.append(rows.engine_row(engine) if engine else rows.unfinished("engine", True, bounds.total))
    buildkit = result(buildkit_job)
    if buildkit is not None:
        cli, problem = buildkit.value
        out.append(rows.buildkit_row(cli, problem, need.buildkit, buildkit.seconds))
    else:
        out.append(rows.unfinished("buildkit", need.buildkit, bounds.total))
    out.append(rows.nvidia_row(engine, need.gpu, need.gpu_reason))
    out += _emulation(need, engine)
    out += _disks(options, need, engine)
    if lock_row is not None:
        out.append(lock_row)
    for source, job in zip(need.sources, source_jobs, strict=True):
        reached = result(job)
        out.append(rows.source_row(source, reached) if reached else
                   rows.unfinished(f"source {source.origin}", need=source.need, bound=bounds.total))
    for registry, (credentials, problem) in logins.items():
        job_ = login_jobs.get(registry)
        check = result(job_) if job_ is not None else None
        out.append(rows.login_row(registry, source=credentials.source if credentials else "", check=check,
                                  problem=problem, bound=bounds.total,
                                  hide=credentials.hide if credentials else str, region=options.push.region))
    regions = [options.platform.region or swr.region_of(image.registry) for image in images]
    out.append(rows.platform_row(platform, need.platform, need.platform_reason, regions=regions))
    return Report(images=tuple(image.id for image in images), rows=tuple(out), elapsed=time.monotonic() - started,
                  deadline=bounds.total)


def _emulation(need: needs.Needs, engine: probe.EngineFacts | None) -> tuple[Row, ...]:
    reached = engine is not None and engine.reached and bool(engine.architecture)
    engine_arch = engine.architecture if engine is not None and reached else host_platform.machine()
    local_engine = engine.local if engine is not None else is_local(engine_address())

    def handlers(arch: str) -> tuple[str | None, str | None]:
        return emulation.handler(arch), emulation.emulation_problem(arch, engine_arch, local_engine=True)

    return rows.emulation_rows(need.arches, engine_arch, local=local_engine,
                               engine=engine.endpoint if engine is not None else "the engine", handlers=handlers)


def _disks(options: Options, need: needs.Needs, engine: probe.EngineFacts | None) -> tuple[Row, ...]:
    cache = local.disk_facts(options.fetch.cache_dir)
    engine_dir = None
    if engine is not None and engine.reached and engine.local and engine.root_dir and Path(engine.root_dir).is_dir():
        engine_dir = local.disk_facts(Path(engine.root_dir))
    return rows.disk_rows(cache, engine_dir, need.cache, need.engine, engine=engine)


__all__ = ["Bounds", "Need", "examine"]
