"""CI benchmark: what a runner that starts empty pays for a cell, with the registry as its memory.

The cell is the engine tests' (stand-in installer and the CPU torch 2.13.0 wheel, served on loopback, with the
dependency wheels fetch resolves), on modelarts-test-base:bookworm plus a file naming the run (run_base in
tests/support/engine_tier.py: no cache record or layer of an earlier run can stand in), run through the matrix
(modelarts_images.matrix.runner) against a registry on 127.0.0.1:<free port> (scripts/registry-up.sh, htpasswd
auth).

1. The cell is built, verified and pushed. The image and the engine's whole build cache are removed and the
   download cache and reports start empty: the time the matrix takes to report the cell unchanged (through the
   tag's input-hash label, from versions.lock alone). Goal: at most 2 s.
2. The cell's stack changes (one wheel). Cold: the engine's build cache wiped, the cell built without the registry.
   Warm: wiped again, the image removed, built with --check-registry (BuildKit's inline cache of the tag). The
   build times (context assembly included), the steps that ran and the bytes pulled. Goal: warm at most 0.5 of cold.

`key: value` lines on stdout, bench/results/ci.json. Run with `nox -s bench -- ci` or
`PYTHONPATH=. .venv/bin/python bench/bench_ci.py`; about five minutes. It wipes the engine's build cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from modelarts_images import pipeline  # noqa: E402
from modelarts_images.config import versions as versions_config  # noqa: E402
from modelarts_images.engine.adapter import connect  # noqa: E402
from modelarts_images.matrix import runner  # noqa: E402
from modelarts_images.matrix.cells import CellRecord, CellStatus  # noqa: E402
from modelarts_images.options import Flags, resolve  # noqa: E402
from tests.support import engine_tier as engine_tests  # noqa: E402
from tests.support.engine_tier import fetch_with_stack, run_base  # noqa: E402
from tests.support.http_server import serve  # noqa: E402
from tests.support.registry import start_registry, stop_registry  # noqa: E402
from tests.support.wheels import make_wheel  # noqa: E402

GOALS = {"unchanged_s": 2.0, "changed_ratio": 0.5}


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def wipe_build_cache() -> None:
    subprocess.run(["docker", "builder", "prune", "-af"], check=True, capture_output=True, timeout=900)


def main() -> None:
    run = uuid.uuid4().hex[:8]
    client: Any = docker.from_env()
    engine = connect()
    work = Path(tempfile.mkdtemp(prefix="bench-ci-"))
    user, password = f"bench-{run}", "pw-" + secrets.token_urlsafe(18)
    registry = start_registry(user, password)
    os.environ.update({"MODELARTS_REGISTRY_USER": user, "MODELARTS_REGISTRY_PASSWORD": password})
    base = f"bench-ci-base:{run}"
    run_base(client, base, run)
    torch_wheel = engine_tests.find_torch_wheel(work / "download")
    reference = f"{registry.host}/bench/modelarts-images-bench-ci:cell-{run}"
    results: dict[str, Any] = {"run": run, "cpus": os.cpu_count(), "goals": GOALS}
    real_fetch = pipeline.fetch_step
    try:
        with serve() as server:
            installer, wheel = engine_tests.STAND_IN_INSTALLER.read_bytes(), torch_wheel.read_bytes()
            versions = work / "versions.yaml"
            versions.write_text(yaml.safe_dump({"images": [{
                "id": "cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "tag": f"cell-{run}",
                "registry": registry.host, "organization": "bench", "repository": "modelarts-images-bench-ci",
                "base_image": base,
                "installer": {"url": server.add("/files/stand-in-installer.sh", installer),
                              "sha256": hashlib.sha256(installer).hexdigest()},
                "wheels": [{"url": server.add("/files/" + torch_wheel.name.replace("+", "%2B"), wheel),
                            "sha256": hashlib.sha256(wheel).hexdigest()}]}]}), "utf-8")

            def cell(name: str, **matrix: Any) -> tuple[CellRecord, float]:
                options = resolve({"cache_dir": str(work / f"cache-{name}"), "reports_dir": str(work / name)},
                                  Flags(versions=str(versions), device="cpu", backend="buildkit"))
                images = versions_config.load_versions(versions).images
                started = time.perf_counter()
                (record,) = runner.run_matrix(images, runner.MatrixOptions(options=options, **matrix),
                                              engine=lambda: engine, out=lambda line: log(line), summary=False)
                return record, time.perf_counter() - started

            log("1. build, verify, push")
            pushed, _ = cell("first", push=True)
            assert pushed.status is CellStatus.PASSED, pushed.reason
            client.images.remove(reference, force=True)
            wipe_build_cache()
            unchanged, seconds = cell("unchanged", check_registry=True)
            assert unchanged.status is CellStatus.SKIPPED, unchanged.reason
            results["unchanged"] = {"seconds": round(seconds, 2), "reason": unchanged.reason}

            log("2. the stack changes")
            (work / "stack").mkdir()
            name = "bench_stack_probe-1.0-py3-none-any.whl"
            pipeline.fetch_step = fetch_with_stack({name: make_wheel(name, padding=200_000)}, work / "stack")
            measured: dict[str, Any] = {}
            for mode, matrix in (("cold", {}), ("registry_cache", {"check_registry": True})):
                with contextlib.suppress(docker.errors.NotFound):  # gone after step 1
                    client.images.remove(reference, force=True)
                wipe_build_cache()
                log(f"changed cell, {mode}")
                record, _ = cell(f"changed-{mode}", rerun=True, **matrix)
                assert record.status is CellStatus.PASSED, record.reason
                measured[mode] = {"build_s": record.durations["build"], "steps_ran": len(record.steps_ran),
                                  "steps_cached": len(record.steps_cached),
                                  "layers_pulled": len(record.layers_pulled)}
            measured["ratio"] = round(measured["registry_cache"]["build_s"] / measured["cold"]["build_s"], 2)
            results["changed"] = measured
    finally:
        pipeline.fetch_step = real_fetch
        for image in (reference, base):
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image, force=True)
        stop_registry(registry.port)
    out = ROOT / "bench" / "results" / "ci.json"
    out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"unchanged_s: {results['unchanged']['seconds']} (goal <= {GOALS['unchanged_s']})")
    print(f"changed_cold_build_s: {results['changed']['cold']['build_s']}")
    print(f"changed_registry_cache_build_s: {results['changed']['registry_cache']['build_s']}")
    print(f"changed_ratio: {results['changed']['ratio']} (goal <= {GOALS['changed_ratio']})")


if __name__ == "__main__":
    main()
