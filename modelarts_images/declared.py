"""Every setting of the tool, declared once: its invoke.yaml key and environment variable, its flag on the tasks
and the matrix, its built-in value, its help, and the pipeline steps that read it.

What reads a setting is made from this table: settings.BUILTIN and the section's checks, the tasks' flags
(tasks.py, from TASKS), the matrix's argparse (matrix/cli.py), the comments of invoke.yaml (render_invoke_yaml; a test
compares the shipped file) and the reference page of the docs (reference_markdown). A key or a flag that is not
declared here does not exist: invoke.yaml refuses it, and a task or the matrix that names one fails on import.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from modelarts_images.contract import DEFAULT_MASTER_PORT, IMAGE_SIZE_BUDGET, RENDEZVOUS_TIMEOUT_S, VERIFY_TIMEOUT_S
from modelarts_images.engine.api import Backend
from modelarts_images.paths import GITLAB_CELL_FILE
from modelarts_images.shared.choices import Choice

SECTION = "modelarts"


class StepName(Choice):
    """The pipeline's steps by name (pipeline.STEPS declares their order and what each needs and gives)."""

    REGISTRY = "registry"
    CHECK_BASES = "check_bases"
    FETCH = "fetch"
    BUILD = "build"
    VERIFY = "verify"
    MANIFEST = "manifest"
    LOGIN = "login"
    PUSH = "push"
    PLATFORM = "platform"  # the verification as training jobs on ModelArts
    RELEASE = "release"  # the release tag, given to a staged image once it passed on the platform
    TRAINING_JOB = "training_job"


class DeviceChoice(Choice):
    """What --device asks for."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"  # an Ascend NPU of this host: its device files and driver passed into the container
    BOTH = "both"
    AUTO = "auto"  # the GPU when the engine can give one (the NPU, for an Ascend image), else the CPU


class Launcher(Choice):
    """How each worker of a distributed verification starts the script."""

    BOOT = "boot"  # the plain boot command; the script starts the node's other processes itself
    TORCHRUN = "torchrun"  # python -m torch.distributed.run (torch.distributed.launch before torch 1.9)


class Kind(Choice):
    """What an invoke.yaml key holds, and so how settings.resolve checks it."""

    TEXT = "text"
    PATH = "path"  # text, taken from the project root
    SWITCH = "switch"  # true or false ("1", "true", "yes", "on" from the environment)
    COUNT = "count"  # a whole number of at least 1
    WORDS = "words"  # a list of strings, or one string of comma- or space-separated words
    MIRRORS = "mirrors"  # URL prefix -> replacement prefix
    RUNNERS = "runners"  # cell tag -> CI runner labels
    IMAGE = "image"  # a versions.yaml key an entry leaves out (checked by the versions schema)


class Takes(Choice):
    """What a flag takes on the command line."""

    SWITCH = "switch"  # nothing: given or not
    TEXT = "text"  # one value, kept as text until options.resolve checks it (a bad one then names the flag)
    REPEAT = "repeat"  # one value, given once per value


@dataclass(frozen=True, kw_only=True)
class Setting:
    name: str  # how the tables name it: the key when there is one, else the flag without dashes
    help: str  # one line (wrapped by whoever shows it)
    key: str | None = None  # modelarts.<key> in invoke.yaml, INVOKE_MODELARTS_<KEY> in the environment
    kind: Kind = Kind.TEXT  # what the key holds
    default: Any = None  # the key's built-in value (invoke.yaml beats it), or the flag's when there is no key
    flag: str | None = None  # --flag, on the tasks and the matrix that list the setting's name
    takes: Takes = Takes.TEXT
    fills: str | None = None  # the options.Flags attribute the flag fills (None: the front end reads it itself)
    choices: tuple[str, ...] = ()  # the closed set a value must be in
    steps: tuple[StepName, ...] = ()  # the pipeline steps that read it
    comment: str = ""  # invoke.yaml's comment, where the flag's help would not fit a key (default: the help)
    help_for: Mapping[str, str] = field(default_factory=dict)  # a task's (or "matrix"'s) own help for the flag
    hidden: bool = False  # kept out of --help (the matrix's flags for nox's own sessions)
    metavar: str | None = None  # what --help calls the flag's value

    @property
    def variable(self) -> str | None:
        """The environment variable invoke reads for the key (none for a mapping: invoke sets none of those from
        the environment)."""
        if not self.key or self.kind in (Kind.MIRRORS, Kind.RUNNERS):
            return None
        return variable_name(self.key)

    @property
    def parameter(self) -> str | None:
        """The flag's name as a Python identifier: the task's parameter and argparse's dest."""
        return self.flag.removeprefix("--").replace("-", "_") if self.flag else None

    def help_in(self, front_end: str) -> str:
        return self.help_for.get(front_end, self.help)


def variable_name(key: str) -> str:
    """The environment variable invoke would read for a key of the section, declared or not."""
    return f"INVOKE_{SECTION.upper()}_{key.upper()}"


_S = StepName
_SELECTION_STEPS = tuple(StepName)  # the selection decides what every step works on

SETTINGS: tuple[Setting, ...] = (
    # -- the selection
    Setting(name="versions", key="versions", kind=Kind.PATH, default="versions.yaml", flag="--versions",
            fills="versions", steps=_SELECTION_STEPS,
            help="versions file to read (default: versions.yaml, or modelarts.versions in invoke.yaml)",
            comment="The matrix file, relative to this directory."),
    Setting(name="only", key="only", kind=Kind.WORDS, default="", flag="--only", takes=Takes.REPEAT, fills="only",
            steps=_SELECTION_STEPS,
            help="image id to work on; repeat for several (default: the entry marked default: true)",
            help_for={"matrix": "cell id to run; repeat for several (default: all)"},
            comment="Image ids (comma-separated) or all: true, used by every task that gets no --only/--all flag, so "
                 "one selection serves a whole chain such as `inv fetch build verify`."),
    Setting(name="all", key="all", kind=Kind.SWITCH, default=False, flag="--all", takes=Takes.SWITCH,
            fills="all_images", steps=_SELECTION_STEPS, help="work on every image in the versions file"),
    # -- where images go, for entries that do not say so themselves
    Setting(name="registry", key="registry", kind=Kind.IMAGE, steps=(_S.BUILD, _S.PUSH),
            help="registry host of the entries that name none",
            comment="Where images are pushed, for entries of versions.yaml that do not say so themselves: "
                 "`registry/organization/repository:tag`"),
    Setting(name="organization", key="organization", kind=Kind.IMAGE, steps=(_S.BUILD, _S.PUSH),
            help="SWR organization of the entries that name none"),
    Setting(name="repository", key="repository", kind=Kind.IMAGE, steps=(_S.BUILD, _S.PUSH),
            help="repository of the entries that name none"),
    Setting(name="swr_project", key="swr_project", default="", flag="--project", fills="project",
            steps=(_S.LOGIN, _S.PUSH, _S.REGISTRY),
            help="IAM project whose name the SWR AK/SK login carries (default: the region's own project; a "
                 "sub-project such as cn-north-4_team; swr_project in invoke.yaml)",
            comment="The IAM project whose name SWR's AK/SK login carries (<project>@<AK>): empty for the region's own "
                 "project (cn-north-4), or a sub-project such as cn-north-4_team. --project beats it."),
    Setting(name="pip_index", key="pip_index", kind=Kind.IMAGE, steps=(_S.FETCH, _S.BUILD),
            help="pip index used inside the build, for entries that name none"),
    Setting(name="apt_mirror", key="apt_mirror", kind=Kind.IMAGE, steps=(_S.BUILD,),
            help="apt mirror used inside the build, for entries that name none"),
    # -- fetch
    Setting(name="cache_dir", key="cache_dir", kind=Kind.PATH, default="cache", steps=(_S.FETCH, _S.REGISTRY),
            help="downloaded installers and wheels, relative to this directory"),
    Setting(name="backend", key="backend", default="buildkit", flag="--backend", fills="backend",
            choices=Backend.names(), steps=(_S.BUILD, _S.REGISTRY),
            help="docker (docker SDK, classic builder) or buildkit (docker buildx build --load, or DOCKER_BUILDKIT=1 "
                 "with a docker CLI older than 23); default: modelarts.backend in invoke.yaml",
            comment="docker: the Docker SDK's classic builder; buildkit: docker buildx / DOCKER_BUILDKIT=1."),
    Setting(name="jobs", key="jobs", kind=Kind.COUNT, default=4, flag="--jobs", fills="jobs", steps=(_S.FETCH,),
            help="parallel downloads (default: modelarts.jobs in invoke.yaml, 4)",
            comment="Parallel downloads for `inv fetch`."),
    Setting(name="min_speed", key="min_speed", kind=Kind.COUNT, default=1024, steps=(_S.FETCH,),
            help="a download slower than this many bytes per second over a minute is cut and retried from where "
                 "it stopped"),
    Setting(name="max_file_size", key="max_file_size", kind=Kind.COUNT, default=20_000_000_000, steps=(_S.FETCH,),
            help="bytes: a download whose size neither versions.lock nor the server says stops here (an endless "
                 "body)"),
    Setting(name="mirrors", key="mirrors", kind=Kind.MIRRORS, default={}, steps=(_S.FETCH,),
            help="URL prefix rewrites applied when downloading (versions.yaml and versions.lock keep the original "
                 "URLs), e.g. to a company mirror:\n  https://download.pytorch.org/whl/: "
                 "https://mirror.example.com/pytorch/whl/"),
    Setting(name="offline", flag="--offline", takes=Takes.SWITCH, fills="offline", steps=(_S.FETCH,),
            help="use the cache only; fail for anything missing"),
    Setting(name="locked", flag="--locked", takes=Takes.SWITCH, fills="locked", steps=(_S.FETCH, _S.REGISTRY),
            help="refuse any artifact versions.lock does not pin (for CI)"),
    Setting(name="refresh", fills="refresh", steps=(_S.FETCH,),
            help="resolve again even where versions.lock has an entry (what `inv lock` does)"),
    Setting(name="verify_cache", flag="--verify-cache", takes=Takes.SWITCH, fills="verify_cache", steps=(_S.FETCH,),
            help="re-hash cached files instead of trusting their recorded size, mtime and inode"),
    Setting(name="no_closure", flag="--no-closure", takes=Takes.SWITCH, fills="no_closure", steps=(_S.FETCH,),
            help="skip the dependency wheels; the build then installs them from pip_index"),
    # -- where records go
    Setting(name="reports_dir", key="reports_dir", kind=Kind.PATH, default="reports", flag="--reports-dir",
            fills="reports_dir", steps=(_S.VERIFY, _S.PUSH, _S.TRAINING_JOB),
            help="directory for the push-<id>.json records (default: modelarts.reports_dir, reports)",
            comment="Where `inv push` (and later tasks) write their JSON records."),
    # -- push
    Setting(name="extra_tags", key="extra_tags", kind=Kind.WORDS, default=[], flag="--extra-tag",
            takes=Takes.REPEAT, fills="extra_tags", steps=(_S.PUSH,),
            help="also push under this tag; repeat for several; {tag}, {date} (UTC, YYYYMMDD) and {revision} "
                 "(git, 12 hex digits) are filled in, e.g. --extra-tag '{tag}-{date}' (default: "
                 "modelarts.extra_tags in invoke.yaml)",
            comment="Tags pushed besides each image's own, comma-separated, e.g. \"{tag}-{date},{revision}\" (a list "
                 "works too); {tag}, {date} (UTC, YYYYMMDD) and {revision} (git, 12 hex digits) are filled in."),
    # -- build
    Setting(name="base_prefix", key="base_prefix", default="", flag="--base-prefix", fills="base_prefix",
            steps=(_S.CHECK_BASES, _S.BUILD),
            help="registry prefix for base images that name no registry, e.g. mirror.example.com/library/ "
                 "(default: modelarts.base_prefix in invoke.yaml)",
            comment="Prepended to base images that name no registry (ubuntu:20.04), for hosts that cannot reach "
                 "Docker Hub, e.g. mirror.example.com/library/"),
    Setting(name="no_cache", flag="--no-cache", takes=Takes.SWITCH, fills="no_cache", steps=(_S.BUILD,),
            help="build every step again instead of reusing the engine's cache"),
    Setting(name="base_image", flag="--base-image", fills="base_image", steps=(_S.CHECK_BASES, _S.BUILD),
            help="use this base image for every selected entry instead of its base_image"),
    Setting(name="platform", flag="--platform", fills="platform", steps=(_S.BUILD,),
            help="target platform for the builder, e.g. linux/amd64"),
    # -- CI
    Setting(name="ci_runners", key="ci_runners", kind=Kind.RUNNERS, default={},
            help="CI runners for `nox -s matrix -- --list-json` / `--gitlab-pipeline`: a cell tag (cpu, cuda11, "
                 "cuda12, ..., npu, aarch64), `gpu` (any CUDA cell) or `default`, mapped to a runner label or a list "
                 "of labels, e.g.\n  cpu: ubuntu-latest\n  cuda12: [self-hosted, linux, gpu]\n  npu: [self-hosted, "
                 "arm64, ascend]\nA CUDA cell on a runner mapped by its tag or by `gpu` verifies on the GPU too, an "
                 "Ascend cell on a runner mapped by `npu` on the NPU; an aarch64 cell goes to `aarch64`'s runner "
                 "before its tag's (elsewhere it builds through QEMU)."),
    # -- verify on ModelArts
    Setting(name="on", default="local", flag="--on", fills="on", choices=("local", "modelarts"),
            steps=(_S.VERIFY, _S.PLATFORM),
            help="where the verification runs: local (containers on this engine) or modelarts (one billed training "
                 "job per device on ModelArts, of the image in SWR; see docs/guide/modelarts.md) (default: local)",
            help_for={"matrix": "with --push, modelarts: each cell pushed under a staging tag, verified as training "
                                "jobs on ModelArts, and given its own tag only once it passed (default: local)",
                      "doctor": "where the verification will run: with modelarts, the ModelArts keys, the OBS folder "
                                "and Huawei Cloud's SDKs are required, and no local GPU is (default: local)"}),
    Setting(name="obs_dir", key="obs_dir", default="", flag="--obs-dir", fills="obs_dir", steps=(_S.PLATFORM,),
            help="OBS folder for the jobs' code, obs://<bucket>/<folder>/ in the job's region (default: "
                 "modelarts.obs_dir in invoke.yaml)",
            comment="OBS folder the verification jobs' code is uploaded to (obs://<bucket>/<folder>/, a bucket in "
                    "the jobs' region): each image's under <folder>/<image id>/<content hash>/code/."),
    Setting(name="project_id", key="project_id", default="", flag="--project-id", fills="project_id",
            steps=(_S.PLATFORM,),
            help="the IAM project id of the jobs' region (default: modelarts.project_id in invoke.yaml, else the "
                 "region's own project, looked up at IAM)",
            comment="IAM project id for ModelArts' API; empty: the region's own project, looked up at IAM."),
    Setting(name="modelarts_endpoint", key="modelarts_endpoint", default="", steps=(_S.PLATFORM,),
            help="ModelArts' API host (default: https://modelarts.<region>.myhuaweicloud.com; Huawei Cloud Stack "
                 "and partner clouds have their own)"),
    Setting(name="obs_endpoint", key="obs_endpoint", default="", steps=(_S.PLATFORM,),
            help="OBS's host (default: https://obs.<region>.myhuaweicloud.com)"),
    Setting(name="iam_endpoint", key="iam_endpoint", default="", steps=(_S.PLATFORM,),
            help="IAM's host, for the project lookup (default: https://iam.<region>.myhuaweicloud.com)"),
    Setting(name="job_timeout", flag="--job-timeout", fills="job_timeout", steps=(_S.PLATFORM,),
            help="minutes a training job may take, queue included, before it is stopped (default: 60)"),
    Setting(name="detach", flag="--detach", takes=Takes.SWITCH, fills="detach", steps=(_S.PLATFORM,),
            help="create the training jobs, print their ids and exit (read them later with --job ID)"),
    Setting(name="job", flag="--job", fills="job", steps=(_S.PLATFORM,),
            help="attach to this training job (one entry, one device) instead of creating one"),
    # -- verify
    Setting(name="device", default=DeviceChoice.AUTO.value, flag="--device", fills="device",
            choices=DeviceChoice.names(), steps=(_S.VERIFY,),
            help="cpu, gpu, npu, both (cpu and gpu), or auto: the GPU when the engine can give one (an Ascend "
                 "image: the host's NPU when it has one), else the CPU (default: auto)",
            help_for={"doctor": "the device the verification will use: gpu or both make the engine's nvidia runtime "
                                "required; auto makes it a warning when a CUDA image is selected (default: auto)"}),
    Setting(name="timeout", flag="--timeout", fills="timeout", steps=(_S.VERIFY, _S.MANIFEST),
            help=f"seconds a verification container may run before it is killed (default: {VERIFY_TIMEOUT_S:g})"),
    Setting(name="size_budget", flag="--size-budget", fills="size_budget", steps=(_S.VERIFY,),
            help=f"image size budget in GB (10^9 bytes): a larger image fails conformance (without it, an image "
                 f"over {IMAGE_SIZE_BUDGET / 1e9:g} GB, the limit of ModelArts' legacy pages, only draws a warning)"),
    Setting(name="nodes", flag="--nodes", fills="nodes", steps=(_S.VERIFY,), metavar="N",
            help="verify as a distributed job of N workers, each in a container of its own (default: the entry's "
                 "verify.nodes, else 1)"),
    Setting(name="procs_per_node", flag="--procs-per-node", fills="procs_per_node", steps=(_S.VERIFY,),
            metavar="P", help="processes per worker of a distributed run (default: 1 on the CPU, the GPU count on "
                              "a GPU)"),
    Setting(name="launcher", flag="--launcher", fills="launcher", choices=Launcher.names(), steps=(_S.VERIFY,),
            help="how a distributed run's workers start the script: boot (the plain boot command) or torchrun "
                 "(python -m torch.distributed.run, as ModelArts' examples do; default: boot)"),
    Setting(name="master_port", flag="--master-port", fills="master_port", steps=(_S.VERIFY,), metavar="PORT",
            help=f"the master's rendezvous port of a distributed run (default: {DEFAULT_MASTER_PORT})"),
    Setting(name="rendezvous_timeout", flag="--rendezvous-timeout", fills="rendezvous_timeout", steps=(_S.VERIFY,),
            metavar="SECONDS",
            help=f"how long a worker of a distributed run waits for the master and the others, and for each "
                 f"collective, before it fails naming what it waited for (default: {RENDEZVOUS_TIMEOUT_S}; torch's "
                 f"own is 30 minutes)"),
    Setting(name="reports", flag="--reports", fills="verify_reports", steps=(_S.VERIFY,),
            help="directory for the JSON results, one <id>.json per image (default: <reports_dir>/verify)"),
    Setting(name="image", flag="--image", steps=(_S.VERIFY,),
            help="verify this image reference instead of the entry's own (exactly one entry selected)"),
    # -- push and login
    Setting(name="replace_tag", flag="--replace-tag", takes=Takes.SWITCH, fills="replace_tags", steps=(_S.PUSH,),
            help="replace a tag that already names another image in the registry (tags are immutable otherwise)"),
    Setting(name="force", flag="--force", takes=Takes.SWITCH, help="the old name of --replace-tag",
            help_for={"matrix": "the old name of --rerun (it says nothing about tags)"}),
    Setting(name="region", flag="--region", fills="region", steps=(_S.LOGIN, _S.PUSH, _S.REGISTRY, _S.PLATFORM),
            help="SWR region for the AK/SK login when the registry host does not name it (e.g. cn-north-4)",
            help_for={"verify": "with --on modelarts: the jobs' region when the registry host does not name it "
                                "(e.g. cn-north-4)"}),
    Setting(name="registry_host", flag="--registry", steps=(_S.LOGIN,),
            help="log in to this registry host instead of those of the selected images"),
    Setting(name="dry_run", flag="--dry-run", takes=Takes.SWITCH, fills="dry_run", steps=(_S.PUSH, _S.PLATFORM),
            help="check names, credentials and the registry's tags, and say what would be pushed; push nothing",
            help_for={"build": "print each selected image's build command and exit (nothing is fetched or built)",
                      "verify": "with --on modelarts: print each job's flavour, OBS keys and request body; upload "
                                "and create nothing"}),
    # -- output
    Setting(name="json", flag="--json", takes=Takes.SWITCH, help="print the plan as JSON instead of text",
            help_for={"doctor": "print the rows as JSON (with the elapsed time and the exit code) instead of a "
                                "table"}),
    # -- the matrix's own
    Setting(name="push", flag="--push", takes=Takes.SWITCH, steps=(_S.PUSH, _S.TRAINING_JOB),
            help="push each verified image and write its training-job body"),
    Setting(name="rerun", flag="--rerun", takes=Takes.SWITCH,
            help="run every cell, even those unchanged since their success"),
    Setting(name="check_registry", flag="--check-registry", takes=Takes.SWITCH, steps=(_S.REGISTRY,),
            help="ask each cell's registry (as --push does): a tag carrying the cell's input hash is reported "
                 "unchanged without a build, and builds take unchanged layers from the tag's inline cache"),
    Setting(name="shard", flag="--shard", help="K/N: run only the K-th of N deterministic slices of the cells"),
    Setting(name="flavor", flag="--flavor", fills="flavor", steps=(_S.PLATFORM, _S.TRAINING_JOB),
            help="ModelArts flavor_id of the verification jobs (default: the smallest the region offers for the "
                 "device)",
            help_for={"matrix": "ModelArts flavor_id for the training-job bodies (default: by CUDA or CPU)"}),
    Setting(name="config", flag="--config",
            help="an extra invoke-style YAML file with a `modelarts:` section (like inv -f)"),
    Setting(name="summary", flag="--summary", takes=Takes.SWITCH,
            help="print the summary table of the last reports (of --run TOKEN's cells) and exit"),
    Setting(name="records", flag="--records", takes=Takes.REPEAT, metavar="PATH",
            help="with --summary: merge the cell records in PATH (a file, or a directory of them, as a CI system "
                 "collects its jobs' reports/matrix/*.json) into this reports directory; repeatable. Fails naming "
                 "each failed cell and each cell with no record"),
    Setting(name="list_json", flag="--list-json", takes=Takes.SWITCH,
            help="print the cells as a CI matrix, {\"include\": [{id, tags, gpu, runner, device}, ...]} (GitHub "
                 "Actions' fromJSON), and exit; runners from ci_runners in invoke.yaml"),
    Setting(name="gitlab_pipeline", flag="--gitlab-pipeline", takes=Takes.SWITCH,
            help="print a GitLab child pipeline with one job per cell (extending .modelarts-cell from "
                 f"{GITLAB_CELL_FILE}) and exit"),
    Setting(name="no_summary", flag="--no-summary", takes=Takes.SWITCH, hidden=True,
            help="leave the summary table to nox's matrix_summary session"),
    Setting(name="run", flag="--run", hidden=True, help="the token that marks one nox run's cell records"),
)

BY_NAME: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}
if len(BY_NAME) < len(SETTINGS):
    raise LookupError("declared.SETTINGS: a name is declared twice")
BY_KEY: Mapping[str, Setting] = {setting.key: setting for setting in SETTINGS if setting.key}

# Built-in values; invoke.yaml beats them and flags beat invoke.yaml.
BUILTIN: Mapping[str, Any] = {key: setting.default for key, setting in BY_KEY.items()}


def default(key: str) -> Any:
    """A key's built-in value, for the code that needs one before any configuration is read."""
    return BY_KEY[key].default


def flag_default(setting: Setting) -> Any:
    """What a flag says when it is not given: nothing (a key's value then comes from invoke.yaml), or its own
    built-in value where no key backs it."""
    if setting.takes is Takes.SWITCH:
        return False
    if setting.takes is Takes.REPEAT:
        return ()
    return None if setting.key else setting.default


# options.Flags' fields: each filled by one declared setting, and its value when the command line says nothing.
FLAG_FIELDS: Mapping[str, Any] = {setting.fills: flag_default(setting) for setting in SETTINGS if setting.fills}


class Values:
    """Values by declared name, read as attributes, frozen; a name that is not one of NAMES is an error."""

    NAMES: ClassVar[Mapping[str, Any]] = {}  # each name and its value when none is given

    def __init__(self, **given: Any) -> None:
        unknown = sorted(set(given) - set(self.NAMES))
        if unknown:
            raise TypeError(f"{type(self).__name__}: {', '.join(unknown)}: not declared "
                            "(modelarts_images/declared.py)")
        object.__setattr__(self, "_values", {**self.NAMES, **given})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__["_values"] == other.__dict__["_values"]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.__dict__["_values"])))

    def __repr__(self) -> str:
        values = self.__dict__["_values"]
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items() if v != self.NAMES[k])})"

    def replace(self, **changes: Any) -> Any:
        return type(self)(**{**self.__dict__["_values"], **changes})


@dataclass(frozen=True, kw_only=True)
class Command:
    """A front end's command: the pipeline steps it runs (in the pipeline's order, whatever order they are
    named in) and the settings it takes as flags, in the order its --help lists them (invoke also gives short
    flags in this order: each name's first free letter)."""

    steps: tuple[StepName, ...]
    flags: tuple[str, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # Flags fields the command sets itself, never a user


SELECTION = ("versions", "only", "all")
TASKS: Mapping[str, Command] = {
    "plan": Command(steps=(), flags=(*SELECTION, "json")),
    # runs no step: it asks what each step would need (modelarts_images/doctor/)
    "doctor": Command(steps=(), flags=(*SELECTION, "backend", "device", "on", "obs_dir", "region", "swr_project",
                                       "json")),
    "fetch": Command(steps=(_S.FETCH,), flags=(*SELECTION, "jobs", "offline", "locked", "verify_cache",
                                               "no_closure")),
    "lock": Command(steps=(_S.FETCH,), flags=(*SELECTION, "jobs", "no_closure"), fixed={"refresh": True}),
    "build": Command(steps=(_S.CHECK_BASES, _S.FETCH, _S.BUILD),
                     flags=(*SELECTION, "backend", "no_cache", "base_image", "base_prefix", "platform", "dry_run",
                            "offline", "locked")),
    "login": Command(steps=(_S.LOGIN,), flags=(*SELECTION, "registry_host", "region", "swr_project")),
    "push": Command(steps=(_S.PUSH,), flags=(*SELECTION, "replace_tag", "force", "extra_tags", "reports_dir",
                                             "region", "swr_project", "dry_run")),
    # --on chooses between the two steps
    "verify": Command(steps=(_S.VERIFY, _S.PLATFORM),
                      flags=(*SELECTION, "image", "device", "timeout", "size_budget", "reports", "nodes",
                             "procs_per_node", "launcher", "master_port", "rendezvous_timeout", "on", "obs_dir",
                             "flavor", "region", "project_id", "job_timeout", "detach", "job", "dry_run")),
}
# Every step a cell can take: the registry step only with --push or --check-registry (and not --rerun), push and
# the training-job body only with --push.
MATRIX = Command(
    steps=(_S.REGISTRY, _S.CHECK_BASES, _S.FETCH, _S.BUILD, _S.VERIFY, _S.MANIFEST, _S.PUSH, _S.PLATFORM, _S.RELEASE,
           _S.TRAINING_JOB),
    flags=("versions", "only", "device", "push", "backend", "rerun", "force", "check_registry", "replace_tag",
           "shard", "timeout", "nodes", "procs_per_node", "launcher", "master_port", "rendezvous_timeout", "offline",
           "locked", "region",
           "swr_project", "flavor", "on", "obs_dir", "job_timeout",
           "config", "summary",
           "records", "list_json", "gitlab_pipeline", "no_summary", "run"),
)


def flags_of(names: tuple[str, ...], front_end: str) -> tuple[Setting, ...]:
    """The declared settings a front end lists, each with a flag; a name not declared is an error here, when the
    front end is defined, not when a user first runs it."""
    unknown = [name for name in names if name not in BY_NAME or BY_NAME[name].flag is None]
    if unknown:
        raise LookupError(f"{front_end}: {', '.join(unknown)}: not a declared setting with a flag "
                          "(modelarts_images/declared.py)")
    return tuple(BY_NAME[name] for name in names)


# --------------------------------------------------------------------------------------------------------------
# invoke.yaml, rendered from the declaration with the values a file holds

INVOKE_YAML_HEADER = """\
# Defaults for the tasks. A command-line flag beats what is here; what is here beats the built-in values.
# Any key but mirrors and ci_runners can also be set for one command through the environment:
# INVOKE_MODELARTS_<KEY>=value, e.g. INVOKE_MODELARTS_ONLY=pytorch-2.1.0-cuda12.1 inv fetch build verify. invoke
# converts such a value to the type the key has here, so jobs and extra_tags are given as strings: any text then
# reaches the tool's checks.
# Each key is described in the docs' settings reference; the comments here come from the same declaration.
"""


def sentence(text: str, setting: Setting) -> str:
    """A help text or comment as a sentence: a capital first letter (unless it starts with one of the setting's
    values, spelled as the user types it) and a full stop (unless it ends in code, a colon or a path)."""
    first = re.split(r"[^A-Za-z0-9_-]", text, maxsplit=1)[0]
    if first not in setting.choices:
        text = text[0].upper() + text[1:]
    return text if text.rstrip().endswith((".", ":", "/", "`")) else text + "."


def _comment(setting: Setting, width: int = 110) -> list[str]:
    """The key's comment: its own where it has one, else its help; indented lines kept as they are (examples)."""
    lines = []
    for line in sentence(setting.comment or setting.help, setting).splitlines():
        lines += [line] if line.startswith("  ") else textwrap.wrap(line, width, break_on_hyphens=False)
    return [f"  # {line}" for line in lines]


def _yaml_value(value: Any) -> str:
    """A value as invoke.yaml writes it: text plain where YAML reads it back as that text, else double-quoted."""
    if isinstance(value, str):
        plain = value and value.strip() == value and yaml.safe_load(f"k: {value}") == {"k": value}
        return value if plain else json.dumps(value)
    return str(yaml.safe_dump(value, default_flow_style=True, width=10_000)).removesuffix("\n...\n").strip()


def render_invoke_yaml(values: Mapping[str, Any]) -> str:
    """invoke.yaml with each declared key, in the declaration's order, under its comment, holding `values` (the
    built-in value where `values` has none)."""
    lines = [INVOKE_YAML_HEADER.rstrip("\n"), f"{SECTION}:"]
    for key, setting in BY_KEY.items():
        lines += [*_comment(setting), f"  {key}: {_yaml_value(values.get(key, setting.default))}"]
    return "\n".join(lines) + "\n"
