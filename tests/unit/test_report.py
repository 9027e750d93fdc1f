"""Matrix report rendering from canned records, the package manifest, and the training-job body."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelarts_images import contract
from modelarts_images.engine.api import ContainerOutput, ContainerRun, Layer
from modelarts_images.errors import ConfigError, EngineError, VerifyError, WriteError
from modelarts_images.matrix import report
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.options import Device
from modelarts_images.publish import trainingjob
from modelarts_images.shared import files
from modelarts_images.verify import manifest, probes
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.report import DeviceRun, Expected, ImageReport, PlatformJob, Worker, format_report
from modelarts_images.verify.result import VerificationResult
from tests.support.fake_engine import FakeEngine

PASSED, FAILED, SKIPPED = CellStatus.PASSED, CellStatus.FAILED, CellStatus.SKIPPED


def verification(cell_id: str, status: CellStatus) -> ImageReport:
    """The verification report a cell keeps: one CPU run, the GPU skipped, two conformance checks (the size one
    failed when the cell did)."""
    run = DeviceRun(device=Device.CPU, command=("/home/ma-user/miniconda3/bin/python", "pytorch-verification.py"),
                    exit_code=0, timed_out=False, seconds=12.5, result=None,
                    outcomes=(CheckOutcome(name="torch-version", ok=True, detail="torch 2.13.0"),),
                    output_tail=())
    return ImageReport(
        id=cell_id, reference=f"swr.cn-north-4.myhuaweicloud.com/org/pytorch:{cell_id}",
        expected=Expected(python="3.11", cuda="cpu", variant="cpu", packages=(("torch", "2.13.0"),)),
        image_id="sha256:" + "1" * 64, size=2_500_000_000, runs=(run,),
        skipped=("GPU: skipped, no GPU runtime (no nvidia)",),
        conformance=(CheckOutcome(name="user", ok=True, detail="ma-user 1000:100"),
                     CheckOutcome(name="size", ok=status is not FAILED, detail="2.5 GB")))


def record(cell_id: str, status: CellStatus = PASSED, **extra: Any) -> CellRecord:
    base = CellRecord(
        id=cell_id, reference=f"swr.cn-north-4.myhuaweicloud.com/org/pytorch:{cell_id}", status=status,
        reason="", hash="ab" * 32, inputs={}, changed=("artifacts",),
        durations={"fetch": 1.25, "build": 60.0, "verify": 12.5}, image_id="sha256:" + "1" * 64,
        size=2_500_000_000, layers=(Layer(size=2_000_000_000, step="RUN pip install", from_base=False),
                                    Layer(size=80_000_000, step="ADD rootfs", from_base=True)),
        python="3.11", cuda="cpu", torch="2.13.0",
        verification=verification(cell_id, status),
        manifest={"pip": ("torch==2.13.0+cpu", "numpy==2.0.0"), "dpkg": ("bash=5.2", "vim=9.0")},
        digest=None, pushed=None, training_job=None, finished="2025-01-01T00:00:00+00:00", run="r1",
    )
    return dataclasses.replace(base, **extra)


def test_json_holds_every_cell() -> None:
    document = json.loads(report.render_json([record("a"), record("b", FAILED, reason="boom")]))
    assert document["schema"] == 1
    assert [cell["id"] for cell in document["cells"]] == ["a", "b"]
    assert [CellRecord.from_json(cell) for cell in document["cells"]] == [record("a"),
                                                                          record("b", FAILED, reason="boom")]


def test_markdown_has_table_layers_checks_and_manifest() -> None:
    text = report.render_markdown([record("a", digest="sha256:" + "d" * 64, pushed="swr/x:a"),
                                   record("b", FAILED, reason="b: verify failed")])
    assert "| cell | status | size | fetch | build | verify | CPU | GPU | conformance | digest |" in text
    assert "| a | passed | 2.5 GB | 1.2 s | 60.0 s | 12.5 s | pass | skipped | pass (2) | sha256:dddddddddddd |" in text
    assert "| b | failed |" in text and "FAIL (size)" in text
    assert "- status: **failed**: b: verify failed" in text
    assert "- 2.0 GB `RUN pip install`" in text and "(base) `ADD rootfs`" in text
    assert "- [pass] torch-version: torch 2.13.0" in text
    assert "<summary>pip (2 entries)</summary>" in text and "torch==2.13.0+cpu" in text
    assert "<summary>dpkg (2 entries)</summary>" in text
    assert "GPU: skipped" in text


def test_plain_summary_table_is_aligned() -> None:
    text = report.summary_table([record("a"), record("long-cell-id", SKIPPED)], tty=False)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["cell", "status", "size"]
    assert lines[2].startswith("long-cell-id  skipped")
    assert lines[1].index("passed") == lines[2].index("skipped")


def test_rich_summary_table_renders() -> None:
    text = report.summary_table([record("a")], tty=True)
    assert "matrix" in text and "passed" in text


def test_write_and_print_summary(tmp_path: Path, capsys: Any) -> None:
    assert report.write_cell(tmp_path, record("a")) == tmp_path / report.CELLS_DIR / "a.json"
    report.write_cell(tmp_path, record("b", FAILED, reason="b: broken", run="r2"))
    written = report.write_reports(tmp_path, ["a", "b", "missing"])
    # the records come back as they were written; a cell without one is left out
    assert written == report.read_cells(tmp_path, ["a", "b", "missing"]) == [
        record("a"), record("b", FAILED, reason="b: broken", run="r2")]
    assert report.read_cells(tmp_path) == written  # every record, by id
    assert (tmp_path / "matrix.md").is_file()
    assert report.print_summary(tmp_path, run_token="r1", tty=False) == 0
    assert report.print_summary(tmp_path, tty=False) == 1
    assert "FAILED b: b: broken" in capsys.readouterr().out


def test_reports_are_replaced_whole_not_rewritten_in_place(tmp_path: Path) -> None:
    report.write_cell(tmp_path, record("a"))
    report.write_reports(tmp_path, ["a", "b"])
    before = {name: (tmp_path / name).read_text("utf-8") for name in (report.JSON_NAME, report.MD_NAME)}
    readers = {name: (tmp_path / name).open(encoding="utf-8") for name in before}
    try:
        # another shard finishes meanwhile: a reader already holding the files keeps whole old ones
        report.write_cell(tmp_path, record("b"))
        report.write_reports(tmp_path, ["a", "b"])
        assert {name: reader.read() for name, reader in readers.items()} == before
    finally:
        for reader in readers.values():
            reader.close()
    assert [cell["id"] for cell in json.loads((tmp_path / report.JSON_NAME).read_text())["cells"]] == ["a", "b"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [report.CELLS_DIR, report.JSON_NAME, report.MD_NAME]


def test_unwritable_reports_dir_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    reports_dir = tmp_path / "blocker" / "reports"
    expected = f"cannot write the matrix report {reports_dir / report.JSON_NAME}: "
    # a write that fails is a WriteError (the step that wrote maps it to its stage); only the up-front check of
    # the reports directory, a setting, is a ConfigError
    with pytest.raises(WriteError, match=re.escape(expected)):
        report.write_reports(reports_dir, ["a"])
    with pytest.raises(ConfigError, match=re.escape(f"cannot write to the reports directory {reports_dir}: ")):
        files.check_writable(reports_dir)
    files.check_writable(tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_a_failed_replace_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / report.JSON_NAME).mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(WriteError, match=re.escape(f"cannot write the matrix report {tmp_path / report.JSON_NAME}")):
        report.write_reports(tmp_path, [])
    assert sorted(path.name for path in tmp_path.iterdir()) == [report.JSON_NAME]


def test_parse_manifest_sections() -> None:
    text = ("noise\n### modelarts-images manifest: pip\ntorch==2.13.0\n# comment\n\n"
            "### modelarts-images manifest: dpkg\nbash=5.2\n")
    assert manifest.parse_manifest(text) == {"pip": ("torch==2.13.0",), "dpkg": ("bash=5.2",)}


class ManifestEngine(FakeEngine):
    """Runs the manifest probe with canned output (or refuses to start it); anything else fails the test."""

    def __init__(self, output: ContainerOutput | Exception) -> None:
        self.output = output
        self.specs: list[ContainerRun] = []

    def run(self, spec: ContainerRun) -> ContainerOutput:
        self.specs.append(spec)
        if isinstance(self.output, Exception):
            raise self.output
        return self.output


def test_capture_manifest_runs_without_network() -> None:
    engine = ManifestEngine(ContainerOutput(name="x", exit_code=0, stdout="### modelarts-images manifest: conda\n"
                                            "torch=2.1\n", stderr="", seconds=0.1, timed_out=False))
    assert manifest.capture_manifest(engine, "img:1", timeout=42.0) == {"conda": ("torch=2.1",)}
    (spec,) = engine.specs
    assert spec.image == "img:1" and spec.network is False and spec.command[:2] == ("/bin/sh", "-c")
    assert "conda list" in spec.command[2] and "pip freeze" in spec.command[2] and "dpkg-query" in spec.command[2]
    # the script's text from verify/probes/ on the command line (nothing mounted), the prefix as its $1
    assert spec.command[2] == probes.probe_source(probes.MANIFEST)
    assert spec.command[3:] == ("sh", contract.DEFAULT_USER.conda_prefix) and spec.mounts == ()
    assert (spec.user, spec.working_dir) == ("0:0", "/")
    assert spec.timeout == 42.0 and manifest.manifest_spec("img:1").timeout == contract.VERIFY_TIMEOUT_S


def test_capture_manifest_records_failure() -> None:
    engine = ManifestEngine(ContainerOutput(name="x", exit_code=127, stdout="", stderr="sh: not found", seconds=0.1,
                                            timed_out=False))
    assert "exited with 127" in manifest.capture_manifest(engine, "img:1")["error"][0]


def test_capture_manifest_records_a_container_that_cannot_start() -> None:
    engine = ManifestEngine(EngineError("could not start a container of img:1: no such image"))
    assert manifest.capture_manifest(engine, "img:1") == {
        "error": ("could not start a container of img:1: no such image",)}


def test_capture_manifest_records_a_missing_probe_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(probes, "PROBES_DIR", tmp_path)
    engine = ManifestEngine(ContainerOutput(name="x", exit_code=0, stdout="", stderr="", seconds=0.1,
                                            timed_out=False))
    (error,) = manifest.capture_manifest(engine, "img:1")["error"]
    assert error.startswith(f"probe manifest.sh: cannot read {tmp_path / 'manifest.sh'}") and not engine.specs
    with pytest.raises(VerifyError, match=r"manifest\.sh"):
        manifest.manifest_spec("img:1")


# --------------------------------------------------------------------------------------------------------------
# verify/probes/manifest.sh itself, run by the host's /bin/sh the way manifest_spec's container runs it, against
# stand-in conda, python and dpkg-query that answer only to the exact arguments the script must pass


STAND_INS = {
    "conda": 'if [ "$*" = "list --export" ]; then echo "# platform: linux-64"; echo "torch=2.1.0=cpu"; '
             'else exit 3; fi',
    "python": 'if [ "$*" = "-m pip freeze --all" ]; then echo "torch==2.13.0"; echo "pip==24.0"; else exit 3; fi',
    # dpkg-query itself expands ${Package}, ${Version} and \n: the script must hand them over unexpanded
    "dpkg-query": 'if [ "$1 $2" = "-W -f" ] && [ "$3" = \'${Package}=${Version}\\n\' ]; then echo "bash=5.2"; '
                  'else exit 3; fi',
}


def stand_in(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{STAND_INS[name]}\n", encoding="utf-8")
    path.chmod(0o755)


def run_manifest(tmp_path: Path, prefix: Path | None) -> subprocess.CompletedProcess[str]:
    command = manifest.manifest_spec("img").command
    argv = list(command[:4]) + ([] if prefix is None else [str(prefix)])
    # PATH holds only the stand-ins: dpkg-query is found (or not) where the test put it
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": str(tmp_path / "path")})


needs_sh = pytest.mark.skipif(not Path("/bin/sh").exists(), reason="no /bin/sh on this machine")


@needs_sh
def test_manifest_script_prefers_conda_and_lists_dpkg(tmp_path: Path) -> None:
    prefix = tmp_path / "miniconda3"
    for name in ("conda", "python"):
        stand_in(prefix / "bin", name)
    stand_in(tmp_path / "path", "dpkg-query")
    completed = run_manifest(tmp_path, prefix)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ("### modelarts-images manifest: conda\n# platform: linux-64\ntorch=2.1.0=cpu\n"
                                "### modelarts-images manifest: dpkg\nbash=5.2\n")
    assert manifest.parse_manifest(completed.stdout) == {"conda": ("torch=2.1.0=cpu",), "dpkg": ("bash=5.2",)}


@needs_sh
def test_manifest_script_falls_back_to_pip_freeze(tmp_path: Path) -> None:
    prefix = tmp_path / "miniconda3"
    stand_in(prefix / "bin", "python")
    completed = run_manifest(tmp_path, prefix)
    assert completed.returncode == 0, completed.stderr
    assert manifest.parse_manifest(completed.stdout) == {"pip": ("torch==2.13.0", "pip==24.0")}


@needs_sh
def test_manifest_script_of_an_image_without_conda_or_dpkg_prints_nothing(tmp_path: Path) -> None:
    (tmp_path / "path").mkdir()
    completed = run_manifest(tmp_path, tmp_path / "miniconda3")
    assert (completed.returncode, completed.stdout) == (0, "")


@needs_sh
def test_manifest_script_without_a_prefix_stops(tmp_path: Path) -> None:
    stand_in(tmp_path / "path", "dpkg-query")
    completed = run_manifest(tmp_path, None)
    assert completed.returncode != 0 and completed.stdout == ""
    assert "usage: manifest.sh CONDA_PREFIX" in completed.stderr


def test_training_job_body_written_or_a_write_error(tmp_path: Path) -> None:
    path = trainingjob.write_body(tmp_path, "cell", {"kind": "job"})
    assert path == tmp_path / "trainingjob" / "cell.json" and json.loads(path.read_text()) == {"kind": "job"}
    assert [item.name for item in path.parent.iterdir()] == ["cell.json"]
    (tmp_path / "blocked").write_text("a file, not a directory\n")
    expected = f"cannot write the training-job body {tmp_path / 'blocked' / 'trainingjob' / 'cell.json'}: "
    # a WriteError now (it was a ConfigError): the matrix step that writes it turns it into its stage's error
    with pytest.raises(WriteError, match=re.escape(expected)):
        trainingjob.write_body(tmp_path / "blocked", "cell", {"kind": "job"})


# --------------------------------------------------------------------------------------------------------------
# Records as JSON and back


RESULT = VerificationResult(
    ok=True, python="3.11.2", python_executable="/home/ma-user/miniconda3/bin/python", torch="2.13.0+cpu",
    torch_cuda=None, cudnn=None, cuda_available=False, device_count=0, devices=(), device="cpu", uid=1000, gid=100,
    user="ma-user", cwd="/home/ma-user",
    environment=(("MA_JOB_DIR", "/home/ma-user/modelarts/user-job-dir"), ("VC_TASK_INDEX", "0")),
    checks=(CheckOutcome(name="import-torch", ok=True, detail="torch 2.13.0+cpu"),
            CheckOutcome(name="matmul", ok=True, detail="max |difference| 1e-06")),
    seconds=3.5)


def full_record() -> CellRecord:
    """A record with everything a cell can leave: a verification with a result, a failed GPU run, every kind of
    check; layers; a manifest with an error; a push."""
    base = record("full", FAILED, reason="full: verify failed", inputs={"dockerfile": "0" * 64, "steps": "1" * 64},
                  durations={"fetch": 1.25, "build": 60.0, "verify": 12.5, "push": 3.125},
                  manifest={"conda": ("torch=2.13.0=cpu",), "dpkg": ("bash=5.2",), "error": ("dpkg-query: broken",)},
                  digest="sha256:" + "d" * 64, pushed="swr.cn-north-4.myhuaweicloud.com/org/pytorch:full",
                  training_job="reports/trainingjob/full.json")
    assert base.verification is not None
    cpu = dataclasses.replace(base.verification.runs[0], result=RESULT, output_tail=("tensor([[0.1]])",))
    gpu = DeviceRun(device=Device.GPU, command=("/home/ma-user/miniconda3/bin/python", "x.py", "--require-gpu"),
                    exit_code=None, timed_out=False, seconds=0.0, result=None,
                    outcomes=(CheckOutcome(name="run", ok=False, detail="no GPU runtime"),), output_tail=())
    conformance = (*base.verification.conformance,
                   CheckOutcome(name="setuid-setgid", ok=False, warning=True, detail="base image not available"),
                   CheckOutcome(name="conda-channel", ok=True, skipped=True, detail="no conda metadata"))
    return dataclasses.replace(base, verification=dataclasses.replace(
        base.verification, runs=(cpu, gpu), skipped=(), conformance=conformance))


def platform_record() -> CellRecord:
    """A cell verified on ModelArts under its staging tag and released."""
    base = record("modelarts", digest="sha256:" + "d" * 64, pushed="swr.cn-north-4.myhuaweicloud.com/org/pytorch:p")
    assert base.verification is not None
    job = PlatformJob(job_id="5c0ff", name="verify-p-cpu-1a2b3c", region="cn-north-4", flavor="modelarts.vm.cpu.2u",
                      phase="Completed", exit_code=0, message="", queued=12.0, ran=40.5,
                      console_url="https://console.huaweicloud.com/modelarts/?region=cn-north-4#/trainingJobs",
                      log_bytes=(900, 900))
    run = dataclasses.replace(base.verification.runs[0], job=job)
    verified = dataclasses.replace(base.verification, runs=(run,), conformance=(), platform="modelarts")
    return dataclasses.replace(base, platform=verified,
                               staged="swr.cn-north-4.myhuaweicloud.com/org/pytorch:p-staging-0123456789ab")


def test_a_cell_verified_on_modelarts_keeps_its_jobs_and_shows_them() -> None:
    made = platform_record()
    assert CellRecord.from_json(json.loads(json.dumps(made.to_json()))) == made
    assert "platform" not in record("a").to_json()  # a cell that never asked keeps its record's shape
    shown = report.render_markdown([made])
    assert "- verified on ModelArts as `swr.cn-north-4.myhuaweicloud.com/org/pytorch:p-staging-0123456789ab`, " \
           "released as `swr.cn-north-4.myhuaweicloud.com/org/pytorch:p`" in shown
    assert ("CPU on ModelArts (pass): job `5c0ff` (verify-p-cpu-1a2b3c) on modelarts.vm.cpu.2u in cn-north-4, "
            "Completed, queued 12 s, ran 40 s") in shown
    unreleased = dataclasses.replace(made, pushed=made.staged)
    assert ", not released" in report.render_markdown([unreleased])


def test_a_verification_report_comes_back_from_its_json() -> None:
    verification = full_record().verification
    assert verification is not None and verification.runs[0].result is RESULT
    assert ImageReport.from_json(verification.to_json()) == verification
    assert ImageReport.from_json(json.loads(json.dumps(verification.to_json()))) == verification


@pytest.mark.parametrize("made", [full_record(), record("a"), record("s", SKIPPED, verification=None, layers=(),
                                                                    manifest={}, size=None)],
                         ids=["full", "passed", "bare"])
def test_a_cell_record_comes_back_from_its_json(made: CellRecord) -> None:
    assert CellRecord.from_json(made.to_json()) == made
    assert CellRecord.from_json(json.loads(json.dumps(made.to_json()))) == made


def test_a_full_record_renders_its_verification_layers_and_manifest(tmp_path: Path) -> None:
    made = full_record()
    report.write_cell(tmp_path, made)
    (read,) = report.read_cells(tmp_path, ["full"])
    assert read == made
    text = report.render_markdown([read])
    assert "| full | failed | 2.5 GB | 1.2 s | 60.0 s | 12.5 s | pass | FAIL | FAIL (size) | sha256:dddddddddddd |" \
        in text
    assert "- [warn] setuid-setgid: base image not available" in text
    assert "- [skip] conda-channel: no conda metadata" in text
    assert "- [FAIL] run: no GPU runtime" in text
    assert "<summary>error (1 entries)</summary>" in text and "- ModelArts training-job body: `reports/" in text


def distributed_record(*, fail_worker: int | None = None) -> CellRecord:
    """A cell verified as 2 nodes × 2 on the CPU: a run per worker, each with the script's distributed checks."""
    def worker_run(index: int) -> DeviceRun:
        times = {"all_reduce": 0.1 * (index + 1), "broadcast": 0.1, "barrier": 0.1}
        checks = tuple(CheckOutcome(name=f"distributed:{name}", ok=True, detail=f"{name} fine ({seconds:.2f} s)")
                       for name, seconds in times.items())
        result = VerificationResult(
            ok=True, python="3.11.9", python_executable="/home/ma-user/miniconda3/bin/python", torch="2.13.0",
            torch_cuda=None, cudnn=None, cuda_available=False, device_count=0, devices=(), device="cpu", uid=1000,
            gid=100, user="ma-user", cwd="/home/ma-user", environment=(), checks=checks, seconds=3.0)
        failed = index == fail_worker
        outcomes = (CheckOutcome(name="script:distributed:rendezvous", ok=not failed, detail="..."),
                    CheckOutcome(name="exit-status", ok=not failed, detail="exit"))
        return DeviceRun(device=Device.CPU, command=("python",), exit_code=1 if failed else 0, timed_out=False,
                         seconds=9.0, result=result, outcomes=outcomes, output_tail=(),
                         worker=Worker(index=index, nodes=2, procs_per_node=2, launcher="boot"))

    base = record("d")
    assert base.verification is not None
    return dataclasses.replace(base, verification=dataclasses.replace(
        base.verification, runs=(worker_run(0), worker_run(1))))


def test_a_distributed_cell_is_summed_up_in_one_line() -> None:
    passed = distributed_record()
    line = "2 nodes × 2, gloo: all_reduce, broadcast, barrier ok (0.40 s)"  # the slower worker: 0.2 + 0.1 + 0.1
    assert passed.verification is not None and passed.verification.distributed() == {"cpu": line}
    assert f"- distributed on the CPU: {line}" in report.render_markdown([passed])
    assert f"  CPU distributed: {line}" in format_report(passed.verification)
    written = passed.to_json()
    assert written["verification"]["distributed"] == {"cpu": line}
    assert CellRecord.from_json(written) == passed  # the line is derived, not read back
    failed = distributed_record(fail_worker=1)
    assert failed.verification is not None
    assert failed.verification.distributed() == {
        "cpu": "2 nodes × 2, gloo: FAIL, worker 1 script:distributed:rendezvous (and 1 more)"}
    single = record("s").verification
    assert single is not None and single.distributed() == {}
