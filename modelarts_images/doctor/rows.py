"""Each check's row, from what its probe found and what the selected work needs (no I/O here): the level, a
one-line detail and the fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from modelarts_images.build.emulation import ENABLE_HINT
from modelarts_images.doctor.needs import DiskNeed, Purpose, Source
from modelarts_images.doctor.report import Fact, Level, Need, Row, row
from modelarts_images.http.reach import LoginCheck, LoginOutcome, Reach, Stage
from modelarts_images.model import ARCH_SPELLINGS, docker_platform
from modelarts_images.publish import swr
from modelarts_images.shared.text import size

if TYPE_CHECKING:
    from modelarts_images.doctor.local import DiskFacts, PlatformFacts, PythonFacts
    from modelarts_images.engine.cli import BuildKitCli
    from modelarts_images.engine.probe import EngineFacts

Facts = dict[str, Fact]
ENGINE_FIX = ("start dockerd (scripts/engine-up.sh installs and starts one), or point DOCKER_HOST or `docker context "
              "use` at a running engine")
NVIDIA_FIX = ("install the NVIDIA Container Toolkit and register its runtime (nvidia-ctk runtime configure "
              "--runtime=docker), then restart dockerd; or verify with --device cpu")
BUILDKIT_FIX = ("install the buildx plugin (Debian/Ubuntu: apt-get install docker-buildx; Docker's repository: "
                "docker-buildx-plugin) or Debian's docker.io client (older than 23), or build with --backend docker")
PYTHON_FIX = "install the project into this interpreter: {python} -m pip install -e '.[dev]' (in the project)"


def unfinished(check: str, need: Need | bool, bound: float) -> Row:
    """A check still running at doctor's deadline."""
    return row(check, ok=False, need=need, detail=f"did not finish within {bound:g} s",
               fix="run `inv doctor` again; a check that hangs points at the network or the engine",
               facts={"timed_out": True})


# --------------------------------------------------------------------------------------------------------------
# Python


def python_row(facts: PythonFacts, seconds: float = 0.0) -> Row:
    where = f"Python {facts.version} ({facts.executable})"
    fix = PYTHON_FIX.format(python=facts.executable)
    data: Facts = {"python": facts.version, "executable": facts.executable, "distribution": facts.distribution,
            "checked": facts.checked, "unmet": len(facts.unmet)}
    if not facts.distribution:
        return Row(check="python", level=Level.WARNING, detail=f"{where}: modelarts-images is not installed, so its "
                   "requirements were not checked", fix=fix, seconds=seconds, facts=tuple(data.items()))
    if not facts.python_ok:
        return row("python", ok=False, detail=f"{where} does not satisfy {facts.distribution}'s Requires-Python "
                   f"{facts.requires_python}", fix="run the tasks with a Python that does", seconds=seconds,
                   facts=data)
    if facts.unmet:
        return row("python", ok=False, detail=f"{where}: {len(facts.unmet)} of {facts.checked} requirements of "
                   f"{facts.distribution} unmet: {'; '.join(facts.unmet)}", fix=fix, seconds=seconds, facts=data)
    return row("python", ok=True, detail=f"{where}; {facts.distribution}: all {facts.checked} requirements met",
               seconds=seconds, facts=data)


# --------------------------------------------------------------------------------------------------------------
# The engine, its BuildKit CLI, its GPU runtime, emulation


def engine_row(facts: EngineFacts) -> Row:
    data: Facts = {"endpoint": facts.endpoint, "host": facts.host, "local": facts.local, "reached": facts.reached,
            "version": facts.version, "api_version": facts.api_version, "architecture": facts.architecture,
            "rootless": facts.rootless, "root_dir": facts.root_dir}
    if not facts.reached:
        return row("engine", ok=False, detail=facts.problem or f"no Docker Engine answers at {facts.endpoint}",
                   fix=ENGINE_FIX, seconds=facts.seconds, facts=data)
    if facts.problem:
        return row("engine", ok=False, detail=f"the engine at {facts.endpoint} answers a ping, but {facts.problem}",
                   fix="look at dockerd's log (journalctl -u docker)", seconds=facts.seconds, facts=data)
    mode = "rootless" if facts.rootless else "not rootless"
    return row("engine", ok=True, detail=f"Docker Engine {facts.version} (API {facts.api_version}, "
               f"{facts.architecture}) at {facts.endpoint}; {mode}", seconds=facts.seconds, facts=data)


def buildkit_row(cli: BuildKitCli | None, problem: str, need: Need, seconds: float = 0.0) -> Row:
    unused = " (not used: the backend is docker)" if need is Need.NOT_NEEDED else ""
    if cli is None:
        return row("buildkit", ok=False, need=need, detail=problem.split(" Install ")[0] + unused, fix=BUILDKIT_FIX,
                   seconds=seconds, facts={"found": False})
    how = (f"docker buildx ({cli.version}) at {cli.path}" if cli.mode.value == "buildx" else
           f"DOCKER_BUILDKIT=1 docker build with docker {cli.version} at {cli.path} (a client older than 23)")
    return row("buildkit", ok=True, detail=how + unused, seconds=seconds,
               facts={"found": True, "path": cli.path, "mode": cli.mode.value, "version": cli.version})


def nvidia_row(facts: EngineFacts | None, need: Need, reason: str) -> Row:
    if facts is None or not facts.reached or facts.problem:
        detail = "not checked: the engine did not answer" + (f" ({reason})" if need is not Need.REQUIRED else "")
        if need is Need.NOT_NEEDED:
            return row("nvidia runtime", ok=True, detail=f"not needed: {reason}", facts={"needed": False})
        return row("nvidia runtime", ok=False, need=need, detail=detail, fix="start the engine first (see engine)",
                   facts={"needed": need is Need.REQUIRED})
    runtimes = ", ".join(facts.runtimes) or "none"
    data: Facts = {"runtimes": runtimes, "nvidia": "nvidia" in facts.runtimes, "needed": need is Need.REQUIRED}
    if "nvidia" in facts.runtimes:
        return row("nvidia runtime", ok=True, detail=f"the engine has the nvidia runtime (runtimes: {runtimes})",
                   facts=data)
    if need is Need.NOT_NEEDED:
        return row("nvidia runtime", ok=True, detail=f"no nvidia runtime (runtimes: {runtimes}); not needed: {reason}",
                   facts=data)
    return row("nvidia runtime", ok=False, need=need, detail=f"the engine has no nvidia runtime (runtimes: "
               f"{runtimes}), and {reason}", fix=NVIDIA_FIX, facts=data)


def emulation_rows(arches: Sequence[str], engine_arch: str, *, local: bool, engine: str,
                   handlers: Callable[[str], tuple[str | None, str | None]]) -> tuple[Row, ...]:
    """A row per selected architecture other than the engine's: `handlers(arch)` gives the enabled binfmt_misc
    handler's name and emulation.emulation_problem()'s text."""
    engine_arch = ARCH_SPELLINGS.get(engine_arch, engine_arch)
    foreign = [arch for arch in arches if arch != engine_arch]
    if not foreign:
        return (row("emulation", ok=True, detail=f"not needed: every selected image is for {engine_arch}, the "
                    "engine's architecture", facts={"needed": False}),)
    rows = []
    for arch in foreign:
        check = f"emulation {arch}"
        if not local:
            rows.append(row(check, ok=True, detail=f"the engine ({engine}) is not on this machine: its host's "
                            "binfmt_misc handlers answer for it (not checked from here)", facts={"checked": False}))
            continue
        handler, problem = handlers(arch)
        if problem is None:
            rows.append(row(check, ok=True, detail=f"{docker_platform(arch)} images run under QEMU on this "
                            f"{engine_arch} engine: binfmt_misc handler {handler} is enabled",
                            facts={"handler": handler}))
            continue
        detail = problem.split(": " + ENABLE_HINT)[0]
        rows.append(row(check, ok=False, detail=detail, fix=ENABLE_HINT, facts={"handler": None}))
    return tuple(rows)


# --------------------------------------------------------------------------------------------------------------
# Disk


def disk_rows(cache: DiskFacts, engine_dir: DiskFacts | None, cache_need: DiskNeed, engine_need: DiskNeed, *,
              engine: EngineFacts | None) -> tuple[Row, ...]:
    cache_row = _disk_row("disk: cache", cache, cache_need.bytes, cache_need.described,
                          fix="free space there, or point modelarts.cache_dir (INVOKE_MODELARTS_CACHE_DIR) at a disk "
                              "with more room", unwritable="set modelarts.cache_dir (INVOKE_MODELARTS_CACHE_DIR) to a "
                              "directory this user can write")
    if engine is None or not engine.reached or engine.problem:
        engine_row_ = Row(check="disk: engine", level=Level.WARNING, detail="not checked: the engine did not answer",
                          fix="start the engine first (see engine)", facts=(("checked", False),))
    elif engine_dir is None:
        engine_row_ = row("disk: engine", ok=True, detail=f"not checked: the engine's data root "
                          f"{engine.root_dir or '(not said)'} is not on this machine ({engine.endpoint})",
                          facts={"checked": False, "root_dir": engine.root_dir})
    else:
        shared = cache.device is not None and cache.device == engine_dir.device
        needed = engine_need.bytes + (cache_need.bytes if shared else 0)
        basis = engine_need.described + ("; it shares a file system with the cache, whose downloads count too"
                                         if shared else "")
        engine_row_ = _disk_row("disk: engine", engine_dir, needed, basis,
                                fix="free space there (docker system prune, docker builder prune), or move the "
                                    "engine's data-root (daemon.json) to a disk with more room", unwritable="")
    return cache_row, engine_row_


def _disk_row(check: str, facts: DiskFacts, needed: int, basis: str, *, fix: str, unwritable: str) -> Row:
    data: Facts = {"path": facts.path, "measured": facts.measured, "free_bytes": facts.free, "need_bytes": needed}
    if facts.free is None:
        return row(check, ok=False, detail=f"the free space of {facts.measured} cannot be read: {facts.problem}",
                   fix=fix, facts=data)
    if unwritable and not facts.writable:
        return row(check, ok=False, detail=f"{facts.measured} cannot be written by this user", fix=unwritable,
                   facts=data)
    where = facts.measured if facts.measured == facts.path else f"{facts.measured} (for {facts.path})"
    detail = f"{size(facts.free)} free at {where}; the selected work needs about {size(needed)} ({basis})"
    return row(check, ok=facts.free >= needed, detail=detail, fix=fix, facts=data)


# --------------------------------------------------------------------------------------------------------------
# Sources


def stages_passed(reached: Reach) -> str:
    return ", ".join(str(stage).upper() for stage in reached.passed) or "nothing"


def _via(reached: Reach) -> str:
    return f"; via the proxy {reached.proxy} ({reached.proxy_variable})" if reached.proxy else ""


SOURCE_FIXES = {
    Stage.START: "give an http:// or https:// URL (or an http proxy)",
    Stage.DNS: "check the host name and this machine's DNS (/etc/resolv.conf); or set a proxy (HTTPS_PROXY, "
               "HTTP_PROXY) or a mirror (modelarts.mirrors in invoke.yaml)",
    Stage.TCP: "check the network path (firewall, proxy: HTTPS_PROXY, HTTP_PROXY, NO_PROXY) and that the server is "
               "up; or set a mirror (modelarts.mirrors in invoke.yaml)",
    Stage.PROXY: "check the proxy (HTTPS_PROXY, HTTP_PROXY) and its credentials, or leave the host out of it "
                 "with NO_PROXY",
    Stage.TLS: "a proxy that intercepts TLS needs its CA in REQUESTS_CA_BUNDLE; a server without TLS needs an "
               "http:// URL",
    Stage.HTTP: "the server accepts connections but does not answer: try again later, or set a mirror "
                "(modelarts.mirrors in invoke.yaml)",
}


def source_row(source: Source, reached: Reach) -> Row:
    check = f"source {source.origin}"
    data: Facts = {"url": reached.url, "reached": str(reached.reached), "failed": str(reached.failed or ""),
            "status": reached.status, "timed_out": reached.timed_out, "proxy": reached.proxy,
            "proxy_variable": reached.proxy_variable, "address": reached.address,
            "purposes": ", ".join(dict.fromkeys(str(use.purpose) for use in source.uses)),
            "need": str(source.need)}
    cached = " (every file asked of it is in the cache already)" if source.need is Need.WANTED and all(
        use.purpose in (Purpose.INSTALLER, Purpose.WHEEL, Purpose.LOCKED) for use in source.uses) else ""
    serves = f"; serves the {source.described}"
    if reached.status is not None:
        registry = all(use.purpose is Purpose.BASE_REGISTRY for use in source.uses) and reached.status == 401
        answered = (f"HTTP {reached.status} {reached.reason}".rstrip()
                    + f" in {reached.seconds:.2f} s ({stages_passed(reached)}{_via(reached)})")
        if reached.status < 400 or registry:
            return row(check, ok=True, detail=answered + serves, seconds=reached.seconds, facts=data)
        return Row(check=check, level=Level.WARNING, detail=f"{answered} for {reached.url}{serves}",
                   fix="the server answers, but not with the file: check the URL (versions.yaml, invoke.yaml, "
                       "modelarts.mirrors) and whether it needs credentials", required=source.need is Need.REQUIRED,
                   seconds=reached.seconds, facts=tuple(data.items()))
    failed = reached.failed or Stage.START
    what = "timed out" if reached.timed_out else "failed"
    passed = stages_passed(reached)
    after = f" ({passed} passed{_via(reached)})" if passed != "nothing" or reached.proxy else ""
    detail = f"{str(failed).upper()} {what}: {reached.problem}{after}{serves}{cached}"
    return row(check, ok=False, need=source.need, detail=detail, fix=SOURCE_FIXES[failed], seconds=reached.seconds,
               facts=data)


# --------------------------------------------------------------------------------------------------------------
# The registry's login, ModelArts and OBS


def login_row(registry: str, *, source: str, check: LoginCheck | None, problem: str = "", bound: float = 0.0,
              hide: Callable[[str], str] = str, region: str | None = None) -> Row:
    """`source` names where the credentials came from ('' when the environment has none), `problem` why they
    cannot be used (a pair set by half); `check` is None when the check did not finish."""
    name = f"registry login {registry}"
    hint = swr.missing_login_hint(registry, region=region)
    if problem:
        return row(name, ok=False, detail=hide(problem), fix="set both variables of the pair, or neither "
                   "(docs/guide/push.md: Credentials)", facts={"credentials": "half set"})
    if check is None:
        return unfinished(name, bool(source), bound)
    reached = check.reach
    data: Facts = {"source": source, "user": check.user, "outcome": str(check.outcome), "status": reached.status,
            "reached": str(reached.reached), "proxy": reached.proxy}
    where = _via(reached)
    if not source:
        if reached.status == 200:
            return row(name, ok=True, detail=f"no login in the environment, and {registry} asks for none (/v2/ "
                       f"answers HTTP 200){where}", seconds=check.seconds, facts=data)
        seen = (f"/v2/ answers HTTP {reached.status}" if reached.answered else
                f"not reached either: {str(reached.failed or Stage.START).upper()} failed: {reached.problem}")
        return Row(check=name, level=Level.WARNING, detail=f"no login in the environment for {registry} "
                   f"(`inv push` needs one); {seen}{where}", fix=hint, required=False, seconds=check.seconds,
                   facts=tuple(data.items()))
    who = f"{check.user} (from {source})"
    outcomes = {
        LoginOutcome.ACCEPTED: (True, f"{registry} accepts the login of {who}{where}", ""),
        LoginOutcome.ANONYMOUS: (True, f"{registry} asks for no login (/v2/ answers HTTP 200); {who} is set{where}",
                                 ""),
        LoginOutcome.REJECTED: (False, f"{registry} rejected the login of {who}: {check.detail}{where}",
                                "check the variables' values: SWR takes a permanent AK/SK of a user with SWR rights "
                                "(the project: --project or modelarts.swr_project), or the login command SWR's "
                                "console generates"),
        LoginOutcome.UNREACHABLE: (False, f"{registry} not reached: {str(reached.failed or Stage.START).upper()} "
                                          f"failed ({stages_passed(reached)} passed): {reached.problem}{where}",
                                   SOURCE_FIXES[reached.failed or Stage.START]),
        LoginOutcome.NOT_A_REGISTRY: (False, f"{registry} answers, but not as a registry: {check.detail}{where}",
                                      "check the registry host of the entries (registry in versions.yaml or "
                                      "invoke.yaml)"),
        LoginOutcome.FAILED: (False, f"the login of {who} at {registry} could not be tried: {check.detail}{where}",
                              "run `inv login` to see the registry's own answer"),
        LoginOutcome.NOT_TRIED: (False, f"{who}: not tried", hint),
    }
    ok, detail, fix = outcomes[check.outcome]
    return row(name, ok=ok, detail=hide(detail), fix=fix, seconds=check.seconds, facts=data)


def platform_row(facts: PlatformFacts, need: Need, reason: str, *, regions: Sequence[str | None]) -> Row:
    data: Facts = {"keys": facts.keys, "temporary": facts.temporary, "obs_dir": facts.obs_dir,
            "sdks_missing": ", ".join(facts.sdks_missing), "needed": str(need)}
    if need is Need.NOT_NEEDED:
        return row("modelarts", ok=True, detail="not configured (no AK/SK, no modelarts.obs_dir): only `inv "
                   "verify --on modelarts` needs them", facts=data)
    names = " or ".join(f"{access}/{secret}" for access, secret, _ in swr.AK_SK_SOURCES)
    problems = []
    if facts.problem:
        problems.append(facts.problem)
    elif not facts.keys:
        problems.append(f"no AK/SK: set {names}")
    if facts.obs_problem:
        problems.append(facts.obs_problem)
    elif not facts.obs_dir:
        problems.append("no OBS folder: give --obs-dir obs://<bucket>/<folder>/ or set modelarts.obs_dir")
    if any(region is None for region in regions):
        problems.append("a selected image's registry is not an SWR host that names its region: give --region")
    if facts.sdks_missing:
        problems.append(f"Huawei Cloud's SDKs missing ({', '.join(facts.sdks_missing)}): pip install -e '.[dev]'")
    notes = list(facts.shape)
    if facts.temporary:
        notes.append("a temporary AK/SK (a security token is set): the jobs work, SWR's long-term login does not")
    found = (f"AK/SK from {facts.keys}" if facts.keys else "no AK/SK") + (
        f", OBS folder {facts.obs_dir}" if facts.obs_dir else "")
    if problems:
        return row("modelarts", ok=False, need=need, detail=f"{found}: {'; '.join(problems)} ({reason})",
                   fix="see docs/guide/modelarts.md: what it needs", facts=data)
    if notes:
        return Row(check="modelarts", level=Level.WARNING, detail=f"{found}: {'; '.join(notes)}",
                   fix="check the keys: Huawei Cloud's AK is 20 capital letters and digits, its SK 40 letters and "
                       "digits", required=need is Need.REQUIRED, facts=tuple(data.items()))
    return row("modelarts", ok=True, detail=f"{found}, shaped as Huawei Cloud's; the SDKs are installed ({reason})",
               facts=data)

