"""Make the engine tier's local base images where an engine answers and they are missing: what `nox -s tests`
runs before pytest, so the test command runs the engine tier instead of skipping it for want of a base.

    python -m tests.support.bases [PYTEST_ARGS...]

Each base is made one of two ways, the first that can run here:

- `script`: scripts/test-base-image.sh NAME ARCH (debootstrap from the host's apt mirror, then `docker import`):
  needs root and debootstrap on PATH or apt-get to install it; what CI does, and the only way where no image can
  be pulled;
- `pull`: `debian:bookworm` pulled by the engine, python3 and python3-venv installed with apt in a build, tagged
  as the base.

Both give Debian bookworm with Python 3.11 and CMD ["/bin/bash"]; the image is checked for that once made. A
script that fails falls back to the pull. The arm64 base (tests/engine/test_arm64.py) is made only where the
engine is arm64, or is local and an aarch64 binfmt_misc handler is registered (modelarts_images.build.emulation):
under emulation it takes minutes; otherwise it is left, and its tests say why. With no engine answering nothing is
made. Nothing here fails the session: a base that could not be made leaves its tests skipped with the reason (or
failed, with MODELARTS_IMAGES_REQUIRE_ENGINE=1). The pytest arguments, when they name test paths, narrow the bases
to those the selected tests need (`nox -s tests -- tests/unit` makes none).
"""

from __future__ import annotations

import dataclasses
import io
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from modelarts_images.build import emulation
from modelarts_images.engine.adapter import connect
from modelarts_images.errors import EngineError
from modelarts_images.model import AARCH64, ARCH_SPELLINGS, docker_arch
from tests.support.engine_tier import ARM64_BASE, REQUIRE_ENGINE, ROOT, TEST_BASE

PREFIX = "test bases:"
SCRIPT = ROOT / "scripts" / "test-base-image.sh"
ENGINE_TESTS = ROOT / "tests" / "engine"
ARM64_TESTS = ENGINE_TESTS / "test_arm64.py"
DEBIAN = "debian:bookworm"
BUILD_TIMEOUT = 3600  # seconds for the engine's answers while a base is built (apt under emulation is slow)

# The ways (Decision.way)
PRESENT = "present"
SCRIPT_WAY = "script"
PULL = "pull"
LEAVE = "leave"  # not made here: its tests say why
NO_ENGINE = "no engine"


@dataclasses.dataclass(frozen=True)
class Base:
    name: str
    arch: str  # the engine's spelling: amd64, arm64
    tests: Path  # the tests that need it: a file or a directory
    packages: tuple[str, ...] = ("python3", "python3-venv")


@dataclasses.dataclass(frozen=True)
class Host:
    """What this machine offers for making a base."""

    root: bool
    debootstrap: bool  # on PATH, or installable with apt-get (scripts/lib-apt.sh)
    arch: str  # dpkg's spelling
    buildkit_cli: bool  # Debian's /usr/bin/docker: the script builds a foreign base with it
    aarch64_handler: str | None  # the binfmt_misc handler's name

    @classmethod
    def probe(cls) -> Host:
        return cls(root=hasattr(os, "geteuid") and os.geteuid() == 0,
                   debootstrap=bool(shutil.which("debootstrap") or shutil.which("apt-get")),
                   arch=_dpkg_arch(), buildkit_cli=os.access("/usr/bin/docker", os.X_OK),
                   aarch64_handler=emulation.handler(AARCH64))


@dataclasses.dataclass(frozen=True)
class EngineState:
    """The engine as the decision sees it."""

    where: str
    arch: str  # the engine's spelling: amd64, arm64
    local: bool  # reached through a local socket: this machine's binfmt handlers are its own
    images: dict[str, str]  # base name -> the architecture its image records, for the bases present


@dataclasses.dataclass(frozen=True)
class Decision:
    base: Base
    way: str
    why: str


def bases(engine_arch: str) -> tuple[Base, ...]:
    """The engine tier's bases: the test base for the engine's own architecture, and the arm64 base."""
    return (Base(TEST_BASE, engine_arch, ENGINE_TESTS),
            Base(ARM64_BASE, "arm64", ARM64_TESTS, ("python3", "python3-venv", "ca-certificates")))


def decide(base: Base, engine: EngineState | None, host: Host) -> Decision:
    """Which way `base` is made here (PRESENT and LEAVE: not at all), and why."""
    if engine is None:
        return Decision(base, NO_ENGINE, "no Docker Engine answers")
    if base.name in engine.images:
        have = engine.images[base.name]
        if have != base.arch:
            return Decision(base, PRESENT, f"present, but its architecture is {have}, not {base.arch}: remove it "
                                           f"(docker rmi {base.name}) to have it made again")
        return Decision(base, PRESENT, f"present ({have})")
    foreign = base.arch != engine.arch
    if foreign and not (engine.local and host.aarch64_handler):
        why = ("the engine is remote and runs on " + engine.arch if not engine.local else
               f"no binfmt_misc handler for aarch64 on this {engine.arch} host (scripts/binfmt-up.sh registers one)")
        return Decision(base, LEAVE, f"missing; not made, since {why}: its tests say why they are skipped")
    script_runs = host.root and host.debootstrap and (base.arch == host.arch or host.buildkit_cli)
    if script_runs:
        return Decision(base, SCRIPT_WAY, f"missing: making it with scripts/test-base-image.sh {base.name} "
                                          f"{base.arch} (debootstrap{', under emulation' if foreign else ''})")
    missing = [what for what, ok in (("root", host.root), ("debootstrap", host.debootstrap),
                                     ("/usr/bin/docker", base.arch == host.arch or host.buildkit_cli)) if not ok]
    return Decision(base, PULL, f"missing: making it from {DEBIAN} pulled by the engine (scripts/test-base-image.sh "
                                f"needs {' and '.join(missing)} here){', under emulation' if foreign else ''}")


def needed(base: Base, pytest_args: Sequence[str]) -> bool:
    """Whether the tests the pytest arguments select can need `base`: every base when no argument names a test path
    (a path in tests/ or above it; others, such as --junitxml's value, are not the tests')."""
    tests_dir = ROOT / "tests"
    paths = [Path(arg.split("::", 1)[0]).resolve() for arg in pytest_args if not arg.startswith("-")]
    paths = [path for path in paths if path.exists() and (path == tests_dir or tests_dir in path.parents
                                                          or path in tests_dir.parents)]
    if not paths:
        return True
    tests = base.tests.resolve()
    return any(path == tests or path in tests.parents or tests in path.parents for path in paths)


# --------------------------------------------------------------------------------------------------------------
# The engine


def engine_spelling(arch: str) -> str:
    """An architecture as the engine's image config spells it (x86_64 -> amd64); unknown ones as they are."""
    return docker_arch(ARCH_SPELLINGS[arch]) if arch in ARCH_SPELLINGS else arch


def engine_state(client: Any, where: str, names: Sequence[str]) -> EngineState:
    arch = str(client.info().get("Architecture") or platform.machine())
    images = {}
    for name in names:
        try:
            images[name] = str(client.images.get(name).attrs.get("Architecture") or "")
        except docker.errors.ImageNotFound:
            continue
    return EngineState(where=where, arch=engine_spelling(arch),
                       local=client.api.base_url in ("http+docker://localhost", "http+docker://localnpipe"),
                       images=images)


# --------------------------------------------------------------------------------------------------------------
# Making a base


def by_script(base: Base) -> None:
    """scripts/test-base-image.sh NAME ARCH, its output shown as it goes."""
    result = subprocess.run(["bash", str(SCRIPT), base.name, base.arch], cwd=ROOT, check=False, stdout=sys.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/test-base-image.sh exited {result.returncode} (its output is above)")


def by_pull(base: Base, client: Any, say: Callable[[str], None]) -> None:
    """debian:bookworm for the base's platform (the local one if it is that platform's), apt's python3 and venv."""
    platform_name = f"linux/{base.arch}"
    try:
        source = client.images.get(DEBIAN)
        if source.attrs.get("Architecture") != base.arch:
            raise docker.errors.ImageNotFound(f"{DEBIAN} here is {source.attrs.get('Architecture')}")
    except docker.errors.ImageNotFound:
        say(f"pulling {DEBIAN} ({platform_name})")
        repository, tag = DEBIAN.split(":")
        client.images.pull(repository, tag=tag, platform=platform_name)
    dockerfile = (f"FROM {DEBIAN}\n"
                  "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                  f"{' '.join(base.packages)} && rm -rf /var/lib/apt/lists/*\n"
                  'CMD ["/bin/bash"]\n')
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=base.name, rm=True, forcerm=True, pull=False,
                        platform=platform_name)


def check_made(base: Base, client: Any) -> str:
    """What the new base is ("Python 3.11.2, CMD /bin/bash"); RuntimeError unless it is what the tests take."""
    attrs = client.images.get(base.name).attrs
    problems = []
    if attrs.get("Architecture") != base.arch:
        problems.append(f"its architecture is {attrs.get('Architecture')}, not {base.arch}")
    cmd = (attrs.get("Config") or {}).get("Cmd")
    if cmd != ["/bin/bash"]:
        problems.append(f"its CMD is {cmd}, not ['/bin/bash']")
    output = client.containers.run(base.name, ["python3", "-c", "import sys; print(sys.version.split()[0])"],
                                   platform=f"linux/{base.arch}", remove=True)
    version = output.decode("utf-8", "replace").strip()
    if not version.startswith("3.11."):
        problems.append(f"its python3 is {version!r}, not 3.11")
    if problems:
        raise RuntimeError(f"{base.name} was made, but " + "; ".join(problems))
    return f"Python {version}, CMD /bin/bash"


def make(decision: Decision, client: Any, say: Callable[[str], None]) -> bool:
    """Make the base the decided way (a failed script falls back to the pull); True once it is there."""
    base = decision.base
    started = time.monotonic()
    ways = [SCRIPT_WAY, PULL] if decision.way == SCRIPT_WAY else [PULL]
    for way in ways:
        try:
            if way == SCRIPT_WAY:
                by_script(base)
            else:
                by_pull(base, client, say)
            made = check_made(base, client)
        except (RuntimeError, OSError, docker.errors.DockerException, requests.RequestException) as error:
            following = f"; trying {PULL} from {DEBIAN}" if way != ways[-1] else ""
            say(f"could not make {base.name} by {way}: {str(error).strip()[-600:]}{following}")
            continue
        say(f"{base.name} made in {time.monotonic() - started:.0f}s by {way}: {made}")
        return True
    say(f"{base.name} is still missing: the tests that need it will be skipped with the reason"
        f" (or fail, with {REQUIRE_ENGINE}=1)")
    return False


# --------------------------------------------------------------------------------------------------------------


def main(pytest_args: Sequence[str], say: Callable[[str], None] | None = None) -> list[Decision]:
    """Decide for each base, make those decided so, and say what was done; the decisions are returned."""
    say = say or (lambda text: print(PREFIX, text, flush=True))
    try:
        adapter = connect()
    except EngineError as error:
        say(f"{error} Nothing made: the engine tier will be skipped (or fail, with {REQUIRE_ENGINE}=1).")
        return [Decision(base, NO_ENGINE, "no Docker Engine answers")
                for base in bases(engine_spelling(platform.machine()))]
    where = adapter.endpoint
    adapter.close()
    client = docker.from_env(timeout=BUILD_TIMEOUT)
    try:
        try:
            arch = str(client.info().get("Architecture") or platform.machine())
            wanted = bases(engine_spelling(arch))
            state = engine_state(client, where, [base.name for base in wanted])
        except (docker.errors.DockerException, requests.RequestException) as error:
            say(f"the engine at {where} stopped answering ({error}): nothing made")
            return []
        host = Host.probe()
        decisions = []
        for base in wanted:
            if not needed(base, pytest_args):
                decisions.append(Decision(base, LEAVE, "not needed by the selected tests"))
                if base.name not in state.images:
                    say(f"{base.name}: missing, but the selected tests do not need it")
                continue
            decision = decide(base, state, host)
            decisions.append(decision)
            say(f"{base.name}: {decision.why}")
            if decision.way in (SCRIPT_WAY, PULL):
                make(decision, client, say)
        return decisions
    finally:
        client.close()


def _dpkg_arch() -> str:
    try:
        found = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
    except OSError:
        found = None
    if found is not None and found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    return engine_spelling(platform.machine())


if __name__ == "__main__":
    main(sys.argv[1:])
