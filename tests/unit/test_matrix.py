"""The matrix without an engine: shards, cell input hashes, and the resume/continue logic with stand-in steps."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelarts_images import inputs as hashing
from modelarts_images import pipeline
from modelarts_images.declared import StepName
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError, RegistryError
from modelarts_images.fetch import fetcher
from modelarts_images.matrix import cells as matrix
from modelarts_images.matrix import cli, report, runner
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.model import FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import BuildOptions, Device, DeviceChoice, resolve
from modelarts_images.publish import publisher
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.report import DeviceRun, Expected, ImageReport, PlatformJob
from tests.support.matrix_harness import fetched, spec


def build_options(backend: Backend = Backend.BUILDKIT) -> BuildOptions:
    return BuildOptions(backend=backend, work_dir=Path("/build"))


STEPS = hashing.Steps(build=build_options(), device=DeviceChoice.CPU, push=False)


def inputs(item: FetchedImage, steps: hashing.Steps = STEPS, **digests: str) -> dict[str, str]:
    return hashing.cell_inputs(item, steps, context_digest=digests.get("context", "c" * 64),
                              verify_digest=digests.get("verify", "v" * 64))


# --------------------------------------------------------------------------------------------------------------
# Shards


@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/3", (2, 3)), (None, None)])
def test_parse_shard(text: str | None, expected: tuple[int, int] | None) -> None:
    assert matrix.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "2", "1/-1", ""])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        matrix.parse_shard(text)


@pytest.mark.parametrize("cells", [0, 1, 2, 5, 7, 13])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 8])
def test_shards_partition_exactly(cells: int, count: int) -> None:
    items = [spec(f"cell-{n}") for n in range(cells)]
    ids = [item.id for item in items]
    slices = [matrix.shard_cells(items, (index, count), file_ids=ids) for index in range(1, count + 1)]
    flat = [item.id for part in slices for item in part]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))  # every cell in exactly one shard
    assert slices == [matrix.shard_cells(items, (index, count), file_ids=ids)
                      for index in range(1, count + 1)]  # deterministic
    assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
    assert all(part == [item for item in items if item in part] for part in slices)  # file order kept


def test_no_shard_is_everything() -> None:
    cells = [spec("a"), spec("b")]
    assert matrix.shard_cells(cells, None, file_ids=["a", "b"]) == cells


# --------------------------------------------------------------------------------------------------------------
# Input hashes


def test_hash_is_stable() -> None:
    assert hashing.cell_hash(inputs(fetched(spec("a")))) == hashing.cell_hash(inputs(fetched(spec("a"))))


@pytest.mark.parametrize("change, part", [
    (lambda: inputs(fetched(spec("a"), wheel_sha="b" * 64)), "artifacts"),
    (lambda: inputs(fetched(spec("a")), verify="w" * 64), "verify-script"),
    (lambda: inputs(fetched(spec("a")), context="d" * 64), "dockerfile"),
    (lambda: inputs(fetched(spec("a")), hashing.Steps(build=build_options(Backend.DOCKER), device=DeviceChoice.CPU,
                                                     push=False)), "backend"),
    (lambda: inputs(fetched(spec("a")), hashing.Steps(build=build_options(), device=DeviceChoice.BOTH, push=False)),
     "device"),
    (lambda: inputs(fetched(spec("a")), hashing.Steps(build=build_options(), device=DeviceChoice.CPU, push=True)),
     "publish"),
    (lambda: inputs(fetched(spec("a", tag="other"))), "build-args"),
    (lambda: inputs(fetched(spec("a", pip_index="https://u:secret@pypi.example/simple"))), "build-args"),
])
def test_one_input_changes_one_part(change: Any, part: str) -> None:
    before = inputs(fetched(spec("a")))
    after = change()
    assert hashing.changed_inputs(before, after) == [part]
    assert hashing.cell_hash(before) != hashing.cell_hash(after)
    # the image's label: what decides the image and its verification, not whether it is pushed
    assert (hashing.image_hash(before) == hashing.image_hash(after)) == (part == "publish")


def test_losing_the_closure_changes_artifacts_and_build_args() -> None:
    before, after = inputs(fetched(spec("a"))), inputs(fetched(spec("a"), closure=False))
    assert hashing.changed_inputs(before, after) == ["artifacts", "build-args"]  # HERMETIC=0 is a build argument


def test_the_install_tool_is_an_input_of_the_artifacts() -> None:
    plain = fetched(spec("a"))
    tool = FetchedFile(filename="uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl", path=Path("/cache") / ("3" * 64),
                       url="https://x.invalid/uv.whl", sha256="3" * 64)
    with_uv = dataclasses.replace(plain, tools=(tool,))
    other_uv = dataclasses.replace(plain, tools=(dataclasses.replace(tool, sha256="4" * 64),))
    assert hashing.changed_inputs(inputs(plain), inputs(with_uv)) == ["artifacts"]
    assert hashing.changed_inputs(inputs(with_uv), inputs(other_uv)) == ["artifacts"]


def test_changing_one_entry_leaves_the_other_cell_alone() -> None:
    a, b = spec("a"), spec("b")
    before = {image.id: hashing.cell_hash(inputs(fetched(image))) for image in (a, b)}
    after = {"a": hashing.cell_hash(inputs(fetched(a, wheel_sha="f" * 64))), "b": hashing.cell_hash(inputs(fetched(b)))}
    assert before["a"] != after["a"] and before["b"] == after["b"]


def test_no_secret_in_inputs() -> None:
    parts = inputs(fetched(spec("a", pip_index="https://u:hunter2@pypi.example/simple")))
    assert "hunter2" not in json.dumps(parts)


def test_tree_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    first = hashing.tree_digest(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM y\n")
    assert hashing.tree_digest(tmp_path) != first


# --------------------------------------------------------------------------------------------------------------
# The runner with stand-in steps (the `harness` fixture): resume, --rerun, a failing cell does not stop the others


def test_rerun_skips_and_a_change_reruns_one_cell(harness: Any) -> None:
    cells = [spec("a"), spec("b")]
    first = harness.run(cells)
    assert [r.status for r in first] == [CellStatus.PASSED, CellStatus.PASSED] and harness.calls == ["a", "b"]
    second = harness.run(cells)
    assert [r.status for r in second] == [CellStatus.SKIPPED] * 2 and harness.calls == ["a", "b"]
    assert any(line.startswith("a: skipped, inputs unchanged") for line in harness.lines)
    harness.wheel_sha["b"] = "e" * 64
    third = harness.run(cells)
    assert [r.status for r in third] == [CellStatus.SKIPPED, CellStatus.PASSED] and harness.calls == ["a", "b", "b"]
    assert "b: running, changed: artifacts" in harness.lines
    harness.run(cells, rerun=True)
    assert harness.calls == ["a", "b", "b", "a", "b"]
    written = json.loads((harness.reports / "matrix.json").read_text())
    assert [cell["id"] for cell in written["cells"]] == ["a", "b"]


def test_image_gone_from_engine_reruns(harness: Any) -> None:
    harness.run([spec("a")])
    harness.engine.ids.clear()
    harness.run([spec("a")])
    assert harness.calls == ["a", "a"]


def test_failing_cell_does_not_stop_the_others(harness: Any) -> None:
    harness.failing.add("a")
    with pytest.raises(runner.MatrixError) as raised:
        harness.run([spec("a"), spec("b"), spec("c")])
    assert harness.calls == ["a", "b", "c"]
    assert "1 of 3 matrix cell(s) failed" in str(raised.value) and "a: a: step 3/9 failed" in str(raised.value)
    harness.failing.clear()
    records = harness.run([spec("a"), spec("b"), spec("c")])
    assert [r.status for r in records] == [CellStatus.PASSED, CellStatus.SKIPPED, CellStatus.SKIPPED]


def test_shard_runs_its_slice(harness: Any) -> None:
    cells = [spec(name) for name in "abcde"]
    for index in (1, 2):
        harness.run(cells, shard=(index, 2))
    assert sorted(harness.calls) == list("abcde") and len(harness.calls) == 5
    assert [r.status for r in harness.run(cells)] == [CellStatus.SKIPPED] * 5


def test_artifacts_hash_ignores_order_and_spelling() -> None:
    item = fetched(spec("a"))
    extra = FetchedFile(filename="Jinja2-3.1-py3-none-any.whl", path=Path("/c"), url="u", sha256="3" * 64)
    one = FetchedImage(image=item.image, installer=item.installer, wheels=item.wheels,
                       closure=(*(item.closure or ()), extra))
    other = FetchedImage(image=item.image, installer=item.installer, wheels=item.wheels,
                         closure=(FetchedFile(filename="jinja2-3.1-py3-none-any.whl", path=Path("/d"), url="v",
                                              sha256="3" * 64), *(item.closure or ())))
    assert inputs(one) == inputs(other)


# --------------------------------------------------------------------------------------------------------------
# Shards cut by position in the whole file, whatever --only selects (nox runs one cell per session)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_each_cell_run_alone_lands_in_exactly_one_shard(count: int) -> None:
    cells = [spec(name) for name in "abcde"]
    file_ids = [cell.id for cell in cells]
    for position, cell in enumerate(cells):
        homes = [index for index in range(1, count + 1)
                 if matrix.shard_cells([cell], (index, count), file_ids=file_ids) == [cell]]
        assert homes == [position % count + 1], cell.id
    for index in range(1, count + 1):  # alone or all together, the same split
        together = matrix.shard_cells(cells, (index, count), file_ids=file_ids)
        alone = [cell for cell in cells if matrix.shard_cells([cell], (index, count), file_ids=file_ids)]
        assert together == alone == [cell for position, cell in enumerate(cells) if position % count == index - 1]


def test_a_cell_outside_the_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="--shard: z not among"):
        matrix.shard_cells([spec("z")], (1, 2), file_ids=["a"])


def _two_cell_file(tmp_path: Path) -> tuple[Path, Path]:
    entry = {"python": "3.11", "cuda": "cpu", "torch": "2.13.0", "registry": "localhost:5999",
             "organization": "tests", "repository": "matrix", "base_image": "modelarts-test-base:bookworm",
             "installer": {"url": "https://x.invalid/stand-in-installer.sh", "sha256": "1" * 64}}
    versions = tmp_path / "two.yaml"
    versions.write_text(json.dumps({"images": [{**entry, "id": "a", "tag": "a"},
                                               {**entry, "id": "b", "tag": "b"}]}), "utf-8")
    invoke_file = tmp_path / "invoke-matrix.yaml"
    invoke_file.write_text(json.dumps({"modelarts": {"cache_dir": str(tmp_path / "cache"),
                                                     "reports_dir": str(tmp_path / "reports")}}), "utf-8")
    return versions, invoke_file


def test_only_then_shard_counts_the_whole_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    versions, invoke_file = _two_cell_file(tmp_path)
    report.write_cell(tmp_path / "reports", CellRecord(id="a", reference="localhost:5999/tests/matrix:a",
                                                       status=CellStatus.PASSED, python="3.11", cuda="cpu",
                                                       torch="2.13.0", run="earlier"))
    # b is second in the file: shard 2/2's. Shard 1/2 has nothing to do (before: b ran, offline, and failed).
    code = cli.main(["--versions", str(versions), "--config", str(invoke_file), "--only", "b", "--shard", "1/2",
                        "--offline", "--no-summary"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "shard 1/2: 0 of 1 selected cells: none" in out
    # the report covers the file's cells, not just the one selected: single-cell runs add up to the matrix
    written = json.loads((tmp_path / "reports" / "matrix.json").read_text("utf-8"))
    assert [cell["id"] for cell in written["cells"]] == ["a"]


@pytest.mark.parametrize("name, message", [
    ("missing.yaml", "no such file"),
    ("broken.yaml", "cannot be read"),
    ("settings.txt", "cannot be read"),
])
def test_a_bad_config_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                             message: str) -> None:
    if name != "missing.yaml":
        (tmp_path / name).write_text("modelarts: [\n", "utf-8")
    code = cli.main(["--config", str(tmp_path / name), "--summary"])
    assert code == ConfigError.exit_code
    assert f"error: --config {tmp_path / name}: {message}" in capsys.readouterr().err


def test_an_unwritable_reports_dir_stops_before_any_cell(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    versions, invoke_file = _two_cell_file(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the reports directory should be\n", "utf-8")
    invoke_file.write_text(json.dumps({"modelarts": {"cache_dir": str(tmp_path / "cache"),
                                                     "reports_dir": str(blocker / "reports")}}), "utf-8")
    code = cli.main(["--versions", str(versions), "--config", str(invoke_file), "--offline", "--no-summary"])
    captured = capsys.readouterr()
    assert code == ConfigError.exit_code
    assert f"error: cannot write to the reports directory {blocker / 'reports'}: " in captured.err
    assert "a: FAILED" not in captured.out  # no cell ran


def test_force_is_the_old_name_of_rerun_and_replace_tag_reaches_the_push(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    versions, invoke_file = _two_cell_file(tmp_path)
    seen: list[runner.MatrixOptions] = []
    monkeypatch.setattr(cli, "run_matrix", lambda images, matrix, **_: seen.append(matrix))
    common = ["--versions", str(versions), "--config", str(invoke_file), "--no-summary"]
    assert cli.main([*common, "--rerun"]) == 0
    assert seen[-1].rerun and not seen[-1].options.push.replace_tags
    assert cli.main([*common, "--force", "--replace-tag", "--device", "cpu"]) == 0
    assert seen[-1].rerun and seen[-1].options.push.replace_tags
    assert seen[-1].options.verify.device is DeviceChoice.CPU
    assert "--force is now --rerun" in capsys.readouterr().err
    assert cli.main(common) == 0
    assert not seen[-1].rerun


def test_a_bad_number_is_named_like_the_tasks_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    versions, invoke_file = _two_cell_file(tmp_path)
    code = cli.main(["--versions", str(versions), "--config", str(invoke_file), "--timeout", "soon"])
    assert code == ConfigError.exit_code
    assert "error: --timeout: 'soon' is not a number" in capsys.readouterr().err


@pytest.mark.parametrize("state", ["{not json", '{"cells": [1, 2]}', '{"cells": {"a": {"id": "a"}}}', "[]"])
def test_a_corrupt_state_file_is_ignored_with_a_warning(harness: Any, state: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    harness.reports.mkdir(parents=True, exist_ok=True)
    (harness.reports / "matrix-state.json").write_text(state)
    records = harness.run([spec("a")])
    assert [r.status for r in records] == [CellStatus.PASSED] and harness.calls == ["a"]
    assert "matrix state" in caplog.text and "run" in caplog.text


def test_a_corrupt_matrix_report_is_named_by_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.json").write_text('{"schema": 1, "cells": [{"id": 5}]}')
    assert report.print_summary(tmp_path) == 1
    assert capsys.readouterr().out.startswith(f"the matrix report {tmp_path / 'matrix.json'} cannot be read (")


# --------------------------------------------------------------------------------------------------------------
# CI fan-out: one job per cell, each with its own reports directory, merged by a closing job


def _comparable(path: Path) -> list[dict[str, Any]]:
    """matrix.json's cells without what differs between two runs of the same work (when, how long, which run)."""
    cells = json.loads(path.read_text("utf-8"))["cells"]
    return [{key: value for key, value in cell.items() if key not in ("finished", "durations", "run")}
            for cell in cells]


def test_per_cell_jobs_merged_reproduce_the_single_machine_report(harness: Any, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cells = [spec(name) for name in "abc"]
    ids = [cell.id for cell in cells]
    harness.failing.add("b")
    with pytest.raises(runner.MatrixError):
        harness.run(cells)  # one machine, one reports directory
    single = harness.reports / report.JSON_NAME
    jobs = []
    for cell in cells:  # one CI job per cell: its own runner, its own reports directory
        job = tmp_path / f"job-{cell.id}"
        options = resolve(None, root=job)
        matrix_options = runner.MatrixOptions(options=options, template_dir=tmp_path / "context", run_token=cell.id)
        with contextlib.suppress(runner.MatrixError):
            runner.run_matrix([cell], matrix_options, file_ids=ids, engine=lambda: harness.engine, out=print,
                              summary=False)
        jobs.append(job / "reports" / report.CELLS_DIR)
    collected = tmp_path / "collected"
    for job_dir in jobs:  # what the CI system's artifact download leaves: the records side by side
        for record in job_dir.glob("*.json"):
            (collected / job_dir.parent.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(record, collected / job_dir.parent.parent.name / record.name)
    merged_dir = tmp_path / "merged"
    capsys.readouterr()
    assert report.merge(merged_dir, [collected], ids, tty=False) == 1
    out = capsys.readouterr().out
    assert "FAILED b: b: step 3/9 failed" in out and "FAILED a" not in out
    assert _comparable(merged_dir / report.JSON_NAME) == _comparable(single)
    assert (merged_dir / report.MD_NAME).read_text("utf-8").count("## ") == 3


def test_the_merge_names_a_cell_without_a_record_and_refuses_a_stranger(harness: Any, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    harness.run([spec("a")])
    records = harness.reports / report.CELLS_DIR
    assert report.merge(tmp_path / "merged", [records], ["a", "b"], tty=False) == 1
    assert "FAILED b: no record" in capsys.readouterr().out
    assert report.merge(tmp_path / "merged", [records / "a.json"], ["a"], tty=False) == 0
    with pytest.raises(ConfigError, match="a not among the selected cells of the versions file"):
        report.merge(tmp_path / "merged", [records], ["b"])
    (tmp_path / "junk.json").write_text("[]", "utf-8")
    with pytest.raises(ConfigError, match=r"junk.json is not a matrix cell record") as caught:
        report.merge(tmp_path / "merged", [tmp_path / "junk.json"], ["a"])
    assert caught.value.exit_code == 2


def test_the_registry_decides_before_any_fetch(harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --check-registry: a tag carrying the cell's image hash skips it; another hash, no tag, or a registry
    that cannot be asked runs it (the real registry: tests/engine/test_ci_registry.py)."""
    remote: dict[str, Any] = {}

    def ask(image: ImageSpec, options: Any, **_: Any) -> publisher.RemoteImage | None:
        if isinstance(remote.get("answer"), Exception):
            raise remote["answer"]
        return remote.get("answer")

    monkeypatch.setattr(fetcher, "locked_plan", lambda image, options: fetched(image))
    monkeypatch.setattr(publisher, "remote_image", ask)
    first = harness.run([spec("a")], check_registry=True)  # no tag yet: built, labelled with its image hash
    label = harness.labels["a"][hashing.INPUTS_LABEL]
    assert first[0].status is CellStatus.PASSED and label == hashing.image_hash(first[0].inputs)
    remote["answer"] = publisher.RemoteImage(reference="r/o/p:a", digest="sha256:" + "d" * 64,
                                             labels={hashing.INPUTS_LABEL: label})
    (skipped,) = harness.run([spec("a")], check_registry=True, rerun=False, run_token="t2")
    assert skipped.status is CellStatus.SKIPPED and skipped.digest == "sha256:" + "d" * 64
    assert harness.calls == ["a"] and "a: unchanged, r/o/p:a in the registry carries" in harness.lines[0]
    (forced,) = harness.run([spec("a")], check_registry=True, rerun=True)
    assert forced.status is CellStatus.PASSED and harness.calls == ["a", "a"]
    remote["answer"] = publisher.RemoteImage(reference="r/o/p:a", digest="sha256:" + "d" * 64,
                                             labels={hashing.INPUTS_LABEL: "0" * 64})
    harness.engine.ids.clear()  # nor does the engine still hold it
    assert harness.run([spec("a")], check_registry=True)[0].status is CellStatus.PASSED
    remote["answer"] = RegistryError("127.0.0.1:5999: connection refused")
    harness.engine.ids.clear()
    assert harness.run([spec("a")], check_registry=True)[0].status is CellStatus.PASSED
    assert any("the registry cannot say whether it changed (127.0.0.1:5999: connection refused): running it"
               in line for line in harness.lines)
    assert harness.calls == ["a"] * 4


# --------------------------------------------------------------------------------------------------------------
# --push --on modelarts: staged, verified on the platform, then released


def on_the_platform(monkeypatch: pytest.MonkeyPatch, *, passes: set[str]) -> list[str]:
    """Stand-in push, platform and release steps: what each was given, as `step:reference` lines."""
    seen: list[str] = []

    def push(run: pipeline.Run) -> tuple[Any, ...]:
        pushing = run.staged or (lambda image: image)
        records = tuple(SimpleNamespace(id=image.id, reference=pushing(image).reference,
                                        digest="sha256:" + "d" * 64) for image in run.images)
        seen.extend(f"push:{record.reference}" for record in records)
        run.show(StepName.PUSH, records)
        return records

    def verify_there(run: pipeline.Run) -> tuple[pipeline.Verified, ...]:
        assert run.staged is not None
        done = []
        for image in run.images:
            target = run.staged(image)
            seen.append(f"platform:{target.reference}")
            check = CheckOutcome(name="torch-version", ok=image.id in passes, detail="torch 2.13.0")
            job = PlatformJob(job_id=f"job-{image.id}", name=f"verify-{image.id}", region="cn-north-4",
                              flavor="modelarts.vm.cpu.2u", phase="Completed", exit_code=0, message="", queued=1.0,
                              ran=2.0, console_url="")
            report = ImageReport(id=image.id, reference=target.reference, expected=Expected.of(image),
                                 image_id="sha256:" + "d" * 64, size=0, skipped=(), conformance=(),
                                 platform="modelarts",
                                 runs=(DeviceRun(device=Device.CPU, command=("python",), exit_code=0, timed_out=False,
                                                 seconds=2.0, result=None, outcomes=(check,), output_tail=(),
                                                 job=job),))
            verified = pipeline.Verified(report=report, path=Path("/reports") / f"{image.id}.json")
            run.show(StepName.PLATFORM, verified)
            done.append(verified)
        return tuple(done)

    def release(run: pipeline.Run) -> tuple[publisher.Released, ...]:
        assert run.staged is not None
        done = tuple(publisher.Released(id=image.id, reference=image.reference, staged=run.staged(image).reference,
                                        digest="sha256:" + "d" * 64, previous=None)
                     for image in run.images if any(item.report.ok for item in run.verified))
        for item in done:
            seen.append(f"release:{item.reference}")
            run.show(StepName.RELEASE, item)
        return done

    bodies = {StepName.PUSH: push, StepName.PLATFORM: verify_there, StepName.RELEASE: release}
    steps = tuple(dataclasses.replace(step, body=bodies[step.name], text=str) if step.name in bodies else step
                  for step in pipeline.STEPS if step.name is not StepName.TRAINING_JOB)
    monkeypatch.setattr(pipeline, "STEPS", steps)
    monkeypatch.setattr(pipeline, "BY_NAME", {step.name: step for step in steps})
    return seen


def test_a_cell_is_released_only_after_it_passed_on_the_platform(harness: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen = on_the_platform(monkeypatch, passes={"a"})
    with pytest.raises(runner.MatrixError, match="1 of 2 matrix cell"):
        harness.run([spec("a"), spec("b")], push=True, on_platform=True)
    good, bad = report.read_cells(harness.reports, ["a", "b"])
    assert [good.status, bad.status] == [CellStatus.PASSED, CellStatus.FAILED]
    staged_a = f"localhost:5999/tests/matrix:a-staging-{good.hash[:12]}"
    assert good.staged == staged_a and good.pushed == "localhost:5999/tests/matrix:a"
    assert good.platform is not None and good.platform.runs[0].job is not None
    assert bad.pushed == bad.staged and bad.platform is not None and "torch-version" in bad.reason
    assert seen == [f"push:{staged_a}", f"platform:{staged_a}", "release:localhost:5999/tests/matrix:a",
                    f"push:localhost:5999/tests/matrix:b-staging-{bad.hash[:12]}",
                    f"platform:localhost:5999/tests/matrix:b-staging-{bad.hash[:12]}"]
    assert "job `job-a` (verify-a) on modelarts.vm.cpu.2u" in (harness.reports / "matrix.md").read_text()


def test_a_cell_that_passed_on_the_platform_is_not_submitted_again(harness: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen = on_the_platform(monkeypatch, passes={"a"})
    harness.run([spec("a")], push=True)  # pushed, verified only locally
    first = len(seen)
    (record,) = harness.run([spec("a")], push=True, on_platform=True)
    assert record.status is CellStatus.PASSED and len(seen) == first + 3  # the platform is a new input: it runs
    (again,) = harness.run([spec("a")], push=True, on_platform=True)
    assert again.status is CellStatus.SKIPPED and len(seen) == first + 3


def test_on_modelarts_needs_push(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    versions = tmp_path / "versions.yaml"
    versions.write_text("images:\n  - {id: a, python: '3.11', cuda: cpu, torch: 2.13.0, base_image: 'ubuntu:22.04',"
                        " installer: {url: 'https://x.invalid/i.sh'}}\n")
    assert cli.main(["--versions", str(versions), "--on", "modelarts"]) == 2
    assert "--on modelarts: needs --push (ModelArts runs the image from SWR)" in capsys.readouterr().err
