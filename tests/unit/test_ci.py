"""The matrix for CI systems: the cells as GitHub Actions' fromJSON and a GitLab child pipeline take them, the
runner mapping of invoke.yaml, and the shipped templates, validated against the schemas check-jsonschema bundles
and checked against what the emitter prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images import paths
from modelarts_images.config import settings
from modelarts_images.errors import ConfigError
from modelarts_images.matrix import ci
from modelarts_images.matrix.cli import main

ROOT = Path(__file__).resolve().parents[2]
GITHUB_TEMPLATE = ROOT / "ci" / "github" / "modelarts-images.yml"
GITLAB_TEMPLATES = [ROOT / "ci" / "gitlab" / "gitlab-ci.yml", ROOT / "ci" / "gitlab" / "cell.yml"]

ENTRY = {"python": "3.11", "torch": "2.13.0", "registry": "localhost:5999", "organization": "tests",
         "repository": "ci", "base_image": "ubuntu:22.04",
         "installer": {"url": "https://x.invalid/Miniconda3-py311_24.1.2-0-Linux-x86_64.sh", "sha256": "1" * 64}}


def write_files(tmp_path: Path, runners: dict[str, Any] | None) -> tuple[Path, Path]:
    versions = tmp_path / "versions.yaml"
    versions.write_text(json.dumps({"images": [
        {**ENTRY, "id": "cpu-cell", "tag": "cpu", "cuda": "cpu"},
        {**ENTRY, "id": "cuda12-cell", "tag": "cu126", "cuda": "12.6"},
        {**ENTRY, "id": "cuda13-cell", "tag": "cu130", "cuda": "13.0"},
    ]}), "utf-8")
    config = tmp_path / "invoke-ci.yaml"
    section: dict[str, Any] = {"reports_dir": str(tmp_path / "reports"), "cache_dir": str(tmp_path / "cache")}
    if runners is not None:
        section["ci_runners"] = runners
    config.write_text(yaml.safe_dump({"modelarts": section}), "utf-8")
    return versions, config


def emitted(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str,
            runners: dict[str, Any] | None = None) -> Any:
    versions, config = write_files(tmp_path, runners)
    assert main(["--versions", str(versions), "--config", str(config), *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_list_is_a_github_matrix_with_runners_by_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = emitted(tmp_path, capsys, "--list-json",
                       runners={"cpu": "ubuntu-latest", "cuda12": ["self-hosted", "gpu", "cuda12"]})
    assert document == {"include": [
        {"id": "cpu-cell", "tags": ["cpu"], "gpu": False, "runner": ["ubuntu-latest"], "device": "cpu"},
        # a GPU runner for its tag: verified on the CPU and the GPU
        {"id": "cuda12-cell", "tags": ["cuda12"], "gpu": True, "runner": ["self-hosted", "gpu", "cuda12"],
         "device": "both"},
        # no GPU runner mapped: GitHub's hosted runner, verified on the CPU only
        {"id": "cuda13-cell", "tags": ["cuda13"], "gpu": True, "runner": ["ubuntu-latest"], "device": "cpu"},
    ]}


def test_gpu_and_default_keys_and_a_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = emitted(tmp_path, capsys, "--list-json", "--shard", "2/2",
                       runners={"gpu": "gpu-box", "default": ["linux", "docker"]})
    assert document == {"include": [
        {"id": "cuda12-cell", "tags": ["cuda12"], "gpu": True, "runner": ["gpu-box"], "device": "both"}]}
    document = emitted(tmp_path, capsys, "--list-json", "--only", "cpu-cell",
                       runners={"gpu": "gpu-box", "default": ["linux", "docker"]})
    assert document["include"][0]["runner"] == ["linux", "docker"]


def test_the_gitlab_pipeline_has_a_job_per_cell_and_a_summary(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = emitted(tmp_path, capsys, "--gitlab-pipeline", runners={"cuda12": ["gpu"]})
    jobs = {name: job for name, job in pipeline.items() if name.startswith("cell ")}
    assert list(jobs) == ["cell cpu-cell", "cell cuda12-cell", "cell cuda13-cell"]
    assert jobs["cell cuda12-cell"] == {"extends": ci.GITLAB_JOB_TEMPLATE, "tags": ["gpu"], "variables": {
        "CELL": "cuda12-cell", "CELL_DEVICE": "both", "CELL_TAGS": "cuda12"}}
    assert "tags" not in jobs["cell cpu-cell"], "unmapped: any runner of the project"
    assert pipeline["summary"]["needs"] == [{"job": name, "artifacts": True} for name in jobs]
    assert pipeline["include"] == [{"local": paths.GITLAB_CELL_FILE}]
    assert (ROOT / paths.GITLAB_CELL_FILE).is_file()


@pytest.mark.parametrize(("runners", "message"), [
    ("ubuntu-latest", "must map cell tags"),
    ({"cuda12": []}, "ci_runners.cuda12: must be a runner label or a list"),
    ({"cuda12": [3]}, "ci_runners.cuda12: must be a runner label or a list"),
    ({"CUDA 12": "gpu"}, "'CUDA 12' is not a cell tag"),
])
def test_a_bad_runner_mapping_is_named(tmp_path: Path, runners: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        settings.resolve({"ci_runners": runners}, root=tmp_path)
    assert "invoke.yaml: modelarts.ci_runners" in str(caught.value) and caught.value.exit_code == 2


# --------------------------------------------------------------------------------------------------------------
# The shipped templates


def check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which(
        "check-jsonschema")
    assert found, "check-jsonschema is a dev dependency (pip install -e '.[dev]')"
    return subprocess.run([found, "--builtin-schema", schema, *map(str, files)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_templates_validate_against_their_schemas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    github = check_jsonschema("vendor.github-workflows", GITHUB_TEMPLATE)
    assert github.returncode == 0, github.stdout + github.stderr
    child = tmp_path / "cells.yml"
    child.write_text(json.dumps(emitted(tmp_path, capsys, "--gitlab-pipeline", runners={"cpu": "docker"})), "utf-8")
    gitlab = check_jsonschema("vendor.gitlab-ci", *GITLAB_TEMPLATES, child)
    assert gitlab.returncode == 0, gitlab.stdout + gitlab.stderr
    # the checks can fail: a job that runs "sometimes", a workflow whose job has no runner
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"job": {"script": ["true"], "when": "sometimes"}}), "utf-8")
    assert check_jsonschema("vendor.gitlab-ci", broken).returncode != 0
    broken.write_text(yaml.safe_dump({"on": "push", "jobs": {"job": {"steps": [{"run": "true"}]}}}), "utf-8")
    assert check_jsonschema("vendor.github-workflows", broken).returncode != 0


def _job_steps(job: dict[str, Any]) -> list[str]:
    return [str(step.get("run", "")) for step in job["steps"]]


def test_the_github_workflow_consumes_what_the_emitter_prints(tmp_path: Path) -> None:
    workflow = yaml.safe_load(GITHUB_TEMPLATE.read_text("utf-8"))
    jobs = workflow["jobs"]
    (listing,) = [run for run in _job_steps(jobs["cells"]) if "--list-json" in run]
    command = re.fullmatch(r'echo "matrix=\$\((?P<command>.+)\)" >> "\$GITHUB_OUTPUT"', listing)
    assert command, listing
    # the template's own command, run here against a versions file with CPU and CUDA entries
    versions, _ = write_files(tmp_path, None)
    env = {**os.environ, "INVOKE_MODELARTS_VERSIONS": str(versions), "INVOKE_MODELARTS_REPORTS_DIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(command["command"].split(), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    matrix = json.loads(done.stdout)
    assert [cell["id"] for cell in matrix["include"]] == ["cpu-cell", "cuda12-cell", "cuda13-cell"]
    # every matrix field the cell job reads is one the emitter gives
    cell_job = jobs["cell"]
    used = set(re.findall(r"matrix\.(\w+)", json.dumps(cell_job)))
    assert used and used <= set(matrix["include"][0]), used
    assert cell_job["strategy"]["matrix"] == "${{ fromJSON(needs.cells.outputs.matrix) }}"
    assert cell_job["runs-on"] == "${{ matrix.runner }}"
    (run,) = [run for run in _job_steps(cell_job) if "nox -s" in run]
    assert 'nox -s "matrix(${{ matrix.id }})"' in run and "--device" in run and "--check-registry" in run
    # the closing job merges what the cell jobs uploaded
    summary_runs = _job_steps(jobs["summary"])
    assert any("matrix_summary -- --records collected" in run for run in summary_runs)
    assert jobs["summary"]["if"] == "always()"


def test_the_summary_merges_the_selected_cells_and_names_the_missing(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    versions, config = write_files(tmp_path, None)
    collected = tmp_path / "collected"
    collected.mkdir()
    record = {"id": "cpu-cell", "reference": "localhost:5999/tests/ci:cpu", "status": "passed", "python": "3.11",
              "cuda": "cpu", "torch": "2.13.0", "finished": "2026-01-01T00:00:00+00:00"}
    (collected / "cpu-cell.json").write_text(json.dumps(record), "utf-8")
    common = ["--versions", str(versions), "--config", str(config), "--summary", "--records", str(collected)]
    assert main([*common, "--only", "cpu-cell"]) == 0
    merged = json.loads((tmp_path / "reports" / "matrix.json").read_text("utf-8"))
    assert [cell["id"] for cell in merged["cells"]] == ["cpu-cell"]
    capsys.readouterr()
    assert main(common) == 1  # the whole file: two cells left no record
    out = capsys.readouterr().out
    assert "FAILED cuda12-cell: no record" in out and "FAILED cuda13-cell: no record" in out
    assert main(["--versions", str(versions), "--config", str(config), "--records", str(collected)]) == 2
    assert "--records: goes with --summary" in capsys.readouterr().err
