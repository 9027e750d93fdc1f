"""Sessions: `nox -l` lists them; `nox` alone runs lint, typecheck and tests."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (unit tier, plus the engine tier when a Docker Engine answers)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check the code with ruff."""
    _install(session)
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the code with mypy --strict."""
    _install(session)
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (fetch against nginx on loopback) and write bench/results/."""
    _install(session)
    session.run("python", "bench/bench_fetch.py", *session.posargs)
