"""The Huawei Cloud stand-in (tests/support/huawei_cloud.py) driven by the real clients: huaweicloudsdkmodelarts'
ModelArtsClient, huaweicloudsdkcore's IAM project lookup and esdk-obs-python's ObsClient. What the stand-in refuses
is what the platform refuses, so these pin both the stand-in and how each client must be built to reach it."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, SdkException, ServerResponseException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.region.region import Region
from huaweicloudsdkmodelarts.v1 import ModelArtsClient
from huaweicloudsdkmodelarts.v1 import model as models
from obs import ObsClient, PutObjectHeader

from tests.support.huawei_cloud import JobScript, StandIn

IMAGE_URL = "swr.cn-north-4.myhuaweicloud.com/deep-learning-demo/pytorch:2.1.0-cuda12.1"


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    # requests (under the ModelArts SDK) honours proxy variables; loopback must not go through one
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.delenv("HUAWEICLOUD_SDK_IAM_ENDPOINT", raising=False)
    with StandIn() as running:
        yield running


def modelarts(cloud: StandIn, credentials: Any = None, *, region: bool = False) -> Any:
    config = HttpConfig.get_default_config()
    config.timeout = (3, 10)  # a stand-in that hangs fails the test, not the whole run
    builder = ModelArtsClient.new_builder().with_http_config(config).with_credentials(
        credentials or BasicCredentials(cloud.ak, cloud.sk, cloud.project_id))
    if region:
        builder = builder.with_region(Region(cloud.region, cloud.endpoint))
    else:
        builder = builder.with_endpoint(cloud.endpoint)
    return builder.build()


def obs_client(cloud: StandIn, *, sk: str | None = None) -> Any:
    # max_retry_count=0: ObsClient would otherwise retry a 5xx three times, sleeping between tries
    return ObsClient(access_key_id=cloud.ak, secret_access_key=sk or cloud.sk, server=cloud.endpoint,
                     path_style=True, max_retry_count=0, timeout=10)


def job_body(**algorithm: Any) -> dict[str, Any]:
    """A body of the shape modelarts_images.publish.trainingjob builds: custom image, command, OBS code dir."""
    return {
        "kind": "job",
        "metadata": {"name": "verify-pytorch-2-1-0", "description": "Verify pytorch:2.1.0-cuda12.1"},
        "algorithm": {
            "code_dir": "obs://verify-bucket/verify/code/",
            "boot_file": "obs://verify-bucket/verify/code/pytorch-verification.py",
            "command": "python ${MA_JOB_DIR}/code/pytorch-verification.py",
            "engine": {"image_url": IMAGE_URL},
            "environments": {"PYTHONUNBUFFERED": "1"},
            **algorithm,
        },
        "spec": {"resource": {"flavor_id": "modelarts.vm.cpu.8u", "node_count": 1}},
    }


def to_model(data: Any, type_name: str) -> Any:
    """`data` (JSON as the API spells it) as the SDK's model `type_name`, recursively."""
    if type_name.startswith("list["):
        return [to_model(item, type_name[5:-1]) for item in data]
    if type_name.startswith("dict("):
        inner = type_name[type_name.index(",") + 2:-1]
        return {key: to_model(value, inner) for key, value in data.items()}
    klass = getattr(models, type_name, None)
    if klass is None or not isinstance(data, dict):
        return data
    unknown = set(data) - set(klass.attribute_map.values())
    assert not unknown, f"{type_name} has no {unknown}"
    return klass(**{attribute: to_model(data[name], klass.openapi_types[attribute])
                    for attribute, name in klass.attribute_map.items() if name in data})


def create(client: Any, body: Any) -> Any:
    return client.create_training_job(models.CreateTrainingJobRequest(body=body))


def show(client: Any, job_id: str) -> Any:
    return client.show_training_job_details(models.ShowTrainingJobDetailsRequest(training_job_id=job_id))


def stop(client: Any, job_id: str) -> Any:
    return client.stop_training_job(models.StopTrainingJobRequest(
        training_job_id=job_id, body=models.JobActionType(action_type="terminate")))


def refusal(call: Any, *args: Any) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as raised:
        call(*args)
    return raised.value


# -- ModelArts -------------------------------------------------------------------------------------------------


def test_flavors_are_listed_by_type(cloud: StandIn) -> None:
    client = modelarts(cloud)
    gpu = client.show_training_job_flavors(models.ShowTrainingJobFlavorsRequest(flavor_type="GPU"))
    assert gpu.total_count == 3 and {flavor.flavor_type for flavor in gpu.flavors} == {"GPU"}
    assert [flavor.flavor_info.gpu.unit_num for flavor in gpu.flavors] == [1, 1, 8]
    cpu = client.show_training_job_flavors(models.ShowTrainingJobFlavorsRequest(flavor_type="CPU"))
    small = next(flavor for flavor in cpu.flavors if flavor.flavor_id == "modelarts.vm.cpu.2u")
    assert (small.flavor_info.cpu.core_num, small.flavor_info.memory.size) == (2, 8)
    assert client.show_training_job_flavors(models.ShowTrainingJobFlavorsRequest()).total_count == 5
    cloud.flavors = cloud.flavors[:1]
    assert client.show_training_job_flavors(models.ShowTrainingJobFlavorsRequest()).total_count == 1
    record = cloud.calls("flavors")[0]
    assert record.query == {"flavor_type": "GPU"} and record.headers["x-project-id"] == cloud.project_id


def test_a_job_runs_to_completion_with_its_tasks_and_the_newest_part_of_its_log(cloud: StandIn) -> None:
    log = "".join(f"line {number}\n" for number in range(100))
    cloud.behaviour = lambda body: JobScript([("Creating", 1), ("Pending", 2), ("Running", 2)], log=log)
    cloud.preview_limit = 64
    client = modelarts(cloud)
    body = job_body()
    created = create(client, to_model(body, "Job"))
    assert created.status_code == 201 and created.status.phase == "Creating"
    job_id = created.metadata.id
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id) and cloud.jobs[job_id]["body"] == body
    phases = [show(client, job_id).status.phase for _ in range(7)]
    assert phases == ["Creating", "Pending", "Pending", "Running", "Running", "Completed", "Completed"]
    details = show(client, job_id)
    assert details.metadata.name == body["metadata"]["name"] and details.algorithm.engine.image_url == IMAGE_URL
    assert details.spec.resource.flavor_id == "modelarts.vm.cpu.8u" and details.status.tasks == ["worker-0"]
    assert [(task.task, task.exit_code) for task in details.status.task_statuses] == [("worker-0", 0)]
    assert details.status.start_time == int(cloud.jobs[job_id]["created_at"] * 1000)
    tasks = client.list_training_job_tasks(models.ListTrainingJobTasksRequest(training_job_id=job_id))
    assert [task.task for task in tasks.body] == ["worker-0"]
    preview = client.show_training_job_logs_preview(
        models.ShowTrainingJobLogsPreviewRequest(training_job_id=job_id, task_id="worker-0"))
    assert preview.content == log[-64:] and (preview.current_size, preview.full_size) == (64, len(log))
    gone = refusal(client.show_training_job_logs_preview,
                   models.ShowTrainingJobLogsPreviewRequest(training_job_id=job_id, task_id="worker-9"))
    assert (gone.status_code, gone.error_code) == (404, "ModelArts.0015")


def test_a_failed_job_reports_the_exit_code_and_message(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript([("Running", 1)], final="Failed", exit_code=3, message="no GPU")
    client = modelarts(cloud)
    job_id = create(client, job_body()).metadata.id
    show(client, job_id)
    status = show(client, job_id).status
    assert status.phase == "Failed" and status.secondary_phase == "Failed"
    assert [(task.exit_code, task.message) for task in status.task_statuses] == [(3, "no GPU")]


def test_a_running_job_is_stopped_and_a_completed_one_is_not(cloud: StandIn) -> None:
    cloud.behaviour = lambda body: JobScript([("Creating", 1), ("Running", 100)])
    client = modelarts(cloud)
    job_id = create(client, job_body()).metadata.id
    while show(client, job_id).status.phase != "Running":
        pass
    stopped = stop(client, job_id)
    assert stopped.status_code == 202 and stopped.status.phase == "Terminated"
    assert cloud.jobs[job_id]["stopped"] is True and show(client, job_id).status.phase == "Terminated"
    assert cloud.calls("stop")[0].json() == {"action_type": "terminate"}
    again = refusal(stop, client, job_id)
    assert again.status_code == 400 and "Terminated" in again.error_msg

    cloud.behaviour = lambda body: JobScript([])
    done = create(client, job_body()).metadata.id
    assert show(client, done).status.phase == "Completed"
    refused = refusal(stop, client, done)
    assert refused.status_code == 400 and refused.error_code.startswith("ModelArts.")
    assert cloud.jobs[done]["stopped"] is False


def test_an_unknown_job_or_project_is_not_found(cloud: StandIn) -> None:
    unknown = refusal(show, modelarts(cloud), "0b6a4a8e-0000-4000-8000-000000000000")
    assert (unknown.status_code, unknown.error_code) == (404, "ModelArts.0015")
    other = modelarts(cloud, BasicCredentials(cloud.ak, cloud.sk, "0" * 32))
    wrong = refusal(other.show_training_job_flavors, models.ShowTrainingJobFlavorsRequest())
    assert (wrong.status_code, wrong.error_code) == (404, "ModelArts.0015")


def test_a_wrong_key_or_a_stale_date_is_refused_by_the_gateway(cloud: StandIn) -> None:
    request = models.ShowTrainingJobFlavorsRequest()
    for credentials in (BasicCredentials(cloud.ak, "x" * 40, cloud.project_id),
                        BasicCredentials("AKNOTKNOWN0000000000", cloud.sk, cloud.project_id)):
        refused = refusal(modelarts(cloud, credentials).show_training_job_flavors, request)
        assert (refused.status_code, refused.error_code) == (401, "APIGW.0301")
        assert refused.error_msg.startswith("Incorrect IAM authentication information: ")
    stale = modelarts(cloud)
    stale.preset_headers = {"X-Sdk-Date": "20200101T000000Z"}  # the signer signs with a date it is given
    assert refusal(stale.show_training_job_flavors, request).error_code == "APIGW.0301"
    assert [record.status for record in cloud.calls("flavors")] == [401, 401, 401]


def test_a_security_token_must_be_the_one_issued(cloud: StandIn) -> None:
    request = models.ShowTrainingJobFlavorsRequest()
    temporary = BasicCredentials(cloud.ak, cloud.sk, cloud.project_id).with_security_token("issued-token")
    assert refusal(modelarts(cloud, temporary).show_training_job_flavors, request).status_code == 401
    cloud.security_token = "issued-token"
    assert modelarts(cloud, temporary).show_training_job_flavors(request).total_count == 5
    assert cloud.calls("flavors")[-1].headers["x-security-token"] == "issued-token"


def test_an_unknown_field_is_refused_naming_it(cloud: StandIn) -> None:
    body = job_body()
    body["spec"]["resource"]["flavour_id"] = body["spec"]["resource"].pop("flavor_id")
    refused = refusal(create, modelarts(cloud), body)  # a dict goes out as it is; the models would drop the field
    assert (refused.status_code, refused.error_code) == (400, "ModelArts.0101")
    assert "spec.resource.flavour_id" in refused.error_msg and not cloud.jobs


@pytest.mark.parametrize(("change", "code", "named"), [
    (lambda body: body["metadata"].update(name="verify pytorch"), "ModelArts.0101", "metadata.name"),
    (lambda body: body["metadata"].update(name="v" * 65), "ModelArts.0101", "metadata.name"),
    (lambda body: body["algorithm"]["engine"].update(engine_id="pytorch-2.1"), "ModelArts.0101", "engine_id"),
    (lambda body: body["algorithm"]["environments"].update({"1ST": "x"}), "ModelArts.0101", "1ST"),
    (lambda body: body["algorithm"]["environments"].update({"A-B": "x"}), "ModelArts.0101", "A-B"),
    (lambda body: body["algorithm"].update(boot_file="obs://elsewhere/run.py"), "ModelArts.0101", "boot_file"),
    (lambda body: body["algorithm"].update(local_code_dir="/home/ma-user/modelarts/x"), "ModelArts.0101",
     "local_code_dir"),
    (lambda body: body["spec"]["resource"].pop("flavor_id"), "ModelArts.0101", "flavor_id"),
    (lambda body: body["spec"]["resource"].update(flavor_id="modelarts.vm.gpu.a100"), "ModelArts.2763",
     "modelarts.vm.gpu.a100"),
    (lambda body: body["spec"]["resource"].update(node_count="1"), "ModelArts.0101", "spec.resource.node_count"),
    (lambda body: body["spec"]["resource"].update(node_count=2, flavor_id="modelarts.vm.cpu.2u"),
     "ModelArts.0101", "node_count"),
    (lambda body: body["algorithm"].update(environments=["A=1"]), "ModelArts.0101", "algorithm.environments"),
])
def test_what_the_api_documents_is_refused(cloud: StandIn, change: Any, code: str, named: str) -> None:
    body = job_body()
    change(body)
    refused = refusal(create, modelarts(cloud), body)
    assert (refused.status_code, refused.error_code) == (400, code) and named in refused.error_msg


def test_an_injected_503_is_answered_once(cloud: StandIn) -> None:
    client = modelarts(cloud)
    job_id = create(client, job_body()).metadata.id
    cloud.fail("show", status=503, error_code="ModelArts.0002", error_msg="Service unavailable")
    with pytest.raises(ServerResponseException) as raised:
        show(client, job_id)
    assert (raised.value.status_code, raised.value.error_code) == (503, "ModelArts.0002")
    assert show(client, job_id).status.phase == "Creating"  # the refused poll did not count
    assert [record.status for record in cloud.calls("show")] == [503, 200]


@pytest.mark.parametrize("through", ["credentials", "environment"])
def test_the_sdk_finds_the_project_through_iam(cloud: StandIn, monkeypatch: pytest.MonkeyPatch,
                                               through: str) -> None:
    credentials = BasicCredentials(cloud.ak, cloud.sk)
    if through == "credentials":
        credentials.with_iam_endpoint(cloud.endpoint)
    else:
        monkeypatch.setenv("HUAWEICLOUD_SDK_IAM_ENDPOINT", cloud.endpoint)
    client = modelarts(cloud, credentials, region=True)
    assert client.show_training_job_flavors(models.ShowTrainingJobFlavorsRequest()).total_count == 5
    (lookup,) = cloud.calls("iam")
    assert lookup.path == "/v3/projects" and lookup.query == {"name": cloud.region} and lookup.status == 200
    assert cloud.calls("flavors")[0].path == f"/v2/{cloud.project_id}/training-job-flavors"


def test_a_failing_project_lookup_stops_the_build(cloud: StandIn) -> None:
    cloud.fail("iam", status=500, error_code="IAM.0001", error_msg="internal error")
    with pytest.raises(SdkException, match="Failed to get project id"):
        modelarts(cloud, BasicCredentials(cloud.ak, cloud.sk).with_iam_endpoint(cloud.endpoint), region=True)


# -- OBS -------------------------------------------------------------------------------------------------------


def test_objects_are_stored_and_read_back(cloud: StandIn, tmp_path: Path) -> None:
    client = obs_client(cloud)
    try:
        content = b"print('verify')\n"
        put = client.putContent("verify-bucket", "verify/code/run me.py", content)
        assert put.status == 200 and cloud.objects[("verify-bucket", "verify/code/run me.py")] == content
        script = tmp_path / "pytorch-verification.py"
        script.write_bytes(b"import torch\n" * 1000)
        assert client.putFile("verify-bucket", "verify/code/pytorch-verification.py", str(script)).status == 200
        assert cloud.objects[("verify-bucket", "verify/code/pytorch-verification.py")] == script.read_bytes()
        meta = client.getObjectMetadata("verify-bucket", "verify/code/run me.py")
        assert meta.status == 200 and meta.body.etag == f'"{hashlib.md5(content).hexdigest()}"'
        assert meta.body.contentLength == len(content)
        got = client.getObject("verify-bucket", "verify/code/run me.py", loadStreamInMemory=True)
        assert got.status == 200 and got.body.buffer == content
        missing = client.getObjectMetadata("verify-bucket", "verify/code/absent.py")
        assert missing.status == 404
        record = cloud.calls("put_object")[0]
        assert record.headers["authorization"].startswith(f"AWS {cloud.ak}:")  # path style: V2, x-amz- headers
    finally:
        client.close()


def test_content_md5_is_checked(cloud: StandIn) -> None:
    client = obs_client(cloud)
    try:
        right = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
        assert client.putContent("verify-bucket", "k", "abc", headers=PutObjectHeader(md5=right)).status == 200
        wrong = base64.b64encode(hashlib.md5(b"abd").digest()).decode()
        refused = client.putContent("verify-bucket", "k2", "abc", headers=PutObjectHeader(md5=wrong))
        assert (refused.status, refused.errorCode) == (400, "BadDigest")
        assert ("verify-bucket", "k2") not in cloud.objects
    finally:
        client.close()


def test_a_wrong_key_or_an_unknown_bucket_is_refused(cloud: StandIn) -> None:
    bad = obs_client(cloud, sk="x" * 40)
    client = obs_client(cloud)
    try:
        refused = bad.putContent("verify-bucket", "k", "x")
        assert (refused.status, refused.errorCode) == (403, "SignatureDoesNotMatch") and not cloud.objects
        absent = client.putContent("no-such-bucket", "k", "x")
        assert (absent.status, absent.errorCode) == (404, "NoSuchBucket")
        assert client.headBucket("no-such-bucket").status == 404
        assert client.getBucketLocation("no-such-bucket").errorCode == "NoSuchBucket"
    finally:
        bad.close()
        client.close()


def test_a_bucket_tells_its_region(cloud: StandIn) -> None:
    cloud.buckets["other-bucket"] = "ap-southeast-1"
    client = obs_client(cloud)
    try:
        assert client.headBucket("verify-bucket").status == 200
        location = client.getBucketLocation("other-bucket")
        assert location.status == 200 and location.body.location == "ap-southeast-1"
        assert cloud.calls("bucket_location")[0].query == {"location": ""}
    finally:
        client.close()


def test_an_injected_obs_failure_is_answered_as_obs_does(cloud: StandIn) -> None:
    cloud.fail("head_object", status=403, error_code="AccessDenied", error_msg="Access Denied", times=2)
    client = obs_client(cloud)
    try:
        assert client.putContent("verify-bucket", "k", "x").status == 200
        assert [client.getObjectMetadata("verify-bucket", "k").status for _ in range(3)] == [403, 403, 200]
    finally:
        client.close()
