"""Verification on ModelArts against the loopback stand-in (tests/support/huawei_cloud.py), through Huawei's own
SDK clients as the tool makes them (pipeline.sdk_cloud): Huawei Cloud cannot be reached from here, so the stand-in
checks each request's signature and body as the platform does, and plays the jobs' phases and logs. Polls are
paced fast; everything else is what a user's run does."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelarts_images import pipeline
from modelarts_images.declared import Launcher, StepName
from modelarts_images.errors import ConfigError, PlatformError, VerifyError
from modelarts_images.options import Device, DeviceChoice, Flags, PlatformOptions, VerifyOptions, Where, resolve
from modelarts_images.paths import VERIFY_DIR
from modelarts_images.platform import verifier as platform
from modelarts_images.platform.watch import Pace, PollSchedule
from modelarts_images.publish import publisher
from modelarts_images.verify.report import ImageReport, raise_for_reports
from modelarts_images.verify.verifier import judge_run
from tests.support.huawei_cloud import JobScript, StandIn
from tests.unit.test_verify import CPU_ENTRY, entry, log_with, result_dict

FAST = Pace(schedule=PollSchedule(first=0.01, growth=1.0, longest=0.01))
GPU_ENTRY = entry()  # CUDA 11.8 in swr.cn-north-4: the stand-in's region
DIGEST = "sha256:" + "d" * 64
NO_API: Any = None  # a plan that stops before it asks the platform anything


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with StandIn() as running:
        running.behaviour = lambda body: JobScript(phases=[("Creating", 1), ("Pending", 2), ("Running", 2)],
                                                   log=log_with(result_dict()))
        yield running


def options(cloud: StandIn, **changes: Any) -> PlatformOptions:
    return dataclasses.replace(PlatformOptions(
        on=Where.MODELARTS, obs_dir="obs://verify-bucket/ci/", job_timeout=60, modelarts_endpoint=cloud.endpoint,
        obs_endpoint=cloud.endpoint, iam_endpoint=cloud.endpoint), **changes)


def target(image: Any = GPU_ENTRY) -> platform.Target:
    return platform.Target(image=image, image_url=image.reference, digest=DIGEST)


def verify(cloud: StandIn, *, image: Any = GPU_ENTRY, said: list[str] | None = None,
           devices: tuple[Device, ...] | None = None, distributed: VerifyOptions | None = None,
           **changes: Any) -> ImageReport | None:
    chosen = options(cloud, **changes)
    keys = platform.keys_from({"HUAWEICLOUD_SDK_AK": cloud.ak, "HUAWEICLOUD_SDK_SK": cloud.sk})
    api, store = pipeline.sdk_cloud(keys, cloud.region, chosen)
    return platform.verify_on_modelarts(
        target(image), api=api, store=store, options=chosen, region=cloud.region, script_dir=VERIFY_DIR,
        devices=devices or platform.devices_for(image, DeviceChoice.AUTO),
        say=(said if said is not None else []).append, pace=FAST, verify=distributed)


def test_a_gpu_entry_passes_as_a_job_on_the_smallest_gpu_flavour(cloud: StandIn) -> None:
    said: list[str] = []
    report = verify(cloud, said=said)  # no project id: the SDK finds the region's project at IAM
    assert report is not None and report.ok and report.platform == "modelarts"
    (run,) = report.runs
    assert run.device is Device.GPU and run.job is not None
    assert run.job.flavor == "modelarts.vm.gpu.p4" and run.job.phase == "Completed" and run.job.exit_code == 0
    assert run.job.region == "cn-north-4" and run.job.job_id in cloud.jobs
    (created,) = [call.json() for call in cloud.calls("create")]
    assert created["algorithm"]["engine"] == {"image_url": GPU_ENTRY.reference}
    assert created["algorithm"]["command"].endswith("pytorch-verification.py --require-gpu")
    assert DIGEST in created["metadata"]["description"]
    assert created["algorithm"]["code_dir"].startswith(f"/verify-bucket/ci/{GPU_ENTRY.id}/")
    assert {key for bucket, key in cloud.objects} >= {created["algorithm"]["code_dir"].removeprefix(
        "/verify-bucket/") + "pytorch-verification.py"}
    assert cloud.calls("iam"), "the project id came from IAM"
    assert any("Pending -> Running" in line for line in said)
    assert said[0] == (f"{GPU_ENTRY.id}: creating 1 billed training job(s) on ModelArts in cn-north-4: gpu on "
                       "modelarts.vm.gpu.p4")  # before anything is sent
    assert json.loads(json.dumps(report.to_json()))["platform"] == "modelarts"


def test_the_checks_are_the_local_verifications(cloud: StandIn) -> None:
    report = verify(cloud)
    assert report is not None
    local = judge_run(GPU_ENTRY, Device.GPU, command=report.runs[0].command, log=log_with(result_dict()),
                      exit_code=0, timed_out=False, seconds=1.0, shown="")
    assert [outcome.name for outcome in report.runs[0].outcomes] == [outcome.name for outcome in local.outcomes]


def test_both_devices_are_two_jobs_and_the_code_is_sent_once(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)], log=log_with(result_dict(
        **({} if "--require-gpu" in body["algorithm"]["command"] else {"device": "cpu"}))))
    report = verify(cloud, devices=(Device.CPU, Device.GPU), project_id=cloud.project_id)
    assert report is not None and [run.job.flavor for run in report.runs if run.job] == [
        "modelarts.vm.cpu.2u", "modelarts.vm.gpu.p4"]
    puts = len(cloud.calls("put_object"))
    verify(cloud, devices=(Device.CPU,), project_id=cloud.project_id)
    assert len(cloud.calls("put_object")) == puts  # the same code is in the bucket already


def test_a_failed_job_fails_the_image_naming_the_job_and_its_exit_code(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)], final="Failed", exit_code=3,
                                             message="Command exited with code 3", log="Traceback ...\n")
    report = verify(cloud)
    assert report is not None and not report.ok
    (run,) = report.runs
    assert run.job is not None and run.job.phase == "Failed" and run.job.exit_code == 3
    with pytest.raises(VerifyError) as caught:
        raise_for_reports([report])
    message = str(caught.value)
    assert caught.value.exit_code == 5 and run.job.name in message and "ended Failed" in message
    assert "exit code 3: Command exited with code 3" in message


def test_a_log_longer_than_the_preview_says_so_when_the_result_is_missing(cloud: StandIn) -> None:
    cloud.preview_limit = 1000
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)], log="x" * 5000 + "\n")
    report = verify(cloud)
    assert report is not None and not report.ok
    detail = {outcome.name: outcome for outcome in report.runs[0].outcomes}["result-line"].detail
    assert "the log preview holds its newest 1000 of 5001 bytes" in detail


def test_a_result_at_the_end_of_a_long_log_is_found(cloud: StandIn) -> None:
    cloud.preview_limit = 4096
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)],
                                             log="noise\n" * 10_000 + log_with(result_dict()))
    report = verify(cloud)
    assert report is not None and report.ok and report.runs[0].job is not None
    assert report.runs[0].job.log_bytes[0] == 4096


def test_a_job_stuck_in_pending_is_stopped_at_its_timeout(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Pending", 10_000)])
    with pytest.raises(PlatformError, match=r"was still Pending after 0.3 s \(--job-timeout\); stopped it"):
        verify(cloud, job_timeout=0.3)
    (job,) = cloud.jobs.values()
    assert job["stopped"] and cloud.calls("stop")


def test_ctrl_c_while_running_stops_the_job(cloud: StandIn) -> None:
    def say(line: str) -> None:
        if line.endswith(("-> Running after 0 s", "-> Running after 1 s")):
            raise KeyboardInterrupt

    keys = platform.keys_from({"HW_ACCESS_KEY": cloud.ak, "HW_SECRET_KEY": cloud.sk})
    chosen = options(cloud, project_id=cloud.project_id)
    api, store = pipeline.sdk_cloud(keys, cloud.region, chosen)
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 10_000)])
    with pytest.raises(KeyboardInterrupt):
        platform.verify_on_modelarts(target(), api=api, store=store, options=chosen, region=cloud.region,
                                     script_dir=VERIFY_DIR, devices=(Device.GPU,), say=say, pace=FAST)
    (job,) = cloud.jobs.values()
    assert job["stopped"]


def test_status_calls_that_fail_for_a_while_are_asked_again(cloud: StandIn) -> None:
    cloud.fail("show", status=503, error_code="ModelArts.0001", error_msg="Service Unavailable", times=2)
    cloud.fail("show", status=429, error_code="APIGW.0308", error_msg="Too Many Requests", times=1)
    report = verify(cloud)
    assert report is not None and report.ok


@pytest.mark.parametrize(("code", "words", "advice"), [
    ("ModelArts.2762", "The training job quota is exceeded", "quota is used up"),
    ("ModelArts.2763", "The flavor is sold out", "sold out in this region"),
    ("ModelArts.2765", "The image does not exist or you have no permission to pull it", "cannot read the image"),
])
def test_a_refused_create_says_what_to_do_with_the_platforms_code(cloud: StandIn, code: str, words: str,
                                                                   advice: str) -> None:
    cloud.fail("create", status=400, error_code=code, error_msg=words)
    with pytest.raises(PlatformError) as caught:
        verify(cloud)
    assert f"[{code}]" in str(caught.value) and advice in str(caught.value) and caught.value.exit_code == 7
    assert not cloud.jobs


def test_a_wrong_secret_key_is_refused_by_the_gateway(cloud: StandIn) -> None:
    chosen = options(cloud, project_id=cloud.project_id)
    keys = platform.keys_from({"HUAWEICLOUD_SDK_AK": cloud.ak, "HUAWEICLOUD_SDK_SK": "not-the-secret-key"})
    api, store = pipeline.sdk_cloud(keys, cloud.region, chosen)
    with pytest.raises(PlatformError, match=r"\[APIGW.0301\]; the access key or secret key is wrong"):
        platform.verify_on_modelarts(target(), api=api, store=store, options=chosen, region=cloud.region,
                                     script_dir=VERIFY_DIR, devices=(Device.GPU,), say=lambda _: None, pace=FAST)


def test_a_bucket_in_another_region_is_refused_before_any_job(cloud: StandIn) -> None:
    cloud.buckets["verify-bucket"] = "cn-south-1"
    with pytest.raises(PlatformError, match="is in cn-south-1, but the job runs in cn-north-4"):
        verify(cloud)
    assert not cloud.jobs and not cloud.objects


def test_a_dry_run_shows_the_jobs_and_sends_nothing(cloud: StandIn) -> None:
    said: list[str] = []
    assert verify(cloud, said=said, dry_run=True, image=CPU_ENTRY) is None
    assert not cloud.jobs and not cloud.objects and not cloud.calls("put_object")
    shown = "\n".join(said)
    assert "on modelarts.vm.cpu.2u (2 vCPU, 8 GiB)" in shown and "obs://verify-bucket/ci/pytorch-2.13.0-cpu/" in shown
    assert f'"image_url": "{CPU_ENTRY.reference}"' in shown and "--require-gpu" not in shown
    assert '"flavor_id": "modelarts.vm.cpu.2u"' in shown


def test_detach_then_attach(cloud: StandIn) -> None:
    said: list[str] = []
    assert verify(cloud, said=said, detach=True) is None
    (job_id,) = cloud.jobs
    assert any(f"--job {job_id}" in line for line in said) and not cloud.calls("logs")
    report = verify(cloud, job=job_id)
    assert report is not None and report.ok and report.runs[0].job is not None
    assert report.runs[0].job.job_id == job_id and report.runs[0].device is Device.GPU
    assert report.runs[0].job.flavor == "modelarts.vm.gpu.p4"


def test_no_secret_leaves_the_tool(cloud: StandIn, caplog: pytest.LogCaptureFixture,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # the SDKs' own loggers too
    said: list[str] = []
    report = verify(cloud, said=said)
    assert report is not None
    printed = capsys.readouterr()
    for shown in (caplog.text, printed.out, printed.err, "\n".join(said)):
        assert cloud.sk not in shown
    sent = b"".join(call.body for call in cloud.requests) + b"".join(cloud.objects.values())
    headers = json.dumps([call.headers for call in cloud.requests])
    assert cloud.sk.encode() not in sent and cloud.sk not in headers
    assert cloud.sk not in json.dumps(report.to_json()) and cloud.ak not in json.dumps(report.to_json())
    (created,) = [call.json() for call in cloud.calls("create")]
    assert cloud.ak not in json.dumps(created)


def test_keys_and_folder_are_asked_for_by_name() -> None:
    with pytest.raises(PlatformError, match="HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK or HW_ACCESS_KEY/HW_SECRET_KEY"):
        platform.keys_from({})
    with pytest.raises(PlatformError, match="HW_SECRET_KEY is not set but HW_ACCESS_KEY is"):
        platform.keys_from({"HW_ACCESS_KEY": "AK"})
    with pytest.raises(ConfigError, match="--obs-dir"):
        platform.plan_jobs(target(), (Device.GPU,), api=NO_API, options=PlatformOptions(), region="r",
                           script_dir=VERIFY_DIR)


# --------------------------------------------------------------------------------------------------------------
# the pipeline's platform step: the tag checked against what was pushed, the report saved


def platform_run(cloud: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, remote_digest: str | None,
                 pushed: str | None = None, **flags: Any) -> pipeline.Run:
    remote = None if remote_digest is None else publisher.RemoteImage(reference=GPU_ENTRY.reference,
                                                                      digest=remote_digest, labels={})
    monkeypatch.setattr(pipeline, "remote_image_step", lambda image, options, credentials: remote)
    section = {"obs_dir": "obs://verify-bucket/ci/", "modelarts_endpoint": cloud.endpoint,
               "obs_endpoint": cloud.endpoint, "iam_endpoint": cloud.endpoint, "reports_dir": "reports"}
    resolved = resolve(section, Flags(on="modelarts", **flags), root=tmp_path)
    if pushed is not None:
        (tmp_path / "reports").mkdir(exist_ok=True)
        (tmp_path / "reports" / f"push-{GPU_ENTRY.id}.json").write_text(json.dumps(
            {"reference": GPU_ENTRY.reference, "digest": pushed}))
    run = pipeline.Run(options=resolved, images=(GPU_ENTRY,), env={"HUAWEICLOUD_SDK_AK": cloud.ak,
                                                                   "HUAWEICLOUD_SDK_SK": cloud.sk},
                       say=lambda _: None, pace=FAST)
    return pipeline.execute([StepName.PLATFORM], run)


def test_the_step_saves_the_report_where_the_local_one_goes(cloud: StandIn, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run = platform_run(cloud, tmp_path, monkeypatch, remote_digest=DIGEST, pushed=DIGEST)
    (verified,) = run.verified
    assert verified.path == tmp_path / "reports" / "verify" / f"{GPU_ENTRY.id}.json"
    saved = json.loads(verified.path.read_text())
    assert saved["platform"] == "modelarts" and saved["image_id"] == DIGEST and saved["runs"][0]["job"]["job_id"]
    assert ImageReport.from_json(saved) == verified.report


def test_a_tag_that_moved_since_its_push_is_refused_before_any_job(cloud: StandIn, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlatformError, match=rf"moved: it names sha256:e{{64}} in the registry, but {DIGEST} was "
                                            "pushed") as caught:
        platform_run(cloud, tmp_path, monkeypatch, remote_digest="sha256:" + "e" * 64, pushed=DIGEST)
    assert caught.value.exit_code == 7 and not cloud.jobs and not cloud.objects


def test_an_image_that_is_not_in_its_registry_is_named(cloud: StandIn, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlatformError, match=r"is not in its registry as one image: push it first \(inv push\)"):
        platform_run(cloud, tmp_path, monkeypatch, remote_digest=None)
    assert not cloud.jobs


def test_a_bad_job_timeout_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--job-timeout: 'soon' is not a number"):
        resolve(None, Flags(job_timeout="soon"), root=tmp_path)
    assert resolve(None, Flags(job_timeout="2.5"), root=tmp_path).platform.job_timeout == 150
    with pytest.raises(ConfigError, match="--on: 'cloud' is not one of local, modelarts"):
        resolve(None, Flags(on="cloud"), root=tmp_path)


def test_an_abnormal_job_fails_the_image_with_the_platforms_words(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)], final="Abnormal", exit_code=None,
                                             message="The node was lost", log="")
    report = verify(cloud)
    assert report is not None and not report.ok
    (run,) = report.runs
    assert run.job is not None and run.job.phase == "Abnormal"
    with pytest.raises(VerifyError, match="ended Abnormal, task worker-0 exit code None: The node was lost"):
        raise_for_reports([report])


@pytest.mark.parametrize("module", ["obs", "huaweicloudsdkmodelarts.v1"])
def test_a_missing_sdk_is_named_with_how_to_install_it(cloud: StandIn, monkeypatch: pytest.MonkeyPatch,
                                                       module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package imports as
    keys = platform.keys_from({"HUAWEICLOUD_SDK_AK": cloud.ak, "HUAWEICLOUD_SDK_SK": cloud.sk})
    with pytest.raises(PlatformError, match=r"needs Huawei Cloud's SDKs: pip install huaweicloudsdkmodelarts "
                                            r"esdk-obs-python") as caught:
        pipeline.sdk_cloud(keys, cloud.region, options(cloud))
    assert caught.value.exit_code == 7


# --------------------------------------------------------------------------------------------------------------
# A distributed job: node_count, the same start as the local workers, every worker's log


def worker_log(index: int, nodes: int = 2, *, rendezvous: bool = True) -> str:
    """What worker `index` of a CPU job prints: the single-node checks, then the distributed ones."""
    hosts = ",".join(f"job-worker-{k}.job" for k in range(nodes))
    checks = [{"name": "import-torch", "ok": True, "detail": "torch 2.13.0"},
              {"name": "distributed:available", "ok": True, "detail": "gloo (0.01 s)"},
              {"name": "distributed:master", "ok": True, "detail": "job-worker-0.job resolves (0.01 s)"},
              {"name": "distributed:rendezvous", "ok": rendezvous,
               "detail": ("gloo with master job-worker-0.job:6060 (0.50 s)" if rendezvous else
                          "could not rendezvous with job-worker-0.job:6060 within 60 s: no answer (63.00 s)")}]
    if rendezvous:
        checks += [{"name": f"distributed:{name}", "ok": True, "detail": f"{name} fine (0.{index + 1}0 s)"}
                   for name in ("all_reduce", "broadcast", "barrier")]
    result = result_dict(torch="2.13.0", torch_cuda=None, cudnn=None, cuda_available=False, device_count=0, devices=[],
                         device="cpu", python="3.11.9", ok=rendezvous, checks=checks,
                         environment={"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "MA_NUM_GPUS": "0",
                                      "MA_NUM_HOSTS": str(nodes), "VC_TASK_INDEX": str(index),
                                      "VC_WORKER_HOSTS": hosts})
    return log_with(result)


def two_nodes(**changes: Any) -> VerifyOptions:
    return dataclasses.replace(VerifyOptions(reports_dir=Path("unused"), nodes=2), **changes)


def test_a_distributed_job_takes_its_nodes_and_every_workers_log_is_judged(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)],
                                             logs={"worker-0": worker_log(0), "worker-1": worker_log(1)})
    said: list[str] = []
    report = verify(cloud, image=CPU_ENTRY, said=said, distributed=two_nodes())
    assert report is not None and report.ok, report and report.failure()
    (created,) = [call.json() for call in cloud.calls("create")]
    # the smallest CPU flavour takes one node only: the one that takes two
    assert created["spec"]["resource"] == {"flavor_id": "modelarts.vm.cpu.8u", "node_count": 2}
    assert created["algorithm"]["command"] == (
        "/home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py --procs-per-node 1 "
        "--master-port 6060 --rendezvous-timeout 60")
    assert sorted(call.path.split("/")[-3] for call in cloud.calls("logs")) == ["worker-0", "worker-1"]
    assert [(run.worker.index, run.worker.nodes) for run in report.runs if run.worker] == [(0, 2), (1, 2)]
    assert all(run.job is not None and run.job.job_id in cloud.jobs for run in report.runs)
    assert report.distributed() == {"cpu": "2 nodes × 1, gloo: all_reduce, broadcast, barrier ok (0.60 s)"}
    assert any("modelarts.vm.cpu.8u × 2 nodes" in line for line in said)


def test_a_worker_that_fails_on_the_platform_fails_the_image_naming_it(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(
        phases=[("Running", 1)], final="Failed", exit_codes={"worker-0": 0, "worker-1": 1},
        logs={"worker-0": worker_log(0), "worker-1": worker_log(1, rendezvous=False)})
    report = verify(cloud, image=CPU_ENTRY, distributed=two_nodes())
    assert report is not None and not report.ok
    message = report.failure() or ""
    assert "cpu worker 1/2/script:distributed:rendezvous: could not rendezvous with job-worker-0.job:6060" in message
    assert "cpu worker 1/2/exit-status" in message and "task worker-1 exit code 1" in message, message
    assert report.distributed()["cpu"].startswith("2 nodes × 1, gloo: FAIL, worker 0 job")


def test_torchrun_on_a_gpu_flavour_runs_a_process_per_gpu(cloud: StandIn) -> None:
    chosen = options(cloud, flavor="modelarts.vm.gpu.8v100")
    api, _ = pipeline.sdk_cloud(platform.keys_from({"HUAWEICLOUD_SDK_AK": cloud.ak, "HUAWEICLOUD_SDK_SK": cloud.sk}),
                                cloud.region, chosen)
    planned = platform.plan_jobs(target(), (Device.GPU,), api=api, options=chosen, region=cloud.region,
                                 script_dir=VERIFY_DIR, verify=two_nodes(launcher=Launcher.TORCHRUN, master_port=7070))
    (job,) = planned
    assert job.body["spec"]["resource"]["node_count"] == 2
    assert job.body["algorithm"]["command"] == (
        "/bin/sh ${MA_JOB_DIR}/code/launch-torchrun.sh /home/ma-user/miniconda3/bin/python 8 7070 --require-gpu "
        "--procs-per-node 8 --master-port 7070 --rendezvous-timeout 60")
    assert "launch-torchrun.sh" in [file.name for file in job.upload.files]


def test_a_flavour_that_takes_fewer_nodes_is_refused_before_any_job(cloud: StandIn) -> None:
    with pytest.raises(ConfigError, match=r"--flavor modelarts.vm.gpu.p4: takes at most 1 node\(s\)"):
        verify(cloud, flavor="modelarts.vm.gpu.p4", distributed=two_nodes())
    assert not cloud.calls("create")


def test_a_distributed_job_is_read_back_with_every_worker(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript(phases=[("Running", 1)],
                                             logs={"worker-0": worker_log(0), "worker-1": worker_log(1)})
    assert verify(cloud, image=CPU_ENTRY, detach=True, distributed=two_nodes()) is None
    (job_id,) = cloud.jobs
    report = verify(cloud, image=CPU_ENTRY, job=job_id)  # no --nodes: the job's own tasks say it
    assert report is not None and report.ok
    assert [run.worker.index for run in report.runs if run.worker] == [0, 1]
    assert report.distributed() == {"cpu": "2 nodes × 1, gloo: all_reduce, broadcast, barrier ok (0.60 s)"}
