"""Matrix rerun benchmark: two cells built and verified once, then the whole matrix again with nothing changed.

Goal: the unchanged rerun takes at most 5 s in total. Needs the Docker Engine and the test base image (as the
engine tier does); prints `key: value` lines and writes bench/results/matrix.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import yaml

from tests.support.engine_tier import ROOT, STAND_IN_INSTALLER, TEST_BASE, find_torch_wheel, remove_image, served_entry
from tests.support.http_server import serve


def main() -> None:
    run_id = uuid.uuid4().hex[:8]
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="modelarts-bench-matrix-"))
    wheel_path = find_torch_wheel(work / "wheels")
    installer, wheel = STAND_IN_INSTALLER.read_bytes(), wheel_path.read_bytes()
    versions, config = work / "versions.yaml", work / "invoke-bench.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(work / "cache"),
                                                    "reports_dir": str(work / "reports")}}), "utf-8")
    command = [sys.executable, "-m", "modelarts_images.matrix", "--versions", str(versions), "--config", str(config),
               "--device", "cpu", "--backend", "buildkit"]
    tags = [f"bench-a-{run_id}", f"bench-b-{run_id}"]
    with serve() as server:
        good = (server.add("/files/stand-in-installer.sh", installer), installer)
        torch = (server.add("/files/" + wheel_path.name.replace("+", "%2B"), wheel), wheel)
        cells = [served_entry(f"cell-{n}", tag, TEST_BASE, good, torch) for n, tag in zip("ab", tags, strict=True)]
        versions.write_text(yaml.safe_dump({"images": cells}), "utf-8")
        try:
            started = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            first = time.perf_counter() - started
            started = time.perf_counter()
            rerun = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
            unchanged = time.perf_counter() - started
            assert rerun.stdout.count("skipped, inputs unchanged") == 2, rerun.stdout
        finally:
            for tag in tags:
                remove_image(client, f"127.0.0.1:5999/matrix/modelarts-images-test:{tag}")
    results = {"cells": 2, "first_run_s": round(first, 2), "unchanged_rerun_s": round(unchanged, 2), "goal_s": 5}
    for key, value in results.items():
        print(f"{key}: {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
