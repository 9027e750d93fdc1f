"""Judge a pytest JUnit report: fail when nothing ran, or (with --engine) when no engine-tier test passed or a
required test file's tests were skipped or absent (--require; with --engine, tests/engine/test_arm64.py: .ci/run
makes their arm64 base and the emulation they need, so a skip there means something CI set up is broken).

pytest exits 5 when it collects nothing; this check makes "ran nothing" a failure with a message, whatever
the exit code said.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# The engine tests CI must run, not skip: their base image and QEMU's aarch64 handler are made by .ci/run.
ENGINE_REQUIRED = ("tests/engine/test_arm64.py",)


def in_file(case: ET.Element, path: str) -> bool:
    """Whether a test case comes from the test file `path` (its classname: the dotted path, then any class)."""
    module = path.removesuffix(".py").replace("/", ".")
    classname = case.get("classname") or ""
    return classname == module or classname.startswith(module + ".")

parser = argparse.ArgumentParser()
parser.add_argument("report", type=Path)
parser.add_argument("--engine", action="store_true", help="require at least one passed engine-tier test, and "
                    f"(unless --require is given) every test of {', '.join(ENGINE_REQUIRED)} passed")
parser.add_argument("--require", action="append", default=None, metavar="PATH",
                    help="a test file (tests/engine/test_arm64.py) whose tests must all be in the report and have "
                         "passed; repeatable")
args = parser.parse_args()
required = args.require if args.require is not None else list(ENGINE_REQUIRED) if args.engine else []

if not args.report.is_file():
    sys.exit(f"ci: {args.report} is missing: the test session did not run")
try:
    cases = list(ET.parse(args.report).getroot().iter("testcase"))
except ET.ParseError as error:
    # pytest writes the report when the session ends: a short or empty file means it stopped (or could not
    # write) before then, most often on a full disk.
    free_mib = shutil.disk_usage(args.report.parent).free // 2**20
    sys.exit(f"ci: {args.report} is not a complete JUnit report ({error}): the test session stopped before "
             f"writing it; {free_mib} MiB free on its disk")
passed = failed = skipped = engine_passed = 0
for case in cases:
    outcome = {child.tag for child in case}
    if outcome & {"failure", "error"}:
        failed += 1
    elif "skipped" in outcome:
        skipped += 1
        reason = case.find("skipped")
        print(f"ci: skipped {case.get('classname')}::{case.get('name')}: "
              f"{reason.get('message', '') if reason is not None else ''}")
    else:
        passed += 1
        # tests/conftest.py records the tier of each test marked engine (every test under tests/engine needs one).
        engine_passed += any(prop.get("name") == "tier" and prop.get("value") == "engine"
                             for prop in case.iter("property"))
print(f"ci: {passed} passed, {failed} failed, {skipped} skipped")
if passed + failed == 0:
    sys.exit("ci: no test ran")
if args.engine and engine_passed == 0:
    sys.exit("ci: the engine tier did not run (no test marked engine passed)")
problems = []
for path in required:
    outcomes = [{child.tag for child in case} for case in cases if in_file(case, path)]
    not_passed = [outcome for outcome in outcomes if outcome & {"failure", "error", "skipped"}]
    if not outcomes:
        problems.append(f"ci: {path} is required here, but none of its tests is in the report")
    elif not_passed:
        problems.append(f"ci: {path} is required here, but {len(not_passed)} of its {len(outcomes)} tests did not "
                        "pass (failed or skipped; the reasons are above)")
    else:
        print(f"ci: {path}: {len(outcomes)} passed (required)")
if problems:
    sys.exit("\n".join(problems))
print(f"ci: engine tier: {engine_passed} passed")
