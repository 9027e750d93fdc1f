"""Which tiers ran, said in the closing lines (tests/conftest.py's pytest_terminal_summary), checked on a real pytest
run of a tiny generated test directory whose conftest loads the real hooks; MODELARTS_IMAGES_REQUIRE_ENGINE=1
failing the run; the decisions of tests/support/bases.py (which way a base is made: script, pull, none); and
.ci/check_junit.py failing CI when the required arm64 tests were skipped or absent."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import bases
from tests.support.bases import Base, Decision, EngineState, Host
from tests.support.engine_tier import ARM64_BASE, REQUIRE_ENGINE, ROOT, TEST_BASE

BASE_MISSING = "base image modelarts-test-base:bookworm is missing (make it with scripts/test-base-image.sh)"
NO_HANDLER = "no binfmt_misc handler for aarch64 on this x86_64 host: run scripts/binfmt-up.sh"

CONFTEST = """\
from tests.conftest import pytest_collection_modifyitems, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401
"""
INI = """\
[pytest]
markers = engine: needs a Docker Engine
addopts = -ra
"""
TESTS = f"""\
import pytest

from tests.support.engine_tier import unavailable

SKIP = {{"base": {BASE_MISSING!r}, "arm": {NO_HANDLER!r}}}


@pytest.fixture
def base():
    if "base" in SKIP_HERE:
        try:
            raise OSError("the engine's answer")  # as the fixtures do: unavailable() while handling the error
        except OSError:
            unavailable(SKIP["base"])


@pytest.fixture
def arm():
    if "arm" in SKIP_HERE:
        unavailable(SKIP["arm"])


def test_unit_one():
    pass


def test_unit_two():
    pass


@pytest.mark.engine
def test_engine_one(base):
    pass


@pytest.mark.engine
def test_engine_two(base):
    pass


@pytest.mark.engine
def test_engine_arm(arm):
    pass
"""


def run_pytest(tmp_path: Path, skip_here: set[str], *, require: bool = False, tests: str = TESTS,
               args: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """pytest in a subprocess on the generated directory: its exit code and its output's lines."""
    (tmp_path / "pytest.ini").write_text(INI, "utf-8")
    (tmp_path / "conftest.py").write_text(CONFTEST, "utf-8")
    (tmp_path / "test_sample.py").write_text(f"SKIP_HERE = {sorted(skip_here)!r}\n" + tests, "utf-8")
    env = {key: value for key, value in os.environ.items() if key not in (REQUIRE_ENGINE, "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    if require:
        env[REQUIRE_ENGINE] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, (result.stdout + result.stderr).splitlines()


def tier_block(lines: list[str]) -> list[str]:
    """The tier lines, checked to be the last before pytest's closing count."""
    tiers = [index for index, line in enumerate(lines) if line.startswith("tiers:")]
    assert tiers, "\n".join(lines)
    assert tiers == list(range(tiers[0], tiers[-1] + 1)), "\n".join(lines)
    assert len(lines) == tiers[-1] + 2 and " in " in lines[-1], "\n".join(lines)  # then `2 passed ... in 0.1s`
    return lines[tiers[0]:tiers[-1] + 1]


def test_all_tiers_ran(tmp_path: Path) -> None:
    code, lines = run_pytest(tmp_path, set())
    assert code == 0, "\n".join(lines)
    assert tier_block(lines) == ["tiers: unit 2 passed; engine 3 passed"]


def test_the_engine_tier_skipped_for_one_reason_says_it_on_one_line(tmp_path: Path) -> None:
    one = TESTS.replace("def test_engine_arm(arm):", "def test_engine_arm(base):")
    code, lines = run_pytest(tmp_path, {"base"}, tests=one)
    assert code == 0, "\n".join(lines)
    assert tier_block(lines) == [
        f"tiers: unit 2 passed; engine 0 of 3 ran: skipped: {BASE_MISSING}",
        f"tiers: the engine tier did not run; {REQUIRE_ENGINE}=1 makes that a failure",
    ]


def test_the_engine_tier_skipped_for_two_reasons_groups_them(tmp_path: Path) -> None:
    code, lines = run_pytest(tmp_path, {"base", "arm"})
    assert code == 0, "\n".join(lines)
    assert tier_block(lines) == [
        "tiers: unit 2 passed; engine 0 of 3 ran, for these 2 reasons:",
        f"tiers:   engine, 2 skipped: {BASE_MISSING}",
        f"tiers:   engine, 1 skipped: {NO_HANDLER}",
        f"tiers: the engine tier did not run; {REQUIRE_ENGINE}=1 makes that a failure",
    ]


def test_part_of_the_engine_tier_ran(tmp_path: Path) -> None:
    code, lines = run_pytest(tmp_path, {"arm"})
    assert code == 0, "\n".join(lines)
    assert tier_block(lines) == [f"tiers: unit 2 passed; engine 2 of 3 ran (2 passed): 1 skipped: {NO_HANDLER}"]


def test_require_engine_makes_a_skipped_engine_tier_fail(tmp_path: Path) -> None:
    code, lines = run_pytest(tmp_path, {"base", "arm"}, require=True)
    assert code == 1, "\n".join(lines)
    required = f"failed, as {REQUIRE_ENGINE}=1 requires"
    assert tier_block(lines) == [
        "tiers: unit 2 passed; engine 0 of 3 ran, for these 2 reasons:",
        f"tiers:   engine, 2 {required}: {BASE_MISSING}",
        f"tiers:   engine, 1 {required}: {NO_HANDLER}",
        f"tiers: the engine tier did not run, and {REQUIRE_ENGINE}=1 requires it: the run fails",
    ]


def test_require_engine_fails_an_engine_tier_skipped_by_plain_skips_too(tmp_path: Path) -> None:
    plain = TESTS.replace("unavailable(SKIP", "pytest.skip(SKIP")
    code, lines = run_pytest(tmp_path, {"base", "arm"}, require=True, tests=plain)
    assert code == 1, "\n".join(lines)
    assert tier_block(lines)[-1] == (f"tiers: the engine tier did not run, and {REQUIRE_ENGINE}=1 requires it: "
                                     "the run fails")


def test_a_deselected_engine_tier_is_not_a_failure(tmp_path: Path) -> None:
    code, lines = run_pytest(tmp_path, {"base", "arm"}, require=True, args=("-m", "not engine"))
    assert code == 0, "\n".join(lines)
    assert tier_block(lines) == ["tiers: unit 2 passed; engine 3 deselected"]


# --------------------------------------------------------------------------------------------------------------
# Making the bases: which way

HOST = Host(root=True, debootstrap=True, arch="amd64", buildkit_cli=True, aarch64_handler=None)
AMD64_BASE, ARM_BASE = bases.bases("amd64")


def engine(arch: str = "amd64", *, local: bool = True, images: dict[str, str] | None = None) -> EngineState:
    return EngineState(where="test", arch=arch, local=local, images=images or {})


def way(base: Base, state: EngineState | None, host: Host = HOST) -> str:
    return bases.decide(base, state, host).way


def test_a_missing_base_is_made_with_the_script_as_root_with_debootstrap() -> None:
    assert (AMD64_BASE.name, AMD64_BASE.arch) == (TEST_BASE, "amd64")
    decision = bases.decide(AMD64_BASE, engine(), HOST)
    assert decision.way == bases.SCRIPT_WAY
    assert f"scripts/test-base-image.sh {TEST_BASE} amd64" in decision.why
    assert way(AMD64_BASE, engine(), dataclasses.replace(HOST, debootstrap=False)) == bases.PULL


def test_without_root_a_missing_base_is_pulled_and_built() -> None:
    decision = bases.decide(AMD64_BASE, engine(), Host(root=False, debootstrap=True, arch="amd64",
                                                            buildkit_cli=True, aarch64_handler=None))
    assert decision.way == bases.PULL and "needs root" in decision.why and "debian:bookworm" in decision.why


def test_a_present_base_is_left_and_a_wrong_one_named() -> None:
    assert way(AMD64_BASE, engine(images={TEST_BASE: "amd64"})) == bases.PRESENT
    wrong = bases.decide(AMD64_BASE, engine(images={TEST_BASE: "arm64"}), HOST)
    assert wrong.way == bases.PRESENT and f"docker rmi {TEST_BASE}" in wrong.why


def test_the_arm64_base_is_made_only_with_an_aarch64_handler_or_an_arm64_engine() -> None:
    assert ARM_BASE.name == ARM64_BASE
    left = bases.decide(ARM_BASE, engine(), HOST)
    assert left.way == bases.LEAVE and "scripts/binfmt-up.sh" in left.why
    emulated = Host(root=True, debootstrap=True, arch="amd64", buildkit_cli=True, aarch64_handler="qemu-aarch64")
    assert way(ARM_BASE, engine(), emulated) == bases.SCRIPT_WAY
    # the script builds a foreign base with Debian's /usr/bin/docker (BuildKit): without it, the pull
    assert way(ARM_BASE, engine(), dataclasses.replace(emulated, buildkit_cli=False)) == bases.PULL
    # a remote engine's emulation is its host's, not this machine's handler
    assert way(ARM_BASE, engine(local=False), emulated) == bases.LEAVE
    # on an arm64 engine the arm64 bases are native
    arm_host = Host(root=True, debootstrap=True, arch="arm64", buildkit_cli=False, aarch64_handler=None)
    assert [way(base, engine("arm64"), arm_host) for base in bases.bases("arm64")] == [bases.SCRIPT_WAY] * 2


def test_no_engine_means_nothing_is_made() -> None:
    assert way(AMD64_BASE, None) == way(ARM_BASE, None) == bases.NO_ENGINE


@pytest.mark.parametrize(("args", "wanted"), [
    ((), {TEST_BASE, ARM64_BASE}),
    (("-q", "--junitxml", "reports/junit.xml"), {TEST_BASE, ARM64_BASE}),
    (("tests",), {TEST_BASE, ARM64_BASE}),
    (("tests/unit",), set()),
    (("tests/unit/test_tier_summary.py::test_all_tiers_ran",), set()),
    (("tests/engine/test_build.py",), {TEST_BASE}),
    (("tests/engine/test_arm64.py", "-k", "npu"), {TEST_BASE, ARM64_BASE}),
])
def test_test_paths_narrow_the_bases(args: tuple[str, ...], wanted: set[str], monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    monkeypatch.chdir(ROOT)
    assert {base.name for base in (AMD64_BASE, ARM_BASE) if bases.needed(base, args)} == wanted


def test_with_no_engine_answering_the_module_says_so_and_makes_nothing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    socket = f"unix://{tmp_path}/no-such-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", socket)
    said: list[str] = []
    decisions = bases.main([], said.append)
    assert [decision.way for decision in decisions] == [bases.NO_ENGINE] * 2
    (line,) = said
    assert f"no Docker Engine answers at DOCKER_HOST={socket}" in line and "Nothing made" in line
    # as nox runs it: exits 0, so the tests run and say what they skipped
    result = subprocess.run([sys.executable, "-m", "tests.support.bases"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False, env={**os.environ, "DOCKER_HOST": socket})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("test bases: no Docker Engine answers at") and "Nothing made" in result.stdout


def test_a_decision_names_its_base() -> None:
    assert isinstance(bases.decide(AMD64_BASE, None, HOST), Decision)
    assert bases.decide(AMD64_BASE, None, HOST).base is AMD64_BASE


# --------------------------------------------------------------------------------------------------------------
# CI's judgment of the JUnit report


def junit(cases: list[tuple[str, str, str]]) -> str:
    """A JUnit report: (classname, name, outcome: passed, skipped, failure) per case; each marked engine."""
    body = []
    for classname, name, outcome in cases:
        inner = "" if outcome == "passed" else f'<{outcome} message="why" />'
        body.append(f'<testcase classname="{classname}" name="{name}"><properties>'
                    f'<property name="tier" value="engine" /></properties>{inner}</testcase>')
    return f'<testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>'


@pytest.mark.parametrize(("arm64", "ok", "says"), [
    ("passed", True, "tests/engine/test_arm64.py: 1 passed (required)"),
    ("skipped", False, "tests/engine/test_arm64.py is required here, but 1 of its 1 tests did not pass"),
    ("failure", False, "tests/engine/test_arm64.py is required here, but 1 of its 1 tests did not pass"),
    (None, False, "tests/engine/test_arm64.py is required here, but none of its tests is in the report"),
])
def test_ci_requires_the_arm64_engine_tests(arm64: str | None, ok: bool, says: str, tmp_path: Path) -> None:
    cases = [("tests.engine.test_build", "test_a", "passed")]
    if arm64:
        cases.append(("tests.engine.test_arm64", "test_an_aarch64_cpu_entry", arm64))
    report = tmp_path / "junit.xml"
    report.write_text(junit(cases), "utf-8")
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_junit.py"), "--engine", str(report)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    assert says in result.stdout + result.stderr
    # without --engine (a unit-only report) nothing is required
    plain = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_junit.py"), str(report)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_ci_fails_a_report_in_which_nothing_ran(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite name="pytest" tests="0" /></testsuites>', "utf-8")
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_junit.py"), "--engine", str(report)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "ci: no test ran" in result.stderr
