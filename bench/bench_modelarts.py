"""Verification on ModelArts, against the loopback stand-in (tests/support/huawei_cloud.py) with the real SDK
clients and the real poll schedule: the tool's own time around a job, and how often it asks for the job's status.

Goals: from the step's start to the job created, and from the job's end to the report written, at most 2 s each;
at most 12 status calls in any minute of a job. The command's own start (`inv verify --help`: Python, invoke, the
tasks and the declaration) is measured beside them, and the registry's tag check is left out (one HTTP round trip
to the registry). A job of about two minutes; prints `key: value` lines and writes bench/results/modelarts.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelarts_images import pipeline
from modelarts_images.cloud.api import Flavor, FlavorType, JobState, LogPreview, ModelArts
from modelarts_images.options import Device, PlatformOptions, Where
from modelarts_images.paths import ROOT, VERIFY_DIR
from modelarts_images.platform import verifier as platform
from modelarts_images.verify.report import save_report
from tests.support.huawei_cloud import JobScript, StandIn
from tests.unit.test_verify import entry, log_with, result_dict

IMAGE = entry()  # a CUDA entry, on the smallest GPU flavour; the result line is what its script prints


class Timed:
    """ModelArts with the time of each status call noted, as the client sees it."""

    def __init__(self, api: ModelArts) -> None:
        self.api, self.status_calls = api, list[float]()

    def flavors(self, kind: FlavorType) -> tuple[Flavor, ...]:
        return self.api.flavors(kind)

    def create(self, body: Mapping[str, Any]) -> JobState:
        return self.api.create(body)

    def job(self, job_id: str) -> JobState:
        self.status_calls.append(time.perf_counter())
        return self.api.job(job_id)

    def stop(self, job_id: str) -> None:
        self.api.stop(job_id)

    def log_preview(self, job_id: str, task: str) -> LogPreview:
        return self.api.log_preview(job_id, task)


def command_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invoke", "--help", "verify"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    marks: dict[str, float] = {}
    reports = Path(tempfile.mkdtemp(prefix="modelarts-bench-platform-"))
    with StandIn() as cloud:
        cloud.behaviour = lambda body: JobScript(phases=[("Creating", 1), ("Pending", 1), ("Running", 4)],
                                                 log=log_with(result_dict()))
        options = PlatformOptions(on=Where.MODELARTS, obs_dir="obs://verify-bucket/bench/",
                                  modelarts_endpoint=cloud.endpoint, obs_endpoint=cloud.endpoint,
                                  iam_endpoint=cloud.endpoint)

        def say(line: str) -> None:
            if ": training job " in line:
                marks["created"] = time.perf_counter()
            if "-> Completed" in line:
                marks["finished"] = time.perf_counter()

        started = time.perf_counter()
        keys = platform.keys_from({"HUAWEICLOUD_SDK_AK": cloud.ak, "HUAWEICLOUD_SDK_SK": cloud.sk})
        sdk_api, store = pipeline.sdk_cloud(keys, cloud.region, options)
        api = Timed(sdk_api)
        target = platform.Target(image=IMAGE, image_url=IMAGE.reference, digest="sha256:" + "d" * 64)
        report = platform.verify_on_modelarts(target, api=api, store=store, options=options, region=cloud.region,
                                              script_dir=VERIFY_DIR, devices=(Device.GPU,), say=say)
        assert report is not None and report.ok, report
        save_report(report, reports)
        written = time.perf_counter()
        status_calls = len(cloud.calls("show"))
        assert status_calls == len(api.status_calls)
    job_seconds = marks["finished"] - marks["created"]
    results = {
        "command_start_s": round(command_start(), 3),
        "start_to_job_created_s": round(marks["created"] - started, 3),
        "job_end_to_report_s": round(written - marks["finished"], 3),
        "job_s": round(job_seconds, 1),
        "status_calls": status_calls,
        "status_calls_per_minute": round(status_calls / (job_seconds / 60), 2),
        "most_status_calls_in_a_minute": max_in_a_minute(api.status_calls),
        "goals": {"start_to_job_created_s": 2, "job_end_to_report_s": 2, "status_calls_per_minute": 12},
        "measured": time.strftime("%Y-%m-%d"),
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "modelarts.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")


def max_in_a_minute(times: list[float]) -> int:
    return max(sum(1 for other in times if start <= other < start + 60) for start in times)


if __name__ == "__main__":
    main()
