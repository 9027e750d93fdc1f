"""The matrix end to end: `nox -s matrix -- --versions FILE` over test entries served on loopback.

Two good cells (the same stand-in installer and CPU torch wheel under two tags: the BuildKit cache makes the
second build cheap) and one whose installer fails. The failing cell does not stop the others and the run exits
non-zero naming it; the rerun skips both good cells; changing one entry reruns that cell only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.engine_tier import ROOT, STAND_IN_INSTALLER, remove_image, served_entry
from tests.support.http_server import serve

pytestmark = pytest.mark.engine

BROKEN_INSTALLER = b"#!/usr/bin/env bash\necho 'stand-in installer: broken on purpose' >&2\nexit 1\n"


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, check=False)


def test_matrix_runs_resumes_and_continues_past_failure(docker_client: Any, test_base: str, run_id: str,
                                                         torch_wheel: Path, tmp_path: Path) -> None:
    installer = STAND_IN_INSTALLER.read_bytes()
    wheel = torch_wheel.read_bytes()
    references = [f"127.0.0.1:5999/matrix/modelarts-images-test:{name}-{run_id}" for name in ("a", "b", "b2", "bad")]
    versions = tmp_path / "versions.yaml"
    config = tmp_path / "invoke-matrix.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {
        "cache_dir": str(tmp_path / "cache"), "reports_dir": str(tmp_path / "reports")}}), "utf-8")
    reports = tmp_path / "reports"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--versions", str(versions), "--config", str(config), "--device", "cpu", "--backend", "buildkit"]
    with serve() as server:
        good = (server.add("/files/stand-in-installer.sh", installer), installer)
        broken = (server.add("/files/broken-installer.sh", BROKEN_INSTALLER), BROKEN_INSTALLER)
        torch = (server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel), wheel)

        def write(entries: list[dict[str, Any]]) -> None:
            versions.write_text(yaml.safe_dump({"images": entries}), "utf-8")

        cell_a = served_entry("cell-a", f"a-{run_id}", test_base, good, torch)
        cell_b = served_entry("cell-b", f"b-{run_id}", test_base, good, torch)
        cell_bad = served_entry("cell-bad", f"bad-{run_id}", test_base, broken, torch)
        try:
            # 1. all three cells through nox; the broken one fails, the others pass, the run names it
            write([cell_a, cell_bad, cell_b])
            first = _run([sys.executable, "-m", "nox", "-s", "matrix", "--", *common], env)
            output = first.stdout + first.stderr
            assert first.returncode != 0, output[-4000:]
            assert "1 of 3 matrix cell(s) failed" in output and "cell-bad:" in output, output[-4000:]
            report = json.loads((reports / "matrix.json").read_text("utf-8"))
            status = {cell["id"]: cell["status"] for cell in report["cells"]}
            assert status == {"cell-a": "passed", "cell-bad": "failed", "cell-b": "passed"}, output[-4000:]
            passed = next(cell for cell in report["cells"] if cell["id"] == "cell-a")
            assert passed["size"] and passed["layers"] and passed["durations"]["build"] > 0
            pip_names = [line.split("=")[0].split(" @")[0] for line in passed["manifest"]["pip"]]
            assert "torch" in pip_names, passed["manifest"]  # a local wheel shows as `torch @ file:...`
            assert passed["manifest"]["dpkg"]
            assert passed["verification"]["runs"][0]["ok"] is True
            assert "## cell-a" in (reports / "matrix.md").read_text("utf-8")

            # 2. the good cells again, unchanged: both skipped, quickly, exit 0
            write([cell_a, cell_b])
            second = _run([sys.executable, "-m", "modelarts_images.matrix", *common], env)
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
            assert "cell-a: skipped, inputs unchanged" in second.stdout
            assert "cell-b: skipped, inputs unchanged" in second.stdout

            # 2b. one cell at a time, as nox's per-cell sessions run it: --shard still counts the cell's place
            # in the whole file (cell-b is second: shard 2/2's), so it runs in exactly one of the two shards
            for index, expected in ((1, "0 of 1 selected cells: none"), (2, "1 of 1 selected cells: cell-b")):
                alone = _run([sys.executable, "-m", "modelarts_images.matrix", *common, "--only", "cell-b",
                              "--shard", f"{index}/2"], env)
                assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
                assert f"shard {index}/2: {expected}" in alone.stdout, alone.stdout[-3000:]
            report = json.loads((reports / "matrix.json").read_text("utf-8"))
            assert [cell["id"] for cell in report["cells"]] == ["cell-a", "cell-b"]  # the file's, not just b

            # 3. touch one entry's input (its tag, a build argument): only that cell runs
            write([cell_a, {**cell_b, "tag": f"b2-{run_id}"}])
            third = _run([sys.executable, "-m", "modelarts_images.matrix", *common], env)
            assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
            assert "cell-a: skipped, inputs unchanged" in third.stdout
            assert "cell-b: running, changed: build-args" in third.stdout
            report = json.loads((reports / "matrix.json").read_text("utf-8"))
            assert {cell["id"]: cell["status"] for cell in report["cells"]} == {"cell-a": "skipped",
                                                                                 "cell-b": "passed"}
        finally:
            for reference in references:
                remove_image(docker_client, reference)
