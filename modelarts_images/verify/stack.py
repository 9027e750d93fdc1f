"""The stack, checked in the image the way a ModelArts job meets it: `pip check` (every requirement of every
installed distribution met), each requirement of the stack imported as the image's user, and each `checks:` script run
as a boot command is run. Every outcome is one check in the report; nothing here stops the verification."""

from __future__ import annotations

from pathlib import Path

from modelarts_images.contract import RunUser
from modelarts_images.engine.api import ContainerOutput, ContainerRun, Engine, Mount
from modelarts_images.errors import EngineError, VerifyError
from modelarts_images.model import ImageSpec
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.probes import STACK_IMPORTS, probe_source, tagged_json

IMPORTS_PREFIX = "MODELARTS_STACK_IMPORTS "
TAIL = 8  # lines of a failed check's output in its detail


def _as_job(reference: str, user: RunUser, command: tuple[str, ...], *, timeout: float,
            mounts: tuple[Mount, ...] = ()) -> ContainerRun:
    """A container started the way ModelArts starts a job's boot command: the user, its home, the variables."""
    return ContainerRun(image=reference, command=command, user=user.spec, working_dir=user.home,
                        environment=user.job_environment(gpus=0), mounts=mounts, network=False, timeout=timeout)


def pip_check_run(reference: str, user: RunUser, *, timeout: float) -> ContainerRun:
    return _as_job(reference, user, (user.boot_python, "-m", "pip", "check"), timeout=timeout)


def imports_run(reference: str, user: RunUser, names: tuple[str, ...], *, timeout: float) -> ContainerRun:
    return _as_job(reference, user, (user.boot_python, "-c", probe_source(STACK_IMPORTS), *names), timeout=timeout)


def check_run(reference: str, user: RunUser, script: Path, *, timeout: float) -> ContainerRun:
    """The check script as a boot command: `python ${MA_JOB_DIR}/code/<script>`, where the job's code from OBS
    would be. The script alone is mounted, not its folder: what lies beside it (a .env, a checkout's .git, a
    CI home's .docker/config.json) must not be readable in the container, whose output reaches the report."""
    target = f"{user.code_dir}/{script.name}"
    return _as_job(reference, user, (user.boot_python, target), timeout=timeout,
                   mounts=(Mount(source=str(script), target=target, read_only=True),))


def _tail(output: ContainerOutput) -> str:
    lines = (output.stdout.rstrip("\n") + "\n" + output.stderr).strip("\n").splitlines()[-TAIL:]
    return " | ".join(line.strip() for line in lines) or "no output"


def _ran(engine: Engine, spec: ContainerRun, name: str) -> ContainerOutput | CheckOutcome:
    """The container's output, or the failed check saying why it did not run."""
    try:
        return engine.run(spec)
    except EngineError as error:
        return CheckOutcome(name=name, ok=False, detail=f"did not run: {error}")


def check_pip(engine: Engine, image: ImageSpec, reference: str, *, timeout: float) -> CheckOutcome:
    output = _ran(engine, pip_check_run(reference, image.user, timeout=timeout), "pip-check")
    if isinstance(output, CheckOutcome):
        return output
    if output.exit_code == 0:
        return CheckOutcome(name="pip-check", ok=True, detail="every installed distribution has its requirements")
    return CheckOutcome(name="pip-check", ok=False, detail=f"pip check exited with {output.exit_code}: "
                                                           f"{_tail(output)}")


def check_imports(engine: Engine, image: ImageSpec, reference: str, *, timeout: float) -> list[CheckOutcome]:
    names = tuple(requirement.name for requirement in image.stack.requirements)
    if not names:
        return []
    try:
        output = _ran(engine, imports_run(reference, image.user, names, timeout=timeout), "import")
        if isinstance(output, CheckOutcome):
            return [output]
        found = tagged_json(output.stdout, IMPORTS_PREFIX, what="stack import probe")
    except VerifyError as error:
        return [CheckOutcome(name="import", ok=False, detail=str(error))]
    outcomes = []
    for name in names:
        facts = found.get(name) or {}
        version, modules, errors = facts.get("version"), facts.get("modules") or [], facts.get("errors") or {}
        if version is None:
            outcomes.append(CheckOutcome(name=f"import:{name}", ok=False, detail=f"{name} is not installed"))
        elif errors:
            failed = "; ".join(f"{module}: {reason}" for module, reason in sorted(errors.items()))
            outcomes.append(CheckOutcome(name=f"import:{name}", ok=False, detail=f"{name} {version}: {failed}"))
        else:
            shown = ", ".join(modules) or "no importable module (a distribution of data or scripts)"
            outcomes.append(CheckOutcome(name=f"import:{name}", ok=True, detail=f"{name} {version}: {shown}"))
    return outcomes


def run_checks(engine: Engine, image: ImageSpec, reference: str, *, timeout: float) -> list[CheckOutcome]:
    outcomes = []
    for script in image.stack.checks:
        name = f"check:{script.name}"
        output = _ran(engine, check_run(reference, image.user, script, timeout=timeout), name)
        if isinstance(output, CheckOutcome):
            outcomes.append(output)
        elif output.timed_out:
            outcomes.append(CheckOutcome(name=name, ok=False, detail=f"timed out after {output.seconds:.0f} s: "
                                                                     f"{_tail(output)}"))
        elif output.exit_code != 0:
            outcomes.append(CheckOutcome(name=name, ok=False, detail=f"{script} exited with {output.exit_code}: "
                                                                     f"{_tail(output)}"))
        else:
            outcomes.append(CheckOutcome(name=name, ok=True, detail=f"{script.name} exited with 0"))
    return outcomes


def check_stack(engine: Engine, image: ImageSpec, reference: str, *, timeout: float) -> tuple[CheckOutcome, ...]:
    """Every check of the image's stack (none for an image without one)."""
    if image.stack.empty:
        return ()
    outcomes = [check_pip(engine, image, reference, timeout=timeout)] if image.stack.requirements else []
    outcomes += check_imports(engine, image, reference, timeout=timeout)
    outcomes += run_checks(engine, image, reference, timeout=timeout)
    return tuple(outcomes)
