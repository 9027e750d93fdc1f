"""Every setting of a run, merged once: a flag beats the image's entry, which beats the file's defaults, which
beat invoke.yaml, which beats the built-in value.

Both front ends (tasks.py and the matrix) describe what their command line said as `Flags` and call
`resolve()`; the stages get their part of the resulting `Options` and never look at flags or invoke.yaml
themselves. Per-image values (base image, pip index, registry, ...) are merged by config.load_versions with
invoke.yaml's values as fallbacks; only --base-image and --base-prefix override an entry, at build time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from modelarts_images import declared
from modelarts_images.config import settings
from modelarts_images.config.tag_templates import check_templates
from modelarts_images.declared import DeviceChoice, Launcher

__all__ = ["BuildOptions", "Device", "DeviceChoice", "FetchOptions", "Flags", "Options", "PushOptions",
           "Selection", "VerifyOptions", "resolve"]
from modelarts_images.config.versions import split_ids, suggest
from modelarts_images.contract import (
    DEFAULT_MASTER_PORT,
    JOB_TIMEOUT_S,
    MAX_NODES,
    MAX_RENDEZVOUS_TIMEOUT_S,
    MIN_RENDEZVOUS_TIMEOUT_S,
    RENDEZVOUS_TIMEOUT_S,
    VERIFY_TIMEOUT_S,
)
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError
from modelarts_images.paths import ROOT, VERIFY_DIR
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.retry import REGISTRY_BACKOFF

N = TypeVar("N", int, float)


class Device(Choice):
    """Where a verification runs."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"


class Flags(declared.Values):
    """What a command line said, by the field each declared flag fills (declared.Setting.fills): None (or empty)
    where it said nothing. Numbers stay text until resolve() checks them, so a bad one is an error naming the
    flag rather than a traceback from the parser."""

    NAMES = declared.FLAG_FIELDS


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which images a run works on."""

    versions: Path
    only: tuple[str, ...]
    all_images: bool


@dataclass(frozen=True, kw_only=True)
class FetchOptions:
    cache_dir: Path
    lock_path: Path
    jobs: int = declared.default("jobs")
    # A transfer slower than min_speed bytes/s over a minute is cut, and resumed: a server that trickles a byte
    # every few seconds never trips a read timeout. A file whose size versions.lock does not record stops at
    # max_file_size, so an endless body cannot fill the disk.
    min_speed: int = declared.default("min_speed")
    max_file_size: int = declared.default("max_file_size")
    offline: bool = False
    locked: bool = False  # refuse anything versions.lock does not pin
    verify_cache: bool = False  # re-hash cached files instead of trusting their recorded size/mtime/inode
    refresh: bool = False  # resolve again even where versions.lock has an entry (`inv lock`)
    closure: bool = True
    mirrors: Mapping[str, str] = field(default_factory=dict)  # URL prefix -> replacement


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    backend: Backend
    work_dir: Path
    no_cache: bool = False
    base_image: str | None = None  # replaces every selected entry's base_image
    base_prefix: str | None = None  # prepended to base images that name no registry
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    reports_dir: Path  # <id>.json per image
    device: DeviceChoice = DeviceChoice.AUTO
    timeout: float = VERIFY_TIMEOUT_S
    size_budget: int | None = None  # bytes; None: over contract.IMAGE_SIZE_BUDGET only warns
    script_dir: Path = VERIFY_DIR  # mounted where ModelArts puts the job's code
    # A distributed run (verify.distributed): None takes the entry's verify.nodes (else 1), and the device's
    # processes per node (1 on the CPU, the GPU count on a GPU).
    nodes: int | None = None
    procs_per_node: int | None = None
    launcher: Launcher = Launcher.BOOT
    master_port: int = DEFAULT_MASTER_PORT
    rendezvous_timeout: int = RENDEZVOUS_TIMEOUT_S


@dataclass(frozen=True, kw_only=True)
class PushOptions:
    reports_dir: Path  # push-<id>.json per image
    replace_tags: bool = False  # replace a tag that names another image in the registry
    # Extra tags for each image, as templates: {tag} (the image's tag), {date} (UTC, YYYYMMDD), {revision}
    # (the project's git revision, 12 hex digits), e.g. "{tag}-{date}" or "{revision}".
    extra_tags: tuple[str, ...] = ()
    revision: str | None = None
    region: str | None = None  # the SWR region, when the registry host does not say it
    project: str | None = None  # the IAM project of the SWR long-term login (None: the region's own)
    dry_run: bool = False  # check names and the registry, change nothing
    use_docker_config: bool = True  # fall back to credentials `docker login` stored
    retries: int = REGISTRY_BACKOFF.retries  # for the registry's HTTP API
    backoff: float = REGISTRY_BACKOFF.base


class Where(Choice):
    """Where the verification runs (--on)."""

    LOCAL = "local"  # containers on this engine
    MODELARTS = "modelarts"  # training jobs on ModelArts


@dataclass(frozen=True, kw_only=True)
class PlatformOptions:
    """The verification as training jobs on ModelArts (--on modelarts)."""

    on: Where = Where.LOCAL
    obs_dir: str | None = None  # obs://bucket/folder/ for the jobs' code
    flavor: str | None = None  # None: the smallest the region offers for the device
    region: str | None = None  # None: the registry host's
    project_id: str | None = None  # None: the region's own project, looked up at IAM
    modelarts_endpoint: str | None = None  # None: the region's public host
    obs_endpoint: str | None = None
    iam_endpoint: str | None = None
    job_timeout: float = JOB_TIMEOUT_S
    detach: bool = False
    job: str | None = None  # attach to this job instead of creating one
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class Options:
    """A run's settings, merged once from flags, invoke.yaml and the built-in values."""

    selection: Selection
    fallbacks: Mapping[str, str]  # invoke.yaml's values for versions.yaml keys an entry leaves out
    reports_dir: Path
    ci_runners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # cell tag -> CI runner labels
    fetch: FetchOptions
    build: BuildOptions
    verify: VerifyOptions
    push: PushOptions
    platform: PlatformOptions = field(default_factory=PlatformOptions)


def resolve(section: Mapping[str, Any] | None, flags: Flags | None = None, *, root: Path = ROOT,
            revision: str | None = None) -> Options:
    """Merge the flags over invoke.yaml's `modelarts` section over the built-in values.

    A --versions flag is taken from the current directory; the reports directories given as flags, and the
    paths in invoke.yaml, from the project root.
    """
    flags = flags or Flags()
    configured = settings.resolve(section, root=root, backend=flags.backend)
    if any(not value.strip() for value in flags.only):
        raise ConfigError("--only: needs an image id (--only ID); repeat it for several")
    flagged = bool(flags.only) or flags.all_images  # replaces the configured selection as a whole
    selection = Selection(
        versions=Path(flags.versions).resolve() if flags.versions else configured.versions,
        only=split_ids(flags.only) if flagged else configured.only,
        all_images=flags.all_images if flagged else configured.all,
    )
    reports_dir = root / flags.reports_dir if flags.reports_dir else configured.reports_dir
    return Options(
        selection=selection,
        fallbacks=configured.fallbacks,
        reports_dir=reports_dir,
        ci_runners=configured.ci_runners,
        fetch=FetchOptions(
            cache_dir=configured.cache_dir,
            lock_path=selection.versions.with_suffix(".lock"),
            jobs=positive_number("--jobs", flags.jobs, configured.jobs, int),
            min_speed=configured.min_speed,
            max_file_size=configured.max_file_size,
            offline=flags.offline,
            locked=flags.locked,
            verify_cache=flags.verify_cache,
            refresh=flags.refresh,
            closure=not flags.no_closure,
            mirrors=configured.mirrors,
        ),
        build=BuildOptions(
            backend=Backend(configured.backend),
            work_dir=root / "build",
            no_cache=flags.no_cache,
            base_image=flags.base_image or None,
            base_prefix=(flags.base_prefix if flags.base_prefix is not None else configured.base_prefix) or None,
            platform=flags.platform or None,
        ),
        verify=VerifyOptions(
            reports_dir=root / flags.verify_reports if flags.verify_reports else reports_dir / "verify",
            device=choice("--device", flags.device, DeviceChoice),
            timeout=positive_number("--timeout", flags.timeout, VERIFY_TIMEOUT_S, float),
            size_budget=_gigabytes("--size-budget", flags.size_budget),
            nodes=_nodes(flags.nodes),
            procs_per_node=None if flags.procs_per_node is None else positive_number(
                "--procs-per-node", flags.procs_per_node, 1, int),
            launcher=choice("--launcher", flags.launcher or Launcher.BOOT.value, Launcher),
            master_port=_port(flags.master_port),
            rendezvous_timeout=_rendezvous_timeout(flags.rendezvous_timeout),
        ),
        push=PushOptions(
            reports_dir=reports_dir,
            replace_tags=flags.replace_tags,
            extra_tags=_extra_tags(flags.extra_tags, configured.extra_tags),
            revision=revision,
            region=flags.region or None,
            project=flags.project or configured.swr_project or None,
            dry_run=flags.dry_run,
        ),
        platform=PlatformOptions(
            on=choice("--on", flags.on, Where),
            obs_dir=flags.obs_dir or configured.obs_dir or None,
            flavor=flags.flavor or None,
            region=flags.region or None,
            project_id=flags.project_id or configured.project_id or None,
            modelarts_endpoint=configured.modelarts_endpoint or None,
            obs_endpoint=configured.obs_endpoint or None,
            iam_endpoint=configured.iam_endpoint or None,
            job_timeout=positive_number("--job-timeout", flags.job_timeout, JOB_TIMEOUT_S / 60, float) * 60,
            detach=flags.detach,
            job=flags.job or None,
            dry_run=flags.dry_run,
        ),
    )


C = TypeVar("C", bound=Choice)


def choice(flag: str, text: str, kind: type[C]) -> C:
    """A flag's value from a closed set, or ConfigError listing the set (with the likely one suggested)."""
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not one of {', '.join(kind.names())}"
                          f"{suggest(str(text), kind.names())}") from None


def positive_number(flag: str, text: str | None, default: N, kind: type[N]) -> N:
    """A numeric flag, taken as text because a parser would turn a bad number into a traceback: above 0, or an
    error naming the flag."""
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not value > 0:  # also refuses nan
        raise ConfigError(f"{flag}: must be above 0, got {text}")
    if not math.isfinite(value):
        raise ConfigError(f"{flag}: must be a finite number, got {text}")
    return value


def _gigabytes(flag: str, text: str | None) -> int | None:
    """A size flag given in GB (10^9 bytes), as bytes; None when it is not given."""
    if text is None:
        return None
    gigabytes = positive_number(flag, text, 0.0, float)
    if gigabytes > 1e9:  # a billion GB: no image is that large, and the product must stay a finite number
        raise ConfigError(f"{flag}: {text} GB is beyond any image size; give the budget in GB, e.g. 9.5")
    return int(gigabytes * 1e9)


def _extra_tags(flagged: Sequence[str], configured: tuple[str, ...]) -> tuple[str, ...]:
    """The extra-tag templates, checked now (before any engine or registry is asked) and named by where they were
    set: the flags replace the configured list as a whole."""
    if flagged:
        check_templates(flagged, source="--extra-tag")
        return tuple(flagged)
    check_templates(configured, source=settings.where("extra_tags"))
    return configured


def _nodes(text: str | None) -> int | None:
    nodes = None if text is None else positive_number("--nodes", text, 1, int)
    if nodes is not None and nodes > MAX_NODES:
        raise ConfigError(f"--nodes: {nodes} is more than the {MAX_NODES} workers a verification may have")
    return nodes


def _rendezvous_timeout(text: str | None) -> int:
    seconds = positive_number("--rendezvous-timeout", text, RENDEZVOUS_TIMEOUT_S, int)
    if not MIN_RENDEZVOUS_TIMEOUT_S <= seconds <= MAX_RENDEZVOUS_TIMEOUT_S:
        raise ConfigError(f"--rendezvous-timeout: {seconds} must be from {MIN_RENDEZVOUS_TIMEOUT_S} to "
                          f"{MAX_RENDEZVOUS_TIMEOUT_S} seconds (workers start within seconds of one another; "
                          "an hour of waiting is what the bound is there to prevent)")
    return seconds


def _port(text: str | None) -> int:
    port = positive_number("--master-port", text, DEFAULT_MASTER_PORT, int)
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--master-port: {port} must be a port from 1024 to 65535 (one a user may listen on)")
    return port
