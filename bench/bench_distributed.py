"""Distributed verification benchmark: what verifying an image as a job of 2 workers costs against verifying it on
one node, and how long 4 workers take. Goal: 2 nodes × 1 process on the CPU at most 1.5× the single-node time;
4 nodes complete (their time reported, no goal).

1. The engine tier's `good` test image (tests/support/verify_images.py: the test base, ma-user, a venv holding the
   real CPU torch 2.13.0 wheel), built once for the run and removed afterwards.
2. The verification `inv verify` runs (verifier.verify_image: the script's container(s), the conformance probes and
   their image checks), in-process, on the CPU: single-node, then `--nodes 2`, then `--nodes 4`, each ROUNDS times
   in turn (single, 2, 4, single, 2, 4, ...) so that a slower moment of the machine falls on all of them; the
   median of each is compared. Every run must pass.
3. `key: value` lines on stdout and bench/results/distributed.json.

Run with `nox -s bench -- distributed` or `PYTHONPATH=. .venv/bin/python bench/bench_distributed.py`; needs the
Docker Engine and the test base image (scripts/test-base-image.sh); a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the project and its tests' helpers

from modelarts_images.engine.adapter import connect  # noqa: E402
from modelarts_images.options import Device, VerifyOptions  # noqa: E402
from modelarts_images.verify.verifier import verify_image  # noqa: E402
from tests.support.engine_tier import TEST_BASE, download_closure, find_torch_wheel, remove_image  # noqa: E402
from tests.support.verify_images import GOOD_DOCKERFILE, REPOSITORY, TIMEOUT, build, entry  # noqa: E402

ROUNDS = 3
SHAPES = (1, 2, 4)  # nodes; 1 is the single-node run
GOAL_RATIO = 1.5  # 2 nodes against 1


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def good_image(client: object, work: Path) -> str:
    context_dir = work / "context"
    wheels = context_dir / "wheels"
    wheels.mkdir(parents=True)
    torch_wheel = find_torch_wheel(work / "download")
    for wheel in [torch_wheel, *download_closure([torch_wheel], work / "closure")]:
        shutil.copyfile(wheel, wheels / wheel.name)
    return build(client, context_dir, GOOD_DOCKERFILE, f"{REPOSITORY}:bench-{uuid.uuid4().hex[:8]}",
                 {"BASE": TEST_BASE})


def main() -> int:
    engine = connect()
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    reference = ""
    try:
        log("building the test image")
        reference = good_image(engine.client, work)
        spec = entry(tag=reference.split(":")[-1])
        base = VerifyOptions(reports_dir=work / "reports", timeout=TIMEOUT)
        seconds: dict[int, list[float]] = {nodes: [] for nodes in SHAPES}
        summaries: dict[int, str] = {}
        for round_number in range(1, ROUNDS + 1):
            for nodes in SHAPES:
                options = dataclasses.replace(base, nodes=nodes)
                started = time.perf_counter()
                report = verify_image(engine, spec, options=options, reference=reference, devices=(Device.CPU,))
                took = time.perf_counter() - started
                if not report.ok:
                    raise RuntimeError(f"the {nodes}-node verification failed:\n{report.failure()}")
                seconds[nodes].append(took)
                summaries[nodes] = report.distributed().get("cpu", "single node")
                log(f"round {round_number}, {nodes} node(s): {took:.1f} s ({summaries[nodes]})")
        medians = {nodes: statistics.median(values) for nodes, values in seconds.items()}
        ratio = medians[2] / medians[1]
        results = {
            "cpus": os.cpu_count(), "rounds": ROUNDS, "image": reference,
            "seconds": {str(nodes): [round(value, 2) for value in values] for nodes, values in seconds.items()},
            "median_seconds": {str(nodes): round(value, 2) for nodes, value in medians.items()},
            "summaries": {str(nodes): line for nodes, line in summaries.items()},
            "ratio_2_nodes": round(ratio, 3), "ratio_4_nodes": round(medians[4] / medians[1], 3),
            "goal_ratio_2_nodes": GOAL_RATIO, "goal_met": ratio <= GOAL_RATIO,
        }
        for key, value in results.items():
            print(f"{key}: {json.dumps(value, ensure_ascii=False)}")
        out = ROOT / "bench" / "results" / "distributed.json"
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        log(f"wrote {out.relative_to(ROOT)}")
        return 0 if results["goal_met"] else 1
    finally:
        if reference:
            remove_image(engine.client, reference)
        engine.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
