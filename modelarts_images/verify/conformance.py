"""ModelArts' rules for custom training images, each checked and reported pass/fail (a few only warn).

Rules (ModelArts, "Specifications for Custom Images Used for Training Jobs", and the training boot command):
- `ma-user`: the entry's user (versions.yaml `user:`, by default ma-user uid 1000 gid 100, home /home/ma-user)
  exists as such (jobs run as that uid);
- `boot-python`: the boot command's python (`<home>/miniconda3/bin/python`) starts as that uid without any shell
  activation (no `conda activate`, no profile) and loads its own libraries: judged on what the verification
  script, run as the boot command, reported of its interpreter;
- `default-user`: the image does not run as root by default (its config's User);
- `setuid-setgid`: no setuid/setgid file beyond the base image's ("a file cannot be added whose owner is root and
  has permission setuid or setgid");
- `credentials`: no credential file left anywhere: .docker/config.json, .netrc, .git-credentials, and pip.conf,
  pip.ini or .pypirc holding a password or a URL with user:password@;
- `image-size`: within a budget: a warning over contract.IMAGE_SIZE_BUDGET (a figure only ModelArts' legacy pages
  state), a failure over the budget the user sets with --size-budget;
- `conda-channel` (warning only): conda packages from Anaconda's `defaults` channel, which Anaconda's terms make
  paid for larger organisations.
Ascend images only (the entry's accelerator: ascend):
- `cann-environment`: CANN's environment is in the image's config (ENV: ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME,
  and LD_LIBRARY_PATH through that home), since the boot command runs without a shell and nothing sources
  set_env.sh;
- `npu-driver`: the image holds none of the paths the host's driver is mounted at (/usr/local/Ascend/driver,
  /usr/local/dcmi, /usr/local/bin/npu-smi): a driver baked in would hide the node's own, which CANN must match;
- `npu-group`: the training user is in the group of the host's NPU devices (HwHiAiUser).

What a container shows is gathered by probes (`gather()`), each a small program run in a container of the image
without a network; judging it (`evaluate()`) is pure. The probes (Python ones live in verify/probes/, see
modelarts_images.verify.probes, and travel on the command line):
- conformance_facts.py, Python 3.7+ stdlib, run as root with the image's conda python: users, credential files,
  setuid/setgid files, conda metadata (it prints facts, never a secret);
- SETUID_COMMAND, `find` over the root filesystem of the base image (which may have no Python).
Both run at the same time, beside the verification's own runs, at the lowest CPU weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelarts_images.contract import DEFAULT_USER, IMAGE_SIZE_BUDGET, NPU_GROUP, VERIFY_TIMEOUT_S, RunUser
from modelarts_images.engine.api import ContainerOutput, ContainerRun, Engine, ImageConfig
from modelarts_images.errors import EngineError, VerifyError
from modelarts_images.shared import text
from modelarts_images.shared.choices import Choice
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.probes import CONFORMANCE_FACTS, probe_source, tagged_json
from modelarts_images.verify.result import VerificationResult

# What verify/probes/conformance_facts.py prints its facts after (its PREFIX).
FACTS_PREFIX = "MODELARTS_CONFORMANCE_FACTS "
SETUID_COMMAND = ("find", "/", "-xdev", "-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")", "-print")

# Anaconda's `defaults` channel (repo.anaconda.com/pkgs/*: main, r, free, msys2, pro) under its several spellings.
_DEFAULTS = re.compile(r"^(defaults|pkgs/[a-z0-9_-]+)(/|$)|://(repo\.anaconda\.com|repo\.continuum\.io)/pkgs/"
                       r"|://conda\.anaconda\.org/anaconda(/|$)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class UserFacts:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    home_exists: bool
    home_owner: int | None


@dataclass(frozen=True, kw_only=True)
class CredentialFile:
    path: str
    kind: str  # netrc, git-credentials, docker-config, pip-config, pypirc
    has_password: bool
    has_url_credentials: bool


@dataclass(frozen=True, kw_only=True)
class CondaPackage:
    name: str
    version: str
    channel: str


@dataclass(frozen=True, kw_only=True)
class ProbeFacts:
    """What verify/probes/conformance_facts.py saw inside the image."""

    python: str
    user: UserFacts | None  # None: no such user
    uid_owner: str | None  # the name the user's uid resolves to
    group: str | None  # the name of the user's gid
    credential_files: tuple[CredentialFile, ...]
    setuid_files: tuple[str, ...]
    conda_packages: tuple[CondaPackage, ...] | None  # None: no conda-meta (not a conda installation)
    errors: tuple[str, ...]
    groups: tuple[str, ...] = ()  # the names of the training user's groups
    driver_paths: tuple[str, ...] = ()  # the NPU driver's mount points the image holds files at


@dataclass(frozen=True, kw_only=True)
class BootFacts:
    """How the boot python started as the user: ok, or why not."""

    ok: bool
    detail: str


@dataclass(frozen=True, kw_only=True)
class ImageFacts:
    """Everything the rules are judged on."""

    reference: str
    config_user: str
    working_dir: str
    size: int
    probe: ProbeFacts | None
    probe_error: str | None  # why there are no probe facts
    setuid_files: tuple[str, ...] | None  # None: could not be listed
    setuid_error: str | None
    base_image: str | None
    base_setuid_files: tuple[str, ...] | None  # None: the base image is not available to compare with
    base_error: str | None
    environment: tuple[str, ...] = ()  # the config's ENV, NAME=value


# --------------------------------------------------------------------------------------------------------------
# Reading the probes' output


def parse_probe(text: str) -> ProbeFacts:
    """The facts conformance_facts.py printed (VerifyError when its line is missing or garbled)."""
    data = tagged_json(text, FACTS_PREFIX, what="conformance probe")
    try:
        user = data.get("user")
        packages = data.get("conda_packages")
        return ProbeFacts(
            python=str(data.get("python", "")),
            user=None if user is None else UserFacts(
                name=str(user["name"]), uid=int(user["uid"]), gid=int(user["gid"]), home=str(user["home"]),
                shell=str(user.get("shell", "")), home_exists=bool(user["home_exists"]),
                home_owner=None if user.get("home_owner") is None else int(user["home_owner"])),
            uid_owner=None if data.get("uid_owner") is None else str(data["uid_owner"]),
            group=None if data.get("group") is None else str(data["group"]),
            credential_files=tuple(
                CredentialFile(path=str(item["path"]), kind=str(item["kind"]), has_password=bool(item["has_password"]),
                               has_url_credentials=bool(item["has_url_credentials"]))
                for item in data.get("credential_files", ())),
            setuid_files=tuple(sorted(str(path) for path in data.get("setuid_files", ()))),
            conda_packages=None if packages is None else tuple(
                CondaPackage(name=str(item["name"]), version=str(item["version"]), channel=str(item["channel"]))
                for item in packages),
            errors=tuple(str(error) for error in data.get("errors", ())),
            groups=tuple(str(name) for name in data.get("groups", ())),
            driver_paths=tuple(str(path) for path in data.get("driver_paths", ())),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise VerifyError(f"conformance probe: unexpected facts ({type(error).__name__}: {error})") from error


def judge_boot(result: VerificationResult | None, *, why: str = "", user: RunUser = DEFAULT_USER) -> BootFacts:
    """Judge how the boot command's python started, from what the verification script reported of it: the
    conda prefix, the user, its libraries loaded, nothing activated. `why`: what happened when there is no result
    (the interpreter did not start, or did not get to the end of the script)."""
    if result is None:
        return BootFacts(ok=False, detail=f"{user.boot_python} gave no result as the boot command: {why}")
    problems = []
    if result.prefix != user.conda_prefix:
        problems.append(f"sys.prefix is {result.prefix!r}, not {user.conda_prefix}")
    if result.uid != user.uid or result.gid != user.gid:
        problems.append(f"ran as {result.uid}:{result.gid}, not {user.spec}")
    modules = dict(result.modules)
    broken = [f"{name} ({state})" for name, state in sorted(modules.items()) if state != "ok"]
    if broken:
        problems.append("cannot import " + ", ".join(broken))
    if not modules:
        problems.append("the script reported no standard modules (an older pytorch-verification.py?)")
    if problems:
        return BootFacts(ok=False, detail="; ".join(problems))
    activated = f" ({', '.join(result.activated)} set by the image)" if result.activated else ""
    return BootFacts(ok=True, detail=f"{user.boot_python} (Python {result.python}) started as {user.spec} "
                                     f"without a shell or activation{activated}; {', '.join(sorted(modules))} "
                                     "import")


def parse_find(output: ContainerOutput) -> tuple[str, ...]:
    """The paths `find` printed (exit 1 with paths is fine: find says 1 for any unreadable corner)."""
    paths = tuple(sorted(line for line in output.stdout.splitlines() if line.startswith("/")))
    if output.timed_out or output.exit_code not in (0, 1) or (output.exit_code == 1 and not paths):
        tail = " | ".join(output.stderr.strip().splitlines()[-3:]) or "no output"
        raise VerifyError(f"find exited with {output.exit_code}{' (timed out)' if output.timed_out else ''}: {tail}")
    return paths


# --------------------------------------------------------------------------------------------------------------
# Judging (pure)


def _is_root(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in ("", "root", "0")


def is_defaults_channel(channel: str) -> bool:
    return bool(_DEFAULTS.search(channel.strip()))


def _gb(count: int) -> str:
    return text.size(count, precision=2)


def _names(paths: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class Rule(Choice):
    """The rules, in the order they are reported (the module's docstring says what each asks)."""

    MA_USER = "ma-user"
    BOOT_PYTHON = "boot-python"
    DEFAULT_USER = "default-user"
    SETUID_SETGID = "setuid-setgid"
    CREDENTIALS = "credentials"
    IMAGE_SIZE = "image-size"
    CONDA_CHANNEL = "conda-channel"
    CANN_ENVIRONMENT = "cann-environment"
    NPU_DRIVER = "npu-driver"
    NPU_GROUP = "npu-group"


ASCEND_RULES = (Rule.CANN_ENVIRONMENT, Rule.NPU_DRIVER, Rule.NPU_GROUP)  # judged on Ascend images only


class WithoutProbe(Choice):
    """What a rule judged on the probe's facts reports when the probe did not run."""

    NOT_NEEDED = "not-needed"  # judged on other facts
    FAILS = "fails"  # a failure that names why the probe did not run
    LEFT_OUT = "left-out"  # not reported: a warning-only rule cannot say anything without the facts


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What every rule is judged on: the gathered facts, how the boot python started, and the entry's settings."""

    facts: ImageFacts
    boot: BootFacts
    size_budget: int | None
    user: RunUser
    npu_group: str = NPU_GROUP.name

    @property
    def probe(self) -> ProbeFacts:
        """The probe's facts, for rules that declare they need them (evaluate() judges those only when present)."""
        if self.facts.probe is None:
            raise LookupError("a rule that needs the probe's facts was judged without them")
        return self.facts.probe


@dataclass(frozen=True, kw_only=True)
class Registered:
    judge: Callable[[Evidence], CheckOutcome]
    without_probe: WithoutProbe


RULES: dict[Rule, Registered] = {}


def rule(name: Rule, *, without_probe: WithoutProbe = WithoutProbe.NOT_NEEDED,
         ) -> Callable[[Callable[[Evidence], CheckOutcome]], Callable[[Evidence], CheckOutcome]]:
    """Register a rule's judge: evaluate() runs every registered rule, in Rule's order."""
    def register(judge: Callable[[Evidence], CheckOutcome]) -> Callable[[Evidence], CheckOutcome]:
        if name in RULES:
            raise ValueError(f"conformance rule {name} is registered twice")
        RULES[name] = Registered(judge=judge, without_probe=without_probe)
        return judge
    return register


@rule(Rule.MA_USER, without_probe=WithoutProbe.FAILS)
def check_user(evidence: Evidence) -> CheckOutcome:
    name, expected, probe = Rule.MA_USER, evidence.user, evidence.probe
    user = probe.user
    if user is None:
        return CheckOutcome(name=name, ok=False, detail=f"no user {expected.name} in /etc/passwd")
    problems = []
    if user.uid != expected.uid:
        problems.append(f"uid {user.uid}, not {expected.uid}")
    if user.gid != expected.gid:
        problems.append(f"gid {user.gid}, not {expected.gid}")
    if user.home != expected.home:
        problems.append(f"home {user.home}, not {expected.home}")
    elif not user.home_exists:
        problems.append(f"home {expected.home} does not exist")
    elif user.home_owner != expected.uid:
        problems.append(f"home {expected.home} is owned by uid {user.home_owner}, not {expected.uid}")
    if probe.uid_owner not in (None, expected.name):
        problems.append(f"uid {expected.uid} resolves to {probe.uid_owner!r} first")
    if problems:
        return CheckOutcome(name=name, ok=False, detail=f"{expected.name}: " + "; ".join(problems))
    group = f" ({probe.group})" if probe.group else ""
    return CheckOutcome(name=name, ok=True, detail=f"{expected.name} uid {expected.uid} gid {expected.gid}{group}, "
                                                   f"home {expected.home} owned by {expected.uid}")


@rule(Rule.BOOT_PYTHON)
def check_boot_python(evidence: Evidence) -> CheckOutcome:
    return CheckOutcome(name=Rule.BOOT_PYTHON, ok=evidence.boot.ok, detail=evidence.boot.detail)


@rule(Rule.DEFAULT_USER)
def check_default_user(evidence: Evidence) -> CheckOutcome:
    config_user = evidence.facts.config_user
    if _is_root(config_user):
        shown = repr(config_user) if config_user else "not set (root)"
        return CheckOutcome(name=Rule.DEFAULT_USER, ok=False,
                            detail=f"the image runs as root by default: User is {shown}; end the Dockerfile with "
                                   f"USER {evidence.user.name}")
    return CheckOutcome(name=Rule.DEFAULT_USER, ok=True, detail=f"User {config_user} (not root)")


@rule(Rule.SETUID_SETGID)
def check_setuid(evidence: Evidence) -> CheckOutcome:
    name, facts = Rule.SETUID_SETGID, evidence.facts
    if facts.setuid_files is None:
        return CheckOutcome(name=name, ok=False, detail=f"could not list them: {facts.setuid_error}")
    if facts.base_setuid_files is None:
        return CheckOutcome(
            name=name, ok=False, warning=True,
            detail=f"base image {facts.base_image or '(unknown)'} not available to compare with "
                   f"({facts.base_error}); the image has {len(facts.setuid_files)}: {_names(facts.setuid_files)}")
    added = sorted(set(facts.setuid_files) - set(facts.base_setuid_files))
    if added:
        return CheckOutcome(name=name, ok=False,
                            detail=f"{len(added)} setuid/setgid file(s) not in the base image {facts.base_image}: "
                                   f"{_names(added)}")
    return CheckOutcome(name=name, ok=True,
                        detail=f"{len(facts.setuid_files)} setuid/setgid file(s), all from the base image "
                               f"{facts.base_image}")


@rule(Rule.CREDENTIALS, without_probe=WithoutProbe.FAILS)
def check_credentials(evidence: Evidence) -> CheckOutcome:
    found = []
    for item in evidence.probe.credential_files:
        if item.kind in ("netrc", "git-credentials", "docker-config"):
            found.append(f"{item.path} ({item.kind})")
        elif item.has_password or item.has_url_credentials:
            why = "a password" if item.has_password else "a URL with user:password@"
            found.append(f"{item.path} ({item.kind} with {why})")
    if found:
        return CheckOutcome(name=Rule.CREDENTIALS, ok=False,
                            detail="credential files in the image: " + "; ".join(found))
    clean = [item.path for item in evidence.probe.credential_files]
    return CheckOutcome(name=Rule.CREDENTIALS, ok=True,
                        detail="no credential files" + (f" ({_names(clean)} hold none)" if clean else ""))


@rule(Rule.IMAGE_SIZE)
def check_size(evidence: Evidence) -> CheckOutcome:
    """Over a budget the user set (--size-budget): a failure. Over the default one: a warning, since only
    ModelArts' legacy pages state that limit (see contract.IMAGE_SIZE_BUDGET)."""
    size, budget = evidence.facts.size, evidence.size_budget
    limit = IMAGE_SIZE_BUDGET if budget is None else budget
    whose = "the --size-budget of" if budget is not None else "the default budget of"
    if size > limit:
        why = "" if budget is not None else (" (the 9.5 GB limit of ModelArts' legacy custom-image pages; the "
                                             "current pages state none: set --size-budget to make this a failure)")
        return CheckOutcome(name=Rule.IMAGE_SIZE, ok=False, warning=budget is None,
                            detail=f"{_gb(size)} uncompressed, over {whose} {_gb(limit)}{why}")
    return CheckOutcome(name=Rule.IMAGE_SIZE, ok=True, detail=f"{_gb(size)} uncompressed, {whose} {_gb(limit)}")


@rule(Rule.CONDA_CHANNEL, without_probe=WithoutProbe.LEFT_OUT)
def check_conda_channels(evidence: Evidence) -> CheckOutcome:
    name, packages = Rule.CONDA_CHANNEL, evidence.probe.conda_packages
    if packages is None:
        return CheckOutcome(name=name, ok=True, skipped=True,
                            detail=f"no conda metadata ({evidence.user.conda_prefix}/conda-meta is absent: not a "
                                   "conda installation), nothing to check")
    paid = [package for package in packages if is_defaults_channel(package.channel)]
    if paid:
        channels = sorted({package.channel for package in paid})
        return CheckOutcome(
            name=name, ok=False, warning=True,
            detail=f"{len(paid)} of {len(packages)} conda packages come from Anaconda's `defaults` "
                   f"channel ({_names(channels, 3)}): {_names([package.name for package in paid])}. Anaconda's "
                   "terms make that channel paid for larger organisations; a Miniforge installer (conda-forge) "
                   "avoids it")
    return CheckOutcome(name=name, ok=True,
                        detail=f"{len(packages)} conda packages, none from Anaconda's `defaults` channel")


@rule(Rule.CANN_ENVIRONMENT)
def check_cann_environment(evidence: Evidence) -> CheckOutcome:
    env = dict(item.partition("=")[::2] for item in evidence.facts.environment)
    home = env.get("ASCEND_HOME_PATH") or env.get("ASCEND_TOOLKIT_HOME")
    libraries = env.get("LD_LIBRARY_PATH", "")
    if home and home in libraries:
        return CheckOutcome(name=Rule.CANN_ENVIRONMENT, ok=True,
                            detail=f"ENV sets CANN's home {home} and LD_LIBRARY_PATH through it")
    missing = "LD_LIBRARY_PATH does not reach it" if home else "no ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME"
    return CheckOutcome(name=Rule.CANN_ENVIRONMENT, ok=False, detail=(
        f"CANN's environment is not in the image's ENV ({missing}): ModelArts runs the boot command without a shell, "
        "so set_env.sh is never sourced; build from a CANN base image (the build puts its set_env.sh's variables "
        "into ENV)"))


@rule(Rule.NPU_DRIVER, without_probe=WithoutProbe.FAILS)
def check_npu_driver(evidence: Evidence) -> CheckOutcome:
    held = evidence.probe.driver_paths
    if held:
        return CheckOutcome(name=Rule.NPU_DRIVER, ok=False, detail=(
            f"the image holds {_names(list(held))}, where the node's NPU driver is mounted: a baked-in driver hides "
            "the node's own, which CANN is checked against; remove it from the image"))
    return CheckOutcome(name=Rule.NPU_DRIVER, ok=True, detail="no driver files baked in (the node's are mounted)")


@rule(Rule.NPU_GROUP, without_probe=WithoutProbe.FAILS)
def check_npu_group(evidence: Evidence) -> CheckOutcome:
    groups, wanted = evidence.probe.groups, evidence.npu_group
    if wanted in groups:
        return CheckOutcome(name=Rule.NPU_GROUP, ok=True, detail=f"{evidence.user.name} is in {wanted}")
    return CheckOutcome(name=Rule.NPU_GROUP, ok=False, detail=(
        f"{evidence.user.name} is not in {wanted} (its groups: {', '.join(groups) or 'none'}): the host's NPU "
        f"devices belong to that group"))


def evaluate(facts: ImageFacts, *, boot: BootFacts, size_budget: int | None = None, user: RunUser = DEFAULT_USER,
             npu: bool = False) -> list[CheckOutcome]:
    """Every registered rule, in Rule's order, judged on the gathered facts and on how the boot command's python
    started (judge_boot), for the entry's `user`; the Ascend rules only for an Ascend image (`npu`)."""
    evidence = Evidence(facts=facts, boot=boot, size_budget=size_budget, user=user)
    outcomes: list[CheckOutcome] = []
    for name in Rule:
        if name in ASCEND_RULES and not npu:
            continue
        registered = RULES[name]
        if facts.probe is not None or registered.without_probe is WithoutProbe.NOT_NEEDED:
            outcomes.append(registered.judge(evidence))
        elif registered.without_probe is WithoutProbe.FAILS:
            outcomes.append(CheckOutcome(name=name, ok=False, detail=f"the probe did not run: {facts.probe_error}"))
    return outcomes


# --------------------------------------------------------------------------------------------------------------
# Gathering (through the engine)


def probe_run(reference: str, *, timeout: float = VERIFY_TIMEOUT_S, user: RunUser = DEFAULT_USER) -> ContainerRun:
    """conformance_facts.py as root; isolated (-I) so nothing in the image's environment or cwd steers it."""
    source = probe_source(CONFORMANCE_FACTS)
    return ContainerRun(image=reference, command=(user.boot_python, "-I", "-c", source, user.conda_prefix, user.name,
                                                  str(user.uid), str(user.gid)),
                        user="0:0", working_dir="/", network=False, timeout=timeout, background=True)


def setuid_run(reference: str, *, timeout: float = VERIFY_TIMEOUT_S) -> ContainerRun:
    return ContainerRun(image=reference, command=SETUID_COMMAND, user="0:0", working_dir="/", network=False,
                        timeout=timeout, background=True)


# Like the other probes, a probe that cannot run (its container does not start, its output is garbled) is this
# image's failed check, not an error that stops the verification (and the report) of every image.


def _setuid_files(engine: Engine, reference: str, timeout: float) -> tuple[tuple[str, ...] | None, str | None]:
    try:
        return parse_find(engine.run(setuid_run(reference, timeout=timeout))), None
    except (VerifyError, EngineError) as error:
        return None, str(error)


def _base_setuid_files(engine: Engine, base_image: str, timeout: float,
                       ) -> tuple[tuple[str, ...] | None, str | None]:
    """The base's setuid files to compare with; a base the engine lacks, or cannot even look up (a label that is
    no valid reference), leaves the comparison out with the reason."""
    try:
        if engine.image(base_image) is None:
            return None, f"{base_image} is not in the engine"
    except EngineError as error:
        return None, str(error)
    return _setuid_files(engine, base_image, timeout)


def gather(engine: Engine, config: ImageConfig, *, base_image: str | None, timeout: float = VERIFY_TIMEOUT_S,
           user: RunUser = DEFAULT_USER) -> ImageFacts:
    """Run the probes in containers of the image and of `base_image`, both at once, and collect what they saw."""
    reference = config.reference

    def probe_facts() -> tuple[ProbeFacts | None, str | None]:
        try:
            return parse_probe(engine.run(probe_run(reference, timeout=timeout, user=user)).stdout), None
        except (VerifyError, EngineError) as error:
            return None, str(error)

    def base_facts() -> tuple[tuple[str, ...] | None, str | None]:
        if base_image is None:
            return None, "the image names no base (label org.opencontainers.image.base.name)"
        return _base_setuid_files(engine, base_image, timeout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        probing, basing = pool.submit(probe_facts), pool.submit(base_facts)
    (probe, probe_error), (base_files, base_error) = probing.result(), basing.result()
    return ImageFacts(
        reference=reference, config_user=config.user, working_dir=config.working_dir, size=config.size,
        probe=probe, probe_error=probe_error,
        setuid_files=probe.setuid_files if probe is not None else None,
        setuid_error=None if probe is not None else f"the probe did not run: {probe_error}",
        base_image=base_image, base_setuid_files=base_files, base_error=base_error, environment=config.environment,
    )
