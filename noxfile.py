"""Sessions: `nox -l` lists them; `nox` alone runs lint, typecheck and tests."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (unit tier, plus the engine tier when a Docker Engine answers): first the engine tier's
    base images are made where an engine answers and they are missing (tests/support/bases.py says how)."""
    _install(session)
    session.run("python", "-m", "tests.support.bases", *session.posargs)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check the code with ruff (verify/ and context/ as Python 3.7: they run inside images) and the Dockerfile
    with hadolint."""
    _install(session)
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "check", "--target-version", "py37", "verify/", "context/")
    session.run("hadolint", "--config", ".hadolint.yaml", "context/Dockerfile")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the code with mypy --strict."""
    _install(session)
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the reference pages from the code and build the documentation into site/ (mkdocs --strict).

    On CI (CI set), a page that had to be regenerated fails the session: the committed page was stale.
    """
    import os

    session.install("-e", ".[docs]")
    session.run("python", "docs/gen_reference.py", *(["--fail-if-changed"] if os.environ.get("CI") else []))
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (fetch against nginx, build, matrix rerun, stack, layers, CI, ModelArts, distributed,
    arm64 under emulation) and write bench/results/; posargs: names."""
    _install(session)
    for name in session.posargs or ["fetch", "build", "matrix", "stack", "layers", "ci", "modelarts", "distributed",
                                    "arm64", "doctor"]:
        # The engine benchmarks reuse the engine tier's helpers from tests/.
        session.run("python", f"bench/bench_{name}.py", env={"PYTHONPATH": "."})


# --------------------------------------------------------------------------------------------------------------
# The matrix: engine sessions, run in the current environment (python=False), logic in modelarts_images.matrix.

MATRIX_RUN = uuid.uuid4().hex[:12]  # marks the cells this nox run ran, for the closing summary


def _matrix_params() -> list[Any]:
    """One param per entry of versions.yaml (id = image id, tags cpu / cudaNN); a single 'all' param when the
    file cannot be read, so the session still runs and reports the file's problem."""
    # nox lets every logger's DEBUG lines through: invoke's config loading would print twenty of them first
    logging.getLogger("invoke").setLevel(logging.INFO)
    try:
        from modelarts_images.matrix.cli import nox_cells

        cells = nox_cells()
    except Exception:  # any problem is reported by the session itself
        return [nox.param(None, id="all")]
    return [nox.param(cell_id, id=cell_id, tags=tags) for cell_id, tags in cells]


@nox.session(python=False, tags=["matrix"])
@nox.parametrize("cell", _matrix_params())
def matrix(session: nox.Session, cell: str | None) -> None:
    """Fetch, build, verify (and --push) images of versions.yaml; posargs: --versions --device --push --rerun --shard;
    --list-json and --gitlab-pipeline print the cells for a CI system.

    Every option: `python -m modelarts_images.matrix --help`.
    """
    args = list(session.posargs)
    command = [sys.executable, "-m", "modelarts_images.matrix", *args]
    env = {"MODELARTS_MATRIX_RUN": MATRIX_RUN}
    once = [arg for arg in args if arg.split("=", 1)[0] in _WHOLE_FILE_ARGS]
    if once:
        # Another versions file (the cells above are versions.yaml's), or a listing of the cells for CI: the
        # first selected session does it for the whole file in one process; the others have nothing left to do.
        if _MATRIX_FILE_DONE:
            session.skip(f"{once[0].split('=', 1)[0]} given: the first matrix session did it for the whole file")
        _MATRIX_FILE_DONE.append(True)
        session.run(*command, env=env)
        return
    session.notify("matrix_summary")
    # A --shard K/N in posargs still splits by each cell's position in the whole versions file (matrix.py cuts
    # shards before --only narrows the selection), so every cell's session runs in exactly one shard's job.
    session.run(*command, *(["--only", cell] if cell else []), "--no-summary", env=env)


_MATRIX_FILE_DONE: list[bool] = []
_WHOLE_FILE_ARGS = ("--versions", "--list-json", "--gitlab-pipeline")


@nox.session(python=False, name="matrix_summary")
def matrix_summary(session: nox.Session) -> None:
    """Show the matrix cells this run ran (reports/matrix.json) and fail naming each failed cell."""
    session.run(sys.executable, "-m", "modelarts_images.matrix", "--summary", *session.posargs,
                env={"MODELARTS_MATRIX_RUN": MATRIX_RUN})
