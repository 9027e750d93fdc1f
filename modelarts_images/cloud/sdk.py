"""ModelArts and OBS through Huawei Cloud's own SDKs: huaweicloudsdkmodelarts (its ModelArtsClient holds the v2
training-job calls, though the package is named v1) and esdk-obs-python's ObsClient, the OBS client Huawei
documents. The SDKs sign every request (SDK-HMAC-SHA256 for ModelArts and IAM, OBS's own scheme); this module
never builds a signature itself, and is the only code that imports them.

Endpoints follow from the region (modelarts.<region>.myhuaweicloud.com, obs.<region>..., iam.<region>...) unless
set: Huawei Cloud Stack and partner clouds have hosts of their own. Without a project id the SDK finds the
region's project at IAM (GET /v3/projects?name=<region>), as its own lookup does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from modelarts_images.cloud.api import CloudError, Flavor, FlavorType, JobState, Keys, LogPreview, Phase, TaskStatus
from modelarts_images.errors import PlatformError

T = TypeVar("T")
_LIST = re.compile(r"^list\[(?P<item>.+)\]$")
_DICT = re.compile(r"^dict\((?P<key>\w+), (?P<value>\w+)\)$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (float, int),
                                            "object": (object,)}
MISSING_SDK = ("verification on ModelArts needs Huawei Cloud's SDKs: pip install huaweicloudsdkmodelarts "
               "esdk-obs-python (the project's set-up installs them: pip install -e '.[dev]')")


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    modelarts: str
    obs: str
    iam: str

    @classmethod
    def of(cls, region: str, *, modelarts: str | None = None, obs: str | None = None,
           iam: str | None = None) -> Endpoints:
        return cls(modelarts=modelarts or f"https://modelarts.{region}.myhuaweicloud.com",
                   obs=obs or f"https://obs.{region}.myhuaweicloud.com",
                   iam=iam or f"https://iam.{region}.myhuaweicloud.com")


def as_model(models: Any, type_name: str, value: Any, where: str) -> Any:
    """`value` (JSON) as the SDK model `type_name`; ValueError naming a key or a type the model does not have,
    so that a body the API would refuse is refused before it is sent."""
    if type_name in _PRIMITIVES:
        if not isinstance(value, _PRIMITIVES[type_name]) or (isinstance(value, bool) and type_name in ("int", "float")):
            raise ValueError(f"{where}: {value!r} is not {type_name}")
        return value
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            raise ValueError(f"{where}: not a list")
        return [as_model(models, match["item"], item, f"{where}[{index}]") for index, item in enumerate(value)]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: not a mapping")
        return {key: as_model(models, match["value"], item, f"{where}.{key}") for key, item in value.items()}
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not a mapping for {type_name}")
    by_json_key = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json_key))
    if unknown:
        raise ValueError(f"{where}: {type_name} has no field {', '.join(unknown)}")
    return model(**{by_json_key[key]: as_model(models, model.openapi_types[by_json_key[key]], item, f"{where}.{key}")
                    for key, item in value.items()})


def create_request(body: Mapping[str, Any]) -> Any:
    """The SDK's CreateTrainingJobRequest for a training-job body (trainingjob.training_job_body())."""
    from huaweicloudsdkmodelarts.v1 import model as models

    request_type = models.CreateTrainingJobRequest.openapi_types["body"]
    return models.CreateTrainingJobRequest(body=as_model(models, request_type, dict(body), "body"))


def _flavor(item: Any) -> Flavor:
    info = item.flavor_info
    cpu, gpu, npu, memory = (getattr(info, name, None) for name in ("cpu", "gpu", "npu", "memory"))
    accelerators, product = 0, ""
    for unit in (gpu, npu):
        if unit is not None and unit.unit_num:
            accelerators, product = int(unit.unit_num), str(unit.product_name or "")
    size = float(memory.size or 0) if memory is not None else 0.0
    if memory is not None and str(memory.unit or "").upper().startswith("M"):
        size /= 1024
    kind = FlavorType.read(str(item.flavor_type or ""))
    return Flavor(id=str(item.flavor_id), type=kind, arch=str(getattr(cpu, "arch", "") or ""),
                  cpus=int(getattr(cpu, "core_num", 0) or 0), memory_gib=size, accelerators=accelerators,
                  accelerator=product, max_nodes=int(item.max_num or info.max_num or 1))


def _state(response: Any) -> JobState:
    status = response.status
    statuses = tuple(TaskStatus(task=str(item.task), exit_code=item.exit_code, message=str(item.message or ""))
                     for item in (getattr(status, "task_statuses", None) or ()))
    duration = getattr(status, "duration", None)
    resource = getattr(getattr(response, "spec", None), "resource", None)
    return JobState(id=str(response.metadata.id), name=str(response.metadata.name or ""),
                    phase=Phase.read(str(getattr(status, "phase", "") or "")),
                    tasks=tuple(getattr(status, "tasks", None) or ()), task_statuses=statuses,
                    duration_s=None if duration is None else duration / 1000,
                    flavor=str(getattr(resource, "flavor_id", "") or ""),
                    command=str(getattr(getattr(response, "algorithm", None), "command", "") or ""))


class SdkModelArts:
    """cloud.api.ModelArts over huaweicloudsdkmodelarts' ModelArtsClient."""

    def __init__(self, keys: Keys, *, region: str, project_id: str | None, endpoints: Endpoints) -> None:
        try:
            from huaweicloudsdkcore.auth.credentials import BasicCredentials
            from huaweicloudsdkcore.http.http_config import HttpConfig
            from huaweicloudsdkcore.region.region import Region
            from huaweicloudsdkmodelarts.v1 import ModelArtsClient
        except ImportError as error:
            raise PlatformError(f"{MISSING_SDK} ({error})") from None
        credentials = BasicCredentials(keys.access_key, keys.secret_key, project_id).with_iam_endpoint(endpoints.iam)
        if keys.security_token:
            credentials = credentials.with_security_token(keys.security_token)
        config = HttpConfig.get_default_config()
        config.retry_times = 0  # the watch decides what is asked again
        config.timeout = (10, 60)
        self.region = region
        self._client = (ModelArtsClient.new_builder().with_credentials(credentials).with_http_config(config)
                        .with_region(Region(region, endpoints.modelarts)).build())

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        from huaweicloudsdkcore.exceptions import exceptions

        try:
            return call()
        except exceptions.ServiceResponseException as error:
            raise CloudError(str(error.error_msg or error), operation=operation, status=error.status_code,
                             code=str(error.error_code or "")) from None
        except exceptions.SdkException as error:  # no answer, a timeout, the project lookup
            raise CloudError(str(error.error_msg or error), operation=operation, status=None,
                             code=type(error).__name__) from None

    def flavors(self, kind: FlavorType) -> tuple[Flavor, ...]:
        from huaweicloudsdkmodelarts.v1 import model as models

        answer = self._call("list flavours", lambda: self._client.show_training_job_flavors(
            models.ShowTrainingJobFlavorsRequest(flavor_type=kind.value)))
        return tuple(_flavor(item) for item in (answer.flavors or ()))

    def create(self, body: Mapping[str, Any]) -> JobState:
        try:
            request = create_request(body)
        except ValueError as error:
            raise PlatformError(f"the training-job body does not fit the SDK's models: {error}") from None
        return _state(self._call("create the training job", lambda: self._client.create_training_job(request)))

    def job(self, job_id: str) -> JobState:
        from huaweicloudsdkmodelarts.v1 import model as models

        return _state(self._call("read the job's status", lambda: self._client.show_training_job_details(
            models.ShowTrainingJobDetailsRequest(training_job_id=job_id))))

    def stop(self, job_id: str) -> None:
        from huaweicloudsdkmodelarts.v1 import model as models

        self._call("stop the job", lambda: self._client.stop_training_job(models.StopTrainingJobRequest(
            training_job_id=job_id, body=models.JobActionType(action_type="terminate"))))

    def log_preview(self, job_id: str, task: str) -> LogPreview:
        from huaweicloudsdkmodelarts.v1 import model as models

        answer = self._call("read the log", lambda: self._client.show_training_job_logs_preview(
            models.ShowTrainingJobLogsPreviewRequest(training_job_id=job_id, task_id=task)))
        content = str(answer.content or "")
        return LogPreview(content=content, current_size=int(answer.current_size or len(content.encode())),
                          full_size=int(answer.full_size or len(content.encode())))


class SdkObs:
    """cloud.api.CodeStore over esdk-obs-python's ObsClient, path-style (bucket in the path: a custom endpoint
    such as a stand-in or a private cloud's OBS needs no per-bucket host name)."""

    def __init__(self, keys: Keys, *, endpoint: str) -> None:
        try:
            from obs import ObsClient
        except ImportError as error:
            raise PlatformError(f"{MISSING_SDK} ({error})") from None
        self._client = ObsClient(access_key_id=keys.access_key, secret_access_key=keys.secret_key,
                                 security_token=keys.security_token, server=endpoint, path_style=True,
                                 is_signature_negotiation=False, max_retry_count=2, timeout=60)

    @staticmethod
    def _checked(operation: str, answer: Any, *, absent_ok: bool = False) -> Any:
        if answer.status < 300:
            return answer
        if absent_ok and answer.status == 404:
            return None
        raise CloudError(str(answer.errorMessage or answer.reason or f"HTTP {answer.status}"), operation=operation,
                         status=int(answer.status), code=str(answer.errorCode or answer.status))

    def bucket_region(self, bucket: str) -> str:
        answer = self._checked("bucket location", self._client.getBucketLocation(bucket))
        return str(answer.body.location or "")

    def etag(self, bucket: str, key: str) -> str | None:
        answer = self._checked("object metadata", self._client.getObjectMetadata(bucket, key), absent_ok=True)
        return None if answer is None else str(answer.body.etag or "")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._checked("upload", self._client.putContent(bucket, key, content=data))
