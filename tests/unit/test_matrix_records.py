"""The merge's records are hostile input: what CI jobs uploaded as artifacts is checked like configuration.

Each case starts from a genuine record, written the way the runner writes it, then corrupts it, and checks that
the merge fails with one ConfigError (exit 2) naming every bad file, having written nothing to the reports
directory. Anything that could block (a FIFO) runs under a timeout, so that a regression fails instead of hanging;
anything that could read without end (/dev/zero) runs in a child process with a memory limit."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from modelarts_images.engine.api import Layer
from modelarts_images.errors import ConfigError
from modelarts_images.matrix import records, report, runner
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.matrix.cli import main
from modelarts_images.matrix.state import STATE_FILE, State
from modelarts_images.options import Device
from modelarts_images.shared.files import read_bounded
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.report import DeviceRun, Expected, ImageReport, PlatformJob, Worker
from modelarts_images.verify.result import VerificationResult
from tests.conftest import ROOT
from tests.support.matrix_harness import spec
from tests.unit.test_ci import write_files

TOKEN = "ghp_" + "A1b2C3d4" * 5  # shaped like a GitHub token: never quoted
GUARD_S = 20.0


# --------------------------------------------------------------------------------------------------------------
# Helpers


def guarded(call: Callable[[], Any], timeout: float = GUARD_S) -> Any:
    """call() in a thread joined with a timeout: a call that blocks fails the test instead of hanging the tier."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {timeout:.0f} s: it blocks (opened a FIFO?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Makes FIFOs; afterwards opens each for writing once, which frees a reader a regression left blocked."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:
        with contextlib.suppress(OSError):  # ENXIO: no reader waits, nothing to free
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` with its bytes: what "unchanged" compares."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


class Artifacts:
    """What a CI system's artifact download leaves: each cell job's records in a directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, source: Path, job: str) -> Path:
        target = self.root / f"job-{job}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target

    def path(self, cell_id: str) -> Path:
        return self.root / f"job-{cell_id}" / f"{cell_id}.json"

    def document(self, cell_id: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.path(cell_id).read_text("utf-8"))
        return loaded

    def edit(self, cell_id: str, change: Callable[[dict[str, Any]], None]) -> Path:
        document = self.document(cell_id)
        change(document)
        self.path(cell_id).write_text(json.dumps(document, indent=2), "utf-8")
        return self.path(cell_id)


@pytest.fixture
def artifacts(harness: Any, tmp_path: Path) -> Artifacts:
    """The genuine records of cells a (passed) and b (failed), as the runner wrote them, collected per job."""
    harness.failing.add("b")
    with contextlib.suppress(runner.MatrixError):
        harness.run([spec("a"), spec("b")])
    collected = Artifacts(tmp_path / "collected")
    for cell_id in ("a", "b"):
        collected.add(harness.reports / report.CELLS_DIR / f"{cell_id}.json", cell_id)
    return collected


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    """The closing job's reports directory, already holding a report of its own that a refused merge keeps."""
    directory = tmp_path / "merged"
    (directory / report.CELLS_DIR).mkdir(parents=True)
    (directory / report.CELLS_DIR / "old.json").write_text("{}", "utf-8")
    return directory


def refused(merged: Path, paths: list[Path], *expected: str, ids: tuple[str, ...] = ("a", "b")) -> str:
    """The merge's ConfigError message, checked to name each of `expected`, with nothing written."""
    before = tree(merged)
    with pytest.raises(ConfigError) as caught:
        guarded(lambda: report.merge(merged, paths, list(ids), tty=False))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    for text in expected:
        assert text in message, message
    assert tree(merged) == before, "a refused merge wrote to the reports directory"
    assert not (merged / report.JSON_NAME).exists() and not (merged / report.MD_NAME).exists()
    assert "nothing was merged" in message.splitlines()[-1]
    return message


def full_record(cell_id: str = "a") -> CellRecord:
    """A record with every field set, a verification result and a platform job included."""
    check = CheckOutcome(name="torch-version", ok=True, detail="torch 2.13.0")
    result = VerificationResult(
        ok=True, python="3.11.9", python_executable="/home/ma-user/miniconda3/bin/python", torch="2.13.0",
        torch_cuda=None, cudnn=None, cuda_available=False, device_count=0, devices=(), device="cpu", uid=1000,
        gid=100, user="ma-user", cwd="/home/ma-user", environment=(("MA_HOME", "/home/ma-user"),),
        checks=(check,), seconds=3.5, prefix="/home/ma-user/miniconda3", modules=(("ssl", "ok"),),
        activated=("CONDA_PREFIX",))
    job = PlatformJob(job_id="job-1", name="verify-a", region="cn-north-4", flavor="modelarts.vm.cpu.2u",
                      phase="Completed", exit_code=0, message="", queued=12.0, ran=30.0,
                      console_url="https://console.example/job-1", log_bytes=(100, 200))

    def image_report(*, on_platform: bool) -> ImageReport:
        run = DeviceRun(device=Device.CPU, command=("python", "pytorch-verification.py"), exit_code=0,
                        timed_out=False, seconds=12.5, result=result, outcomes=(check,), output_tail=("done",),
                        job=job if on_platform else None,
                        worker=Worker(index=0, nodes=2, procs_per_node=1, launcher="boot"))
        return ImageReport(id=cell_id, reference=f"r/o/p:{cell_id}",
                           expected=Expected(python="3.11", cuda="cpu", variant="cpu",
                                             packages=(("torch", "2.13.0"),)),
                           image_id="sha256:" + "1" * 64, size=2_500_000_000, runs=(run,),
                           skipped=("GPU: skipped, no GPU runtime",),
                           conformance=(CheckOutcome(name="size", ok=False, detail="big", warning=True),),
                           stack=(CheckOutcome(name="pip-check", ok=True, detail="", skipped=True),),
                           platform="modelarts" if on_platform else "local")

    return CellRecord(
        id=cell_id, reference=f"r/o/p:{cell_id}", status=CellStatus.PASSED, python="3.11", cuda="cpu",
        torch="2.13.0", reason="", hash="ab" * 32, inputs={"artifacts": "cd" * 32}, changed=("artifacts",),
        durations={"fetch": 1.25, "build": 60.0}, image_id="sha256:" + "1" * 64, size=2_500_000_000,
        layers=(Layer(size=2_000, step="RUN pip install", from_base=False, diff_id="sha256:" + "2" * 64),),
        steps_ran=("RUN pip install",), steps_cached=("ADD rootfs",), layers_pulled=("sha256:" + "3" * 64,),
        verification=image_report(on_platform=False), manifest={"pip": ("torch==2.13.0",)},
        digest="sha256:" + "d" * 64, pushed=f"r/o/p:{cell_id}", platform=image_report(on_platform=True),
        staged=f"r/o/p:{cell_id}-staging", training_job="reports/a.training-job.json",
        finished="2026-01-01T00:00:00+00:00", run="t1")


# --------------------------------------------------------------------------------------------------------------
# Genuine records pass


def test_the_record_schema_is_valid_and_covers_every_key_a_record_writes() -> None:
    jsonschema.Draft202012Validator.check_schema(records.RECORD_SCHEMA)
    written = full_record().to_json()
    properties = records.RECORD_SCHEMA["properties"]
    assert set(written) == set(properties)
    verification = properties["verification"]
    assert set(written["verification"]) == set(verification["properties"])
    run_schema = verification["properties"]["runs"]["items"]
    assert set(written["platform"]["runs"][0]) == set(run_schema["properties"])
    assert set(written["verification"]["runs"][0]["result"]) == set(run_schema["properties"]["result"]["properties"])
    assert set(written["platform"]["runs"][0]["job"]) == set(run_schema["properties"]["job"]["properties"])


def test_a_full_record_written_by_the_runner_merges_unchanged(tmp_path: Path, merged: Path) -> None:
    written = report.write_cell(tmp_path / "job", full_record())
    assert report.merge(merged, [written.parent], ["a"], tty=False) == 0
    (cell,) = json.loads((merged / report.JSON_NAME).read_text("utf-8"))["cells"]
    assert CellRecord.from_json(cell) == full_record()
    assert (merged / report.CELLS_DIR / "a.json").read_bytes() == written.read_bytes()


def test_a_record_of_exactly_the_size_bound_is_read(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.path("a")
    text = path.read_text("utf-8")
    path.write_text(text + " " * (records.RECORD_LIMIT - len(text.encode())), "utf-8")  # JSON allows the spaces
    assert path.stat().st_size == records.RECORD_LIMIT
    assert report.merge(merged, [path], ["a"], tty=False) == 0


# --------------------------------------------------------------------------------------------------------------
# Wrong shapes: every one named with its file and key path


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(digest=7), "digest: must be a string or null (got a number)"),
    (lambda d: d.update(size="big"), "size: must be an integer or null (got a string)"),
    (lambda d: d.update(size=-1), "size: must be between 0 and"),
    (lambda d: d.update(status="maybe"), "status: must be one of passed, failed, skipped (got 'maybe')"),
    (lambda d: d.update(durations={"fetch": "slow"}), "durations.fetch: must be a number (got a string)"),
    (lambda d: d.update(durations={"fetch": 10**18}), "durations.fetch: must be between 0 and"),
    (lambda d: d.update(layers=[{"size": "x", "step": "RUN", "from_base": False}]),
     "layers[0].size: must be an integer (got a string)"),
    (lambda d: d.update(layers=[{"size": 1, "step": "RUN"}]), "layers[0]: missing required key 'from_base'"),
    (lambda d: d.update(inputs=["artifacts"]), "inputs: must be a mapping (got a list)"),
    (lambda d: d.update(manifest={"pip": "torch"}), "manifest.pip: must be a list (got a string)"),
    (lambda d: d.update(finished=5), "finished: must be a string (got a number)"),
    (lambda d: d.update(finished="yesterday"), "finished: must be a time with its UTC offset"),
    (lambda d: d.update(finished="2026-01-01T00:00:00"), "finished: must be a time with its UTC offset"),
    (lambda d: d.pop("reference"), "missing required key 'reference'"),
    (lambda d: d.update(statsu="passed"), "statsu: unknown key; did you mean 'status'?"),
])
def test_a_record_of_the_wrong_shape_is_named_with_its_key(artifacts: Artifacts, merged: Path,
                                                         change: Callable[[dict[str, Any]], None],
                                                         expected: str) -> None:
    bad = artifacts.edit("a", change)
    refused(merged, [artifacts.root], f"--records: {bad} is not a matrix cell record: {expected}")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda v: v["runs"][0].update(result={"ok": True}), "verification.runs[0].result: missing required key "
                                                         "'checks'"),
    (lambda v: v["runs"][0].update(device="tpu"), "verification.runs[0].device: must be one of cpu, gpu"),
    (lambda v: v["runs"][0].update(command="python"), "verification.runs[0].command: must be a list"),
    (lambda v: v["expected"].update(user={"name": "u", "uid": "x", "gid": 1}),
     "verification.expected.user.uid: must be an integer or null (got a string)"),
    (lambda v: v["conformance"].append({"name": "user"}), "verification.conformance[1]: missing required key 'ok'"),
])
def test_a_nested_verification_report_is_checked_too(tmp_path: Path, merged: Path,
                                                     change: Callable[[dict[str, Any]], None],
                                                     expected: str) -> None:
    path = report.write_cell(tmp_path / "job", full_record())
    document = json.loads(path.read_text("utf-8"))
    change(document["verification"])
    path.write_text(json.dumps(document), "utf-8")
    refused(merged, [path], str(path), expected, ids=("a",))


@pytest.mark.parametrize(("text", "expected"), [
    ("[]", "must be a mapping (got a list)"), ('"a record"', "must be a mapping (got a string)"),
    ("null", "must be a mapping (got null)"), ("7", "must be a mapping (got a number)"),
    ("", "is not JSON (Expecting value at line 1 column 1)"),
    ('{"id": "a", ', "is not JSON ("),
])
def test_a_file_that_is_no_json_object_is_named(artifacts: Artifacts, merged: Path, text: str,
                                                expected: str) -> None:
    artifacts.path("a").write_text(text, "utf-8")
    refused(merged, [artifacts.root], f"{artifacts.path('a')} is not a matrix cell record: ", expected)


def test_every_bad_record_is_named_in_one_message(artifacts: Artifacts, merged: Path, tmp_path: Path) -> None:
    a = artifacts.edit("a", lambda d: d.update(digest=7, size="big"))
    b = artifacts.edit("b", lambda d: d.update(status=None))
    stranger = artifacts.root / "job-c" / "c.json"  # valid, but of a cell the versions file does not select
    stranger.parent.mkdir()
    stranger.write_text(json.dumps({**artifacts.document("a"), "id": "c", "digest": None, "size": 1}), "utf-8")
    missing = tmp_path / "gone"
    message = refused(merged, [artifacts.root, missing],
                      f"{a} is not a matrix cell record: digest: must be a string or null (got a number)",
                      f"{a} is not a matrix cell record: size: must be an integer or null (got a string)",
                      f"{b} is not a matrix cell record: status: must be one of passed, failed, skipped (got null)",
                      f"{stranger}: c not among the selected cells",
                      f"--records: {missing} does not exist")
    assert len(message.splitlines()) == 6 and "Traceback" not in message


# --------------------------------------------------------------------------------------------------------------
# Numbers and text JSON can spell but a record cannot hold


@pytest.mark.parametrize(("raw", "expected"), [
    ("NaN", "durations.fetch: must be a number (got NaN, which is not a number JSON has)"),
    ("Infinity", "durations.fetch: must be a number (got Infinity, which is not a number JSON has)"),
    ("-Infinity", "durations.fetch: must be a number (got -Infinity"),
    ("1e400", "durations.fetch: must be a number (got 1e400, which is not a number JSON has)"),
    ("1" * 5000, "durations.fetch: must be a number (got an integer of 5000 digits)"),
])
def test_numbers_python_reads_but_json_has_not_are_refused(artifacts: Artifacts, merged: Path, raw: str,
                                                           expected: str) -> None:
    path = artifacts.edit("a", lambda d: d.update(durations={"fetch": "@"}))
    path.write_text(path.read_text("utf-8").replace('"@"', raw), "utf-8")
    refused(merged, [artifacts.root], f"{path} is not a matrix cell record: {expected}")


def test_a_huge_size_is_refused(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.edit("a", lambda d: d.update(size=10**30))
    refused(merged, [artifacts.root], f"{path} is not a matrix cell record: ", "size: ",
            "(got an integer of 31 digits)")


def test_text_that_is_not_utf8_is_named(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.edit("a", lambda d: d.update(reason="caf@"))
    path.write_bytes(path.read_bytes().replace(b"caf@", b"caf\xe9"))
    refused(merged, [artifacts.root], f"{path} is not a matrix cell record: it is not UTF-8 text (byte 0xe9 at offset")


def test_a_lone_surrogate_is_refused_before_it_breaks_the_report(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.edit("a", lambda d: d.update(reason="\ud800"))  # json.dumps writes it as \ud800
    refused(merged, [artifacts.root], f"{path} is not a matrix cell record: reason: holds a lone surrogate")


def test_a_key_given_twice_is_refused(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.path("b")
    text = path.read_text("utf-8")
    path.write_text(text.replace('"status": "failed"', '"status": "failed", "status": "passed"'), "utf-8")
    refused(merged, [artifacts.root], f"{path} is not a matrix cell record: it is not JSON a record may be: the key "
                                      "'status' is given twice")


def test_deep_nesting_is_refused_without_recursion(artifacts: Artifacts, merged: Path) -> None:
    shallow = artifacts.edit("a", lambda d: d.update(changed=[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]))
    deep = artifacts.path("b")
    deep.write_text("[" * 100_000 + "]" * 100_000, "utf-8")
    refused(merged, [artifacts.root], f"{shallow} is not a matrix cell record: changed",
            f"is nested more than {records.MAX_DEPTH} levels deep",
            f"{deep} is not a matrix cell record: it is JSON nested too deeply")


def test_secrets_in_a_record_are_masked_when_quoted(artifacts: Artifacts, merged: Path) -> None:
    artifacts.edit("a", lambda d: d.update({"status": TOKEN, TOKEN: 1}))
    artifacts.edit("b", lambda d: d.update(finished="https://user:hunter2@example.com/x"))
    message = refused(merged, [artifacts.root], "status: must be one of passed, failed, skipped (got ***)",
                      "***: unknown key", "finished: must be a time with its UTC offset")
    assert TOKEN not in message and "hunter2" not in message


# --------------------------------------------------------------------------------------------------------------
# Files that are not records: refused from os.stat, never opened


def test_a_fifo_among_the_records_is_refused_without_blocking(artifacts: Artifacts, merged: Path,
                                                              fifo: Callable[[Path], Path]) -> None:
    pipe = fifo(artifacts.root / "job-c" / "c.json")
    refused(merged, [artifacts.root], f"the matrix cell record {pipe} is a named pipe (FIFO), not a regular file")


def test_a_fifo_given_directly_and_a_link_to_one_are_refused(artifacts: Artifacts, merged: Path, tmp_path: Path,
                                                             fifo: Callable[[Path], Path]) -> None:
    pipe = fifo(tmp_path / "pipe")
    link = artifacts.root / "job-a" / "a.json"
    link.unlink()
    link.symlink_to(pipe)
    refused(merged, [pipe, artifacts.root], f"the matrix cell record {pipe} is a named pipe",
            f"the matrix cell record {link} (a link to {pipe}) is a named pipe")


def test_a_socket_and_a_directory_named_like_a_record_are_handled(artifacts: Artifacts, merged: Path,
                                                                  tmp_path: Path) -> None:
    place = tmp_path / "s"  # a socket's path must be short
    place.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(place / "c.json"))
        (artifacts.root / "job-d" / "d.json").mkdir(parents=True)  # a directory: searched, not read
        refused(merged, [artifacts.root, place / "c.json"], f"{place / 'c.json'} is a socket, not a regular file")


def test_links_inside_a_records_directory(artifacts: Artifacts, merged: Path, tmp_path: Path) -> None:
    """A link to a record is read (it resolves to a regular file, and the name it is listed under must be its
    cell's); a link to a directory is not followed but named; a dangling link is named; other files are left
    alone."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    artifacts.path("a").rename(elsewhere / "a.json")
    artifacts.path("a").symlink_to(elsewhere / "a.json")
    (artifacts.root / "README.txt").write_text("logs", "utf-8")
    (artifacts.root / "loop").symlink_to(artifacts.root)
    (artifacts.root / "job-c").mkdir()
    (artifacts.root / "job-c" / "c.json").symlink_to(tmp_path / "missing.json")
    refused(merged, [artifacts.root], f"{artifacts.root / 'loop'} is a link to a directory, which the search",
            f"the matrix cell record {artifacts.root / 'job-c' / 'c.json'} (a link to {tmp_path / 'missing.json'}) "
            "does not exist")
    (artifacts.root / "loop").unlink()
    (artifacts.root / "job-c" / "c.json").unlink()
    assert report.merge(merged, [artifacts.root], ["a", "b"], tty=False) == 1  # b failed: its own record says so
    assert [cell["id"] for cell in json.loads((merged / report.JSON_NAME).read_text())["cells"]] == ["a", "b"]


def test_a_record_over_the_size_bound_is_refused(artifacts: Artifacts, merged: Path) -> None:
    path = artifacts.path("a")
    text = path.read_text("utf-8")
    path.write_text(text + " " * (records.RECORD_LIMIT + 1 - len(text.encode())), "utf-8")  # valid JSON still
    refused(merged, [artifacts.root], f"the matrix cell record {path} has {records.RECORD_LIMIT + 1} bytes, more "
                                      f"than the {records.RECORD_LIMIT}")


def test_the_command_line_refuses_dev_zero_with_exit_2_and_no_traceback(harness: Any, tmp_path: Path) -> None:
    """In a child process with a memory limit and a timeout: a regression that reads /dev/zero ends there."""
    (tmp_path / "ci").mkdir()
    versions, config = write_files(tmp_path / "ci", None)
    harness.run([spec("cpu-cell")])
    collected = tmp_path / "collected"
    collected.mkdir()
    (collected / "cpu-cell.json").write_bytes((harness.reports / report.CELLS_DIR / "cpu-cell.json").read_bytes())
    (collected / "cuda12-cell.json").symlink_to("/dev/zero")
    limit = 2 << 30

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "modelarts_images.matrix", "--versions", str(versions), "--config",
                           str(config), "--summary", "--records", str(collected), "--records", "/dev/zero"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, preexec_fn=limited)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: --records: ") and "Traceback" not in done.stderr
    assert f"{collected / 'cuda12-cell.json'} (a link to /dev/zero) is a device" in done.stderr
    assert "the matrix cell record /dev/zero is a device" in done.stderr
    assert not (tmp_path / "ci" / "reports" / report.JSON_NAME).exists()
    assert not (tmp_path / "ci" / "reports" / report.CELLS_DIR).exists()


def test_the_command_line_names_a_bad_record_and_an_empty_path(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    versions, config = write_files(tmp_path, None)
    collected = tmp_path / "collected"
    collected.mkdir()
    (collected / "cpu-cell.json").write_text(json.dumps({"id": "cpu-cell", "reference": "r", "status": "passed",
                                                         "digest": 7}), "utf-8")
    common = ["--versions", str(versions), "--config", str(config), "--summary", "--only", "cpu-cell"]
    assert main([*common, "--records", str(collected)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --records: {collected / 'cpu-cell.json'} is not a matrix cell record: digest: ")
    assert not (tmp_path / "reports" / report.JSON_NAME).exists()
    assert not (tmp_path / "reports" / report.CELLS_DIR).exists()
    assert main([*common, "--records", ""]) == 2
    assert "--records: an empty path" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# A record under another cell's name, and two records of one cell


def test_a_record_filed_under_another_cells_name_cannot_hide_its_failure(artifacts: Artifacts,
                                                                          merged: Path) -> None:
    """b failed; a file named a.json in another job's artifact claims b passed, finished later."""
    claim = artifacts.document("a")
    claim.update(id="b", finished="2099-01-01T00:00:00+00:00")
    impostor = artifacts.root / "job-x" / "a.json"
    impostor.parent.mkdir()
    impostor.write_text(json.dumps(claim), "utf-8")
    refused(merged, [artifacts.root], f"{impostor} is not a matrix cell record: id: is 'b', but the file is named "
                                      "'a.json'")


def test_a_record_whose_id_is_not_its_name_is_refused_even_alone(artifacts: Artifacts, merged: Path) -> None:
    renamed = artifacts.path("a").with_name("b.json")
    artifacts.path("a").rename(renamed)
    artifacts.path("b").unlink()
    refused(merged, [renamed], f"{renamed} is not a matrix cell record: id: is 'a', but the file is named 'b.json'")


def test_of_two_records_of_one_cell_the_later_finished_one_counts_by_time_not_text(
        artifacts: Artifacts, merged: Path) -> None:
    # the failure at 00:00 UTC, written with another offset: as text it sorts after the rerun's 00:30 UTC
    artifacts.edit("b", lambda d: d.update(finished="2026-01-01T01:00:00+01:00"))
    rerun = artifacts.root / "job-b-again" / "b.json"  # the job run again, and passed
    rerun.parent.mkdir()
    rerun.write_text(json.dumps({**artifacts.document("a"), "id": "b", "finished": "2026-01-01T00:30:00+00:00"}))
    assert report.merge(merged, [artifacts.root], ["a", "b"], tty=False) == 0  # the rerun passed
    cells = json.loads((merged / report.JSON_NAME).read_text("utf-8"))["cells"]
    assert [(cell["id"], cell["status"]) for cell in cells] == [("a", "passed"), ("b", "passed")]


def test_the_merged_report_holds_only_the_merged_records(artifacts: Artifacts, merged: Path) -> None:
    """A record an earlier merge left in the reports directory is no cell of this one."""
    report.write_cell(merged, dataclasses.replace(CellRecord.from_json(artifacts.document("b")),
                                                  status=CellStatus.PASSED))
    assert report.merge(merged, [artifacts.path("a")], ["a", "b"], tty=False) == 1  # b left no record
    cells = json.loads((merged / report.JSON_NAME).read_text("utf-8"))["cells"]
    assert [cell["id"] for cell in cells] == ["a"]


# --------------------------------------------------------------------------------------------------------------
# The matrix's own files: the same reader, a warning where the file is only a memory


def test_a_fifo_as_the_state_file_is_a_warning_not_a_hang(harness: Any, fifo: Callable[[Path], Path],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    fifo(harness.reports / STATE_FILE)
    assert guarded(lambda: State(harness.reports).read()) == {}
    assert "matrix state" in caplog.text and "named pipe" in caplog.text and "every cell runs" in caplog.text


def test_a_fifo_as_the_state_lock_is_a_warning_not_a_hang(harness: Any, fifo: Callable[[Path], Path],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    harness.reports.mkdir(parents=True)
    fifo(harness.reports / (STATE_FILE + ".lock"))
    guarded(lambda: State(harness.reports).update("a", None))
    assert "cannot lock the matrix state" in caplog.text


def test_a_state_entry_of_the_wrong_shape_makes_its_cell_run(harness: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    entry = full_record().to_json()
    entry["verification"]["runs"][0]["result"] = {"ok": True}  # no checks: the result reader's VerifyError
    harness.reports.mkdir(parents=True)
    (harness.reports / STATE_FILE).write_text(json.dumps({"schema": 1, "cells": {"a": entry}}), "utf-8")
    (record,) = harness.run([spec("a")])
    assert record.status is CellStatus.PASSED and harness.calls == ["a"]
    assert "the entry of a cannot be read (verification.runs[0].result: missing required key 'checks')" in caplog.text


def test_the_summary_of_a_fifo_report_says_it_cannot_be_read(tmp_path: Path, fifo: Callable[[Path], Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fifo(tmp_path / report.JSON_NAME)
    assert guarded(lambda: report.print_summary(tmp_path, tty=False)) == 1
    assert "is a named pipe (FIFO)" in capsys.readouterr().out


def test_the_report_leaves_out_a_local_record_filed_under_another_name(harness: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    harness.run([spec("a"), spec("b")])
    cells = harness.reports / report.CELLS_DIR
    (cells / "b.json").write_bytes((cells / "a.json").read_bytes())
    assert [record.id for record in report.read_cells(harness.reports, ["a", "b"])] == ["a"]
    assert f"{cells / 'b.json'} is not a matrix cell record: id: is 'a'" in caplog.text


# --------------------------------------------------------------------------------------------------------------
# read_bounded, the reader underneath


def test_read_bounded_reads_a_regular_file_and_a_link_to_one(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert read_bounded(tmp_path / "f", limit=5, what="test file") == b"12345"
    assert read_bounded(tmp_path / "link", limit=5, what="test file") == b"12345"


def sparse(path: Path, length: int) -> None:
    """A file of `length` bytes that takes no room: reading it whole would take minutes and all memory."""
    path.write_bytes(b"")
    os.truncate(path, length)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: p.mkdir(), "is a directory, not a regular file"),
    (lambda p: os.mkfifo(p), "is a named pipe (FIFO), not a regular file"),
    (lambda p: p.symlink_to("/dev/zero"), "(a link to /dev/zero) is a device, not a regular file"),
    (lambda p: p.symlink_to("/proc/self/environ"), "is under /proc, whose files the kernel makes up"),
    (lambda p: p.symlink_to(p), "Too many levels of symbolic links"),
    (lambda p: None, "does not exist"),
    (lambda p: sparse(p, 10 << 30), f"has {10 << 30} bytes, more than the 100 a test file may have"),
])
def test_read_bounded_refuses_what_is_not_a_bounded_regular_file(tmp_path: Path, make: Callable[[Path], Any],
                                                                 expected: str) -> None:
    path = tmp_path / "thing"
    make(path)
    try:
        with pytest.raises(ConfigError) as caught:
            guarded(lambda: read_bounded(path, limit=100, what="test file"))
    finally:
        if path.is_fifo():
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert f"the test file {path}" in str(caught.value) or f"cannot read the test file {path}" in str(caught.value)
    assert expected in str(caught.value)


def test_read_bounded_refuses_a_file_that_grows_past_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    real = os.fdopen

    def growing(descriptor: int, *args: Any, **kwargs: Any) -> Any:
        with path.open("ab") as stream:  # after the size was checked, before it is read
            stream.write(b"x" * 10)
        return real(descriptor, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", growing)
    with pytest.raises(ConfigError, match="grew past the 15 bytes a test file may have"):
        read_bounded(path, limit=15, what="test file")


def test_read_bounded_refuses_a_file_swapped_after_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"{}")
    real = os.open
    flags_used: list[int] = []

    def swapping(target: Any, flags: int, *args: Any) -> int:
        path.unlink()
        os.mkfifo(path)  # a FIFO in its place: O_NONBLOCK keeps the open from waiting for a writer
        flags_used.append(flags)
        return real(target, flags, *args)

    monkeypatch.setattr(os, "open", swapping)
    with pytest.raises(ConfigError, match="was replaced while it was read"):
        guarded(lambda: read_bounded(path, limit=15, what="test file"))
    assert flags_used and flags_used[0] & os.O_NONBLOCK and flags_used[0] & os.O_NOFOLLOW
