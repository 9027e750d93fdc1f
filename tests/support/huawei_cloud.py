"""A loopback stand-in for Huawei Cloud: ModelArts' v2 training-job API, IAM's project lookup and OBS, on one port.

    with StandIn() as cloud:
        cloud.behaviour = lambda body: JobScript([("Creating", 1), ("Running", 2)], final="Failed", exit_code=3)
        ...                                   # point the real SDK clients at cloud.endpoint (below)
        assert cloud.calls("create")[0].json()["metadata"]["name"] == "verify-x"

It checks what the platform checks, so a client that is wrong fails here as it would on the cloud:
- ModelArts and IAM (paths /v2/... and /v3/...): the API gateway's SDK-HMAC-SHA256 signature, recomputed from the
  request as received, exactly as huaweicloudsdkcore's signer builds it (X-Sdk-Date within 15 minutes; host and
  x-sdk-date among the signed headers; canonical URI with a trailing '/', sorted query, hex SHA-256 of the body or
  the X-Sdk-Content-Sha256 value); X-Project-Id must match the path's project; X-Security-Token must equal
  `security_token`. Refusals: 401 {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication
  information: ..."}; a path no API has: 404 APIGW.0101.
- The create body is read into the SDK's own request models (huaweicloudsdkmodelarts.v1.model.Job, recursively by
  attribute_map / openapi_types): an unknown field or a wrong type is refused naming the field, and so is what the
  API documents: metadata.name, description length, more than one of engine_id / engine_name / image_url,
  code_dir without boot_file (or a boot_file outside code_dir), a reserved local_code_dir, environment names,
  a missing flavor_id (unless a pool is named), a flavor not in `flavors`, node_count above the flavor's max_num.
- OBS (any other path; path style, /bucket/key): the V2 signature `Authorization: AWS <AK>:<base64 HMAC-SHA1>`
  (x-amz- headers; also `OBS <AK>:...` with x-obs- headers), string-to-sign as OBS computes it: VERB, Content-MD5,
  Content-Type, Date (empty when x-amz-date / x-obs-date is sent), the prefixed headers sorted, the resource with
  its sub-resources (?location, ?uploadId=...). Refusals are OBS's XML errors: 403 SignatureDoesNotMatch,
  InvalidAccessKeyId, RequestTimeTooSkewed, AccessDenied; 400 BadDigest / InvalidDigest for Content-MD5; 404
  NoSuchBucket / NoSuchKey.

Pointing the clients at it (all tested in tests/unit/test_huawei_cloud_standin.py). requests (under the ModelArts
SDK) honours proxy variables, so set no_proxy=127.0.0.1 (monkeypatch.setenv) first:

    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.region.region import Region
    from huaweicloudsdkmodelarts.v1 import ModelArtsClient
    client = (ModelArtsClient.new_builder().with_credentials(BasicCredentials(cloud.ak, cloud.sk, cloud.project_id))
              .with_endpoint(cloud.endpoint).build())                 # an http:// endpoint stays plain http
    # no project id: only a Region makes the SDK look it up (with_endpoint alone leaves "{project_id}" in the
    # path); IAM is asked at credentials.iam_endpoint, else $HUAWEICLOUD_SDK_IAM_ENDPOINT, else the real IAM
    client = (ModelArtsClient.new_builder()
              .with_credentials(BasicCredentials(cloud.ak, cloud.sk).with_iam_endpoint(cloud.endpoint))
              .with_region(Region(cloud.region, cloud.endpoint)).build())

    from obs import ObsClient
    obs = ObsClient(access_key_id=cloud.ak, secret_access_key=cloud.sk, server=cloud.endpoint)
    # "http://" makes it plain http and the port comes from the URL; an IP-address server forces path style
    # (path_style=True says so explicitly), and path style turns signature "obs" into "v2" and switches off
    # the signature negotiation, so ObsClient signs "AWS AK:..." with x-amz- headers here.

The SDK retries nothing by default except GET/HEAD answers of 429 (urllib3 Retry(total=0)): such a 429 surfaces as
ClientRequestException(429) with error_code "429", not the body's code. ObsClient retries a 5xx (and connection
errors) up to max_retry_count (3) times, sleeping 0.2 s, 0.4 s, 0.8 s.

Each response closes its connection (HTTP/1.0) and every response carries Content-Length, so nothing idles at
shutdown; the server's handler threads are joined when the `with` block ends.

Jobs that run for real. By default a job only plays its JobScript, one phase per status poll. After

    cloud.run_jobs_with(docker_client, {"127.0.0.1:5000": ("user", "password")})   # registry host -> login

every job created runs as the platform runs it, on a thread of its own, with the docker SDK client given:
- Creating, then Pending while it pulls algorithm.engine.image_url with that host's login (none: anonymous; the
  platform pulls with the account's rights) and fetches its code, the stand-in's own objects under
  algorithm.code_dir, into a temporary directory (removed afterwards);
- Running while a container runs the boot command: user `user` (1000:100, the images' training uid), the
  platform's MA_* and VC_* variables (MA_NUM_GPUS from the flavour: 0 on a CPU one) plus
  algorithm.environments, the code read-only at ${MA_JOB_DIR}/<last level of code_dir>, working directory
  /home/ma-user, no network; algorithm.command with the job's variables ($NAME, ${NAME}) expanded, split as a
  shell would split it but run without one: its first word is the entrypoint, the rest its arguments;
- Completed when the container exits 0, else Failed (the task's exit_code, "Command exited with code N"); a pull
  or code download that fails ends the job Failed with the platform's kind of message and no exit code;
- a stop (terminate) kills the container and leaves the job Terminated; the container is removed in every case.
The log preview serves the container's stdout and stderr as the engine combined them. Everything a job did is in
`cloud.runs[job_id]` (JobRun: the reference and login pulled, the code fetched, and the container's argv, user,
environment, mounts and network as the engine reports them, its exit code and log). `close()` stops what still
runs and waits for each job's thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import shlex
import shutil
import string
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

from huaweicloudsdkmodelarts.v1 import model as sdk_models

# Error codes. From the ModelArts API reference's error-code table (modelarts_03_0095, "Error Codes"):
INVALID_ARGUMENT = "ModelArts.0101"  # 400 "Invalid Argument."
NOT_FOUND = "ModelArts.0015"  # 404 "The resource you requested is not exist"
# From the ModelArts troubleshooting page modelarts_13_0159, "Error ModelArts.2763 Occurred During Training Job
# Creation": the selected flavor (instance) is invalid.
INVALID_FLAVOR = "ModelArts.2763"
# No page found documents the refusal to terminate a job that is no longer running: invented, in the same style.
NOT_TERMINABLE = "ModelArts.0001"
# The API gateway's (APIG's) codes, as Huawei Cloud's gateway answers them.
APIGW_AUTH = "APIGW.0301"  # 401 "Incorrect IAM authentication information: ..."
APIGW_NO_API = "APIGW.0101"  # 404 "The API does not exist or has not been published in the environment"

MAX_CLOCK_SKEW = timedelta(minutes=15)
DEFAULT_BUCKET = "verify-bucket"
DEFAULT_REGION = "cn-north-4"
OPERATIONS = ("create", "show", "stop", "flavors", "tasks", "logs", "iam",
              "put_object", "head_object", "get_object", "head_bucket", "bucket_location")
ACTIVE_PHASES = ("Creating", "Pending", "Running")
FINAL_PHASES = ("Completed", "Failed", "Abnormal")
# status.secondary_phase as the Status model documents it (internal detail; the platform warns not to rely on it)
_SECONDARY = {"Creating": "Creating", "Pending": "Queuing", "Running": "Running", "Completed": "Completed",
              "Failed": "Failed", "Abnormal": "Lost", "Terminated": "Terminated"}
_JOB_KINDS = ("job", "federated_pool_job", "edge_job", "hetero_job", "mrs_job", "autosearch_job", "diag_job",
              "visualization_job")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_CODE_DIRS = ("/home/ma-user/modelarts", "/home/ma-user/modelarts-dev", "/home/ma-user/infer")
# What the platform gives a training container (ModelArts' training-job pages, "Environment variables"): written
# out here rather than taken from modelarts_images.contract, so that the stand-in plays the platform, not the tool.
TRAINING_USER = "1000:100"  # ma-user in ma-group: the uid and gid custom training images are built for
_HOME = "/home/ma-user"
_JOB_DIR = f"{_HOME}/modelarts/user-job-dir"
_WORKER = "modelarts-job-worker-0"
_CONTAINER_LABEL = "modelarts-images.stand-in-job"
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_SDK_DATE = "%Y%m%dT%H%M%SZ"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_APIG_AUTH = re.compile(r"SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=(\S+)")
_OBS_AUTH = re.compile(r"(AWS|OBS) ([^:\s]+):(\S+)")
# Query parameters OBS signs as sub-resources (the rest of the query is left out of the string-to-sign).
_SUB_RESOURCES = frozenset((
    "acl", "backtosource", "policy", "torrent", "logging", "location", "storageinfo", "quota", "storageclass",
    "storagepolicy", "requestpayment", "versions", "versioning", "versionid", "uploads", "uploadid", "partnumber",
    "website", "notification", "dispolicy", "lifecycle", "deletebucket", "delete", "cors", "restore", "tagging",
    "replication", "metadata", "encryption", "publicaccessblock", "bucketstatus", "policystatus", "inventory",
    "obscompresspolicy", "object-lock", "retention", "directcoldaccess", "append", "position", "truncate",
    "modify", "rename", "length", "name", "fileinterface", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition", "response-content-encoding",
    "x-image-save-bucket", "x-image-save-object", "x-image-process", "x-oss-process", "obsbucketalias", "obsalias",
))
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"/v2/(?P<project>[^/]+)/training-jobs"), "create"),
    ("GET", re.compile(r"/v2/(?P<project>[^/]+)/training-jobs/(?P<job>[^/]+)"), "show"),
    ("POST", re.compile(r"/v2/(?P<project>[^/]+)/training-jobs/(?P<job>[^/]+)/actions"), "stop"),
    ("GET", re.compile(r"/v2/(?P<project>[^/]+)/training-job-flavors"), "flavors"),
    ("GET", re.compile(r"/v2/(?P<project>[^/]+)/training-jobs/(?P<job>[^/]+)/tasks"), "tasks"),
    ("GET", re.compile(r"/v2/(?P<project>[^/]+)/training-jobs/(?P<job>[^/]+)/tasks/(?P<task>[^/]+)/logs/preview"),
     "logs"),
    ("GET", re.compile(r"/v3/projects"), "iam"),
)


@dataclass
class JobScript:
    """How a created job behaves; StandIn.behaviour(body) picks one per job."""

    phases: list[tuple[str, int]]  # (phase, how many ShowTrainingJobDetails polls it lasts)
    final: str = "Completed"  # after the listed phases: Completed, Failed or Abnormal (Terminated only via stop)
    exit_code: int | None = 0  # each task's exit code once final
    message: str = ""  # each task's message once final
    log: str = ""  # the whole log of each task; the preview serves only its newest `preview_limit` bytes
    # worker-0 ... worker-<node_count - 1>, as the platform names a job's tasks, unless given
    tasks: tuple[str, ...] | None = None
    logs: dict[str, str] = field(default_factory=dict)  # a task's own log, in place of `log`
    exit_codes: dict[str, int | None] = field(default_factory=dict)  # a task's own exit code

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.tasks or ("worker-0",)


@dataclass(frozen=True, kw_only=True)
class Recorded:
    """One request as the stand-in saw it, with the status it answered."""

    method: str
    path: str  # as received, still percent-encoded
    query: dict[str, str]  # decoded; the last value of a repeated name
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int
    service: str  # "modelarts", "iam" or "obs"
    operation: str  # one of OPERATIONS, or "unknown"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class JobRun:
    """What a job did when jobs run for real (StandIn.run_jobs_with); filled in as it goes."""

    job_id: str
    image: str  # algorithm.engine.image_url, the reference pulled
    phases: list[str] = field(default_factory=lambda: ["Creating"])
    login: str | None = None  # the registry user the pull logged in as; None: anonymous
    pulled_id: str | None = None  # the image id the pull gave
    pulled_digests: tuple[str, ...] = ()  # its RepoDigests
    code: dict[str, bytes] = field(default_factory=dict)  # name under code_dir -> content, as fetched from OBS
    container_id: str | None = None
    # the container as the engine reports it (docker inspect): the process and how it was started
    argv: tuple[str, ...] = ()  # Path, then Args
    user: str = ""
    environment: dict[str, str] = field(default_factory=dict)  # Config.Env: the image's ENV included
    working_dir: str = ""
    hostname: str = ""
    network_mode: str = ""
    mounts: tuple[dict[str, Any], ...] = ()
    exit_code: int | None = None
    log: bytes = b""  # stdout and stderr as the engine combined them
    message: str = ""  # the task's message once the job ended
    removed: bool = False  # the container and the code's directory are gone


@dataclass
class _Runner:
    client: Any  # a docker SDK DockerClient
    logins: dict[str, tuple[str, str]]
    user: str


@dataclass
class _Live:
    record: JobRun
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    started: bool = False  # reached Running: the log preview has something to show


def default_behaviour(body: dict[str, Any]) -> JobScript:
    return JobScript(phases=[("Creating", 1), ("Pending", 1), ("Running", 1)], log="ok\n")


def default_flavors() -> list[dict[str, Any]]:
    """Public training flavors shaped as ShowTrainingJobFlavors returns them (FlavorResponseWithSupport)."""
    return [
        _flavor("modelarts.vm.cpu.2u", "Computing CPU(2U) instance", "CPU", cores=2, memory=8, max_num=1),
        _flavor("modelarts.vm.cpu.8u", "Computing CPU(8U) instance", "CPU", cores=8, memory=32, max_num=16),
        _flavor("modelarts.vm.gpu.p4", "Computing GPU(P4) instance", "GPU", cores=8, memory=32, max_num=1,
                gpu=(1, "NVIDIA-P4", "8GB")),
        _flavor("modelarts.vm.gpu.v100", "Computing GPU(V100) instance", "GPU", cores=8, memory=64, max_num=16,
                gpu=(1, "NVIDIA-V100", "32GB")),
        _flavor("modelarts.vm.gpu.8v100", "Computing GPU(8*V100) instance", "GPU", cores=64, memory=512,
                max_num=16, gpu=(8, "NVIDIA-V100", "32GB")),
    ]


def _flavor(flavor_id: str, name: str, kind: str, *, cores: int, memory: int, max_num: int,
            gpu: tuple[int, str, str] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "max_num": max_num,
        "cpu": {"arch": "x86_64", "core_num": cores},
        "memory": {"size": memory, "unit": "GB"},
        "disk": {"size": 50 if gpu is None else 780, "unit": "GB"},
    }
    if gpu is not None:
        info["gpu"] = {"unit_num": gpu[0], "product_name": gpu[1], "memory": gpu[2]}
    return {"flavor_id": flavor_id, "flavor_name": name, "flavor_type": kind, "max_num": max_num,
            "billing": {"code": flavor_id, "unit_num": 1}, "flavor_info": info, "attributes": {}}


@dataclass
class _Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _RefusedError(Exception):
    """Ends a request early with an answer (a refusal)."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass(frozen=True)
class _Failure:
    status: int
    error_code: str
    error_msg: str


@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # raw, percent-encoded
    query: str  # raw
    headers: dict[str, str]
    body: bytes

    def pairs(self) -> list[tuple[str, str | None]]:
        """The query's name/value pairs, decoded; None where a name came without '=' (OBS signs the two apart)."""
        pairs: list[tuple[str, str | None]] = []
        for part in self.query.split("&"):
            if part:
                name, equals, value = part.partition("=")
                pairs.append((unquote(name), unquote(value) if equals else None))
        return pairs


class StandIn:
    """The stand-in and its state; use as a context manager. Attributes may be changed while it runs."""

    def __init__(self, *, ak: str | None = None, sk: str | None = None, project_id: str | None = None,
                 region: str = DEFAULT_REGION) -> None:
        alphabet = string.ascii_uppercase + string.digits
        self.ak = ak or "".join(secrets.choice(alphabet) for _ in range(20))  # IAM's AKs: 20 of A-Z0-9
        self.sk = sk or "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
        self.project_id = project_id or uuid.uuid4().hex
        self.region = region
        self.domain_id = uuid.uuid4().hex
        self.security_token: str | None = None
        self.flavors: list[dict[str, Any]] = default_flavors()
        self.preview_limit = 5 * 2**20
        self.behaviour: Callable[[dict[str, Any]], JobScript] = default_behaviour
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.objects: dict[tuple[str, str], bytes] = {}
        self.runs: dict[str, JobRun] = {}  # what each job did, when jobs run for real
        self.buckets: dict[str, str] = {DEFAULT_BUCKET: region}
        self._object_types: dict[tuple[str, str], str] = {}
        self._object_times: dict[tuple[str, str], float] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._lock = threading.RLock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._runner: _Runner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the stand-in is not running: use it as `with StandIn() as cloud:`")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.stand_in = self
        # A short poll interval: shutdown() waits for the next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name="huawei-cloud-stand-in",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            running = [job["live"] for job in self.jobs.values() if job.get("live") is not None]
        for live in running:
            live.stop.set()  # nothing may outlive the `with` block: a container still running is killed
        for live in running:
            if live.thread is not None:
                live.thread.join(timeout=120)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()  # joins the handler threads
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- test controls -----------------------------------------------------------------------------------------

    def fail(self, operation: str, *, status: int, error_code: str, error_msg: str, times: int = 1) -> None:
        """Answer the next `times` calls of `operation` (authenticated ones) with this error, in the platform's
        shape: {"error_code", "error_msg"} for ModelArts and IAM, the XML <Error> for OBS."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
        with self._lock:
            self._failures.setdefault(operation, deque()).extend(
                [_Failure(status, error_code, error_msg)] * times)

    def run_jobs_with(self, client: Any, registry_auth: Mapping[str, tuple[str, str]] | None = None, *,
                      user: str = TRAINING_USER) -> None:
        """From now on each created job really runs, with this docker SDK client (see the module doc);
        `registry_auth` maps a registry host to the (user, password) the pull logs in with."""
        with self._lock:
            self._runner = _Runner(client=client, logins=dict(registry_auth or {}), user=user)

    def calls(self, operation: str) -> list[Recorded]:
        with self._lock:
            return [record for record in self.requests if record.operation == operation]

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _dispatch(self, request: _Request) -> _Reply:
        if request.path.startswith("/v2/"):
            service = "modelarts"
        elif request.path.startswith("/v3/"):
            service = "iam"
        else:
            service = "obs"
        with self._lock:
            operation = "unknown"
            try:
                if service == "obs":
                    operation = _obs_operation(request)
                    reply = self._obs(request, operation)
                else:
                    operation, params = _route(request)
                    reply = self._api(request, operation, params)
            except _RefusedError as refused:
                reply = refused.reply
            self.requests.append(Recorded(
                method=request.method, path=request.path, query={k: v or "" for k, v in request.pairs()},
                headers=dict(request.headers), body=request.body, status=reply.status, service=service,
                operation=operation))
        return reply

    def _injected(self, operation: str) -> _Failure | None:
        queue = self._failures.get(operation)
        return queue.popleft() if queue else None

    # -- ModelArts and IAM -------------------------------------------------------------------------------------

    def _api(self, request: _Request, operation: str, params: dict[str, str]) -> _Reply:
        self._check_apig_signature(request, params.get("project"))
        failure = self._injected(operation)
        if failure is not None:
            return _json_error(failure.status, failure.error_code, failure.error_msg)
        if operation == "iam":
            return self._iam(request)
        if params["project"] != self.project_id:
            raise _refuse(404, NOT_FOUND, f"The resource you requested is not exist: project {params['project']}")
        if operation == "create":
            return self._create(request)
        if operation == "flavors":
            return self._list_flavors(request)
        job_id = params["job"]
        job = self.jobs.get(job_id)
        if job is None:
            raise _refuse(404, NOT_FOUND, f"The resource you requested is not exist: training job {job_id}")
        if operation == "show":
            if not job["stopped"] and job.get("live") is None:  # a live job's thread sets its phase
                job["polls"] += 1
                job["phase"] = _phase_after(job["script"], job["polls"])
            return _json(200, self._job_view(job_id, job))
        if operation == "stop":
            return self._stop(request, job_id, job)
        if operation == "tasks":
            return _json(200, [{"task": task, "ip": f"192.168.0.{10 + index}", "host_ip": f"10.0.0.{10 + index}",
                                "schedule_count": 0} for index, task in enumerate(job["script"].task_names)])
        return self._log_preview(job, params["task"])

    def _check_apig_signature(self, request: _Request, path_project: str | None) -> None:
        """The API gateway's check of an AK/SK request, as huaweicloudsdkcore.signer.Signer signs it."""
        authorization = request.headers.get("authorization")
        if not authorization:
            raise _apigw_refusal("Authorization not found in request")
        match = _APIG_AUTH.fullmatch(authorization.strip())
        if match is None:
            raise _apigw_refusal("unsupported or malformed Authorization (SDK-HMAC-SHA256 expected)")
        access, signed, signature = match.groups()
        if access != self.ak:
            raise _apigw_refusal("ak not exist")
        signed_headers = signed.split(";")
        if "host" not in signed_headers or "x-sdk-date" not in signed_headers:
            raise _apigw_refusal("host and x-sdk-date must be signed")
        sdk_date = request.headers.get("x-sdk-date", "")
        try:
            signed_at = datetime.strptime(sdk_date, _SDK_DATE).replace(tzinfo=timezone.utc)
        except ValueError:
            raise _apigw_refusal("x-sdk-date is missing or malformed") from None
        if abs(datetime.now(timezone.utc) - signed_at) > MAX_CLOCK_SKEW:
            raise _apigw_refusal("the request time (x-sdk-date) is more than 15 minutes off")
        lines = []
        for name in signed_headers:
            if name not in request.headers:
                raise _apigw_refusal(f"signed header {name} is missing")
            lines.append(f"{name}:{_utf8(request.headers[name]).strip()}")
        if not request.body:
            payload = _EMPTY_SHA256
        else:
            payload = request.headers.get("x-sdk-content-sha256") or hashlib.sha256(request.body).hexdigest()
        canonical = "\n".join([request.method.upper(), _canonical_uri(request.path), _canonical_query(request),
                               "\n".join(lines) + "\n", signed, payload])
        to_sign = f"SDK-HMAC-SHA256\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(self.sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise _apigw_refusal("verify aksk signature fail")
        token = request.headers.get("x-security-token")
        if token is not None and (self.security_token is None or not hmac.compare_digest(token, self.security_token)):
            raise _apigw_refusal("the security token (X-Security-Token) is invalid or expired")
        project_header = request.headers.get("x-project-id")
        if project_header is not None and path_project is not None and project_header != path_project:
            raise _apigw_refusal("X-Project-Id does not match the project in the URL")

    def _iam(self, request: _Request) -> _Reply:
        name = dict(request.pairs()).get("name")
        projects = []
        if name in (None, self.region):
            projects.append({"id": self.project_id, "name": self.region, "domain_id": self.domain_id,
                             "description": "", "enabled": True, "is_domain": False, "parent_id": self.domain_id,
                             "links": {"self": f"https://iam.myhuaweicloud.com/v3/projects/{self.project_id}"}})
        reply = _json(200, {"projects": projects, "links": {"self": "https://iam.myhuaweicloud.com/v3/projects",
                                                             "previous": None, "next": None}})
        reply.headers["X-IAM-Trace-Id"] = uuid.uuid4().hex
        return reply

    def _list_flavors(self, request: _Request) -> _Reply:
        kind = dict(request.pairs()).get("flavor_type")
        if kind is not None and kind not in ("CPU", "GPU", "Ascend"):
            raise _invalid(f"flavor_type {kind!r} is not one of CPU, GPU, Ascend")
        flavors = [flavor for flavor in self.flavors if kind is None or flavor.get("flavor_type") == kind]
        return _json(200, {"total_count": len(flavors), "flavors": copy.deepcopy(flavors)})

    def _create(self, request: _Request) -> _Reply:
        body = _parse_json(request.body)
        if not isinstance(body, dict):
            raise _invalid("the request body must be a JSON object (Job)")
        _check_model(body, "Job", "")
        flavor = self._check_job(body)
        runner = self._runner
        # a live job's task ends as its container does: no exit code until then
        script = self.behaviour(body) if runner is None else JobScript(phases=[], exit_code=None)
        node_count = int(((body.get("spec") or {}).get("resource") or {}).get("node_count") or 1)
        if flavor is not None and (node_count < 1 or node_count > int(flavor.get("max_num", 1))):
            raise _invalid(f"spec.resource.node_count {node_count} is out of range [1, {flavor.get('max_num')}] "
                           f"for flavor {flavor['flavor_id']}")
        if runner is not None and node_count > 1:
            raise _invalid("this stand-in runs a live job on one node only")
        script = dataclasses.replace(script, tasks=script.tasks or tuple(f"worker-{k}" for k in range(node_count)))
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {"body": body, "script": script, "polls": 0, "phase": "Creating", "stopped": False,
                             "created_at": time.time(), "live": None}
        if runner is not None:
            image = str(((body.get("algorithm") or {}).get("engine") or {}).get("image_url") or "")
            live = _Live(record=JobRun(job_id=job_id, image=image))
            self.runs[job_id] = live.record
            self.jobs[job_id]["live"] = live
            gpus = int(((flavor or {}).get("flavor_info") or {}).get("gpu", {}).get("unit_num", 0))
            live.thread = threading.Thread(target=self._run_live, args=(job_id, runner, gpus),
                                           name=f"stand-in-job-{job_id[:8]}", daemon=True)
            live.thread.start()  # it waits for the lock this request holds: the job exists before it moves
        return _json(201, self._job_view(job_id, self.jobs[job_id]))

    def _check_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """What the API documents beyond the models' fields and types; the flavor asked for, when one is."""
        kind = body.get("kind")
        if kind is not None and kind not in _JOB_KINDS:
            raise _invalid(f"kind {kind!r} is not one of {', '.join(_JOB_KINDS)}")
        metadata = body.get("metadata")
        if not metadata or metadata.get("name") is None:
            raise _invalid("metadata.name is required")
        if not _NAME.fullmatch(metadata["name"]):
            raise _invalid(f"metadata.name {metadata['name']!r}: 1-64 letters, digits, '_' or '-'")
        if len(metadata.get("description") or "") > 256:
            raise _invalid("metadata.description: at most 256 characters")
        algorithm = body.get("algorithm")
        if not algorithm:
            raise _invalid("algorithm is required")
        _check_algorithm(algorithm)
        resource = (body.get("spec") or {}).get("resource") or {}
        flavor_id = resource.get("flavor_id")
        if flavor_id is None:
            if resource.get("pool_id"):
                return None  # a dedicated CPU pool takes no flavor_id
            raise _invalid("spec.resource.flavor_id is required")
        flavor = next((item for item in self.flavors if item.get("flavor_id") == flavor_id), None)
        if flavor is None:
            raise _refuse(400, INVALID_FLAVOR, f"The selected instance (flavor) {flavor_id} is invalid or not "
                          "supported")
        return flavor

    def _stop(self, request: _Request, job_id: str, job: dict[str, Any]) -> _Reply:
        action = _parse_json(request.body)
        if not isinstance(action, dict):
            raise _invalid("the request body must be a JSON object (JobActionType)")
        _check_model(action, "JobActionType", "")
        if action.get("action_type") != "terminate":
            raise _invalid(f"action_type {action.get('action_type')!r}: only 'terminate' is supported")
        if job["phase"] not in ACTIVE_PHASES:
            raise _refuse(400, NOT_TERMINABLE, f"training job {job_id} is {job['phase']}: only a Creating, Pending "
                          "or Running job can be terminated")
        job["phase"] = "Terminated"
        job["stopped"] = True
        if job.get("live") is not None:
            job["live"].record.phases.append("Terminated")
            job["live"].stop.set()  # its thread kills the container
        return _json(202, self._job_view(job_id, job))

    def _log_preview(self, job: dict[str, Any], task: str) -> _Reply:
        script: JobScript = job["script"]
        if task not in script.task_names:
            raise _refuse(404, NOT_FOUND, f"The resource you requested is not exist: task {task}")
        # No log before the job runs: a Creating or Pending job has started no process yet.
        if not _started(job):
            log = b""
        elif job.get("live") is not None:
            log = job["live"].record.log
        else:
            log = script.logs.get(task, script.log).encode()
        content = log[-self.preview_limit:] if self.preview_limit > 0 else b""
        text = content.decode("utf-8", "ignore")  # a cut through a multi-byte character drops its head
        return _json(200, {"content": text, "current_size": len(text.encode()), "full_size": len(log)})

    def _job_view(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        """The job as ShowTrainingJobDetails answers: what was created, plus the ids, times and status."""
        body: dict[str, Any] = job["body"]
        script: JobScript = job["script"]
        phase: str = job["phase"]
        created_ms = int(job["created_at"] * 1000)
        metadata = copy.deepcopy(body.get("metadata") or {})
        metadata.update(id=job_id, create_time=created_ms, user_name="stand-in-user")
        metadata.setdefault("workspace_id", "0")
        algorithm = copy.deepcopy(body.get("algorithm") or {})
        if isinstance(algorithm.get("environments"), dict):
            # JobAlgorithmResponse has environments as a list of maps, where the request has one map
            algorithm["environments"] = [{name: value} for name, value in algorithm["environments"].items()]
        spec = copy.deepcopy(body.get("spec") or {})
        resource = spec.setdefault("resource", {})
        resource.setdefault("node_count", 1)
        flavor = next((item for item in self.flavors if item.get("flavor_id") == resource.get("flavor_id")), None)
        if flavor is not None:
            resource["flavor_name"] = flavor.get("flavor_name")
        started = _started(job)
        status: dict[str, Any] = {
            "phase": phase,
            "secondary_phase": _SECONDARY.get(phase, phase),
            "duration": int((time.time() - job["created_at"]) * 1000) if started else 0,
            "tasks": list(script.task_names),
        }
        if started:
            status["start_time"] = created_ms
        if phase in FINAL_PHASES:
            codes = {task: script.exit_codes.get(task, script.exit_code) for task in script.task_names}
            status["task_statuses"] = [
                {"task": task, "message": script.message, **({} if code is None else {"exit_code": code})}
                for task, code in codes.items()]
        return {"kind": body.get("kind") or "job", "metadata": metadata, "status": status, "algorithm": algorithm,
                "spec": spec}

    # -- jobs that run for real (run_jobs_with) ----------------------------------------------------------------

    def _run_live(self, job_id: str, runner: _Runner, gpus: int) -> None:
        """A job's life on its own thread: pull, fetch the code, run the container, end as it ended."""
        with self._lock:
            job = self.jobs[job_id]
            live: _Live = job["live"]
            algorithm: dict[str, Any] = copy.deepcopy(job["body"]["algorithm"])
        record = live.record
        code_dir: Path | None = None
        container: Any = None
        try:
            if not self._enter(job, "Pending"):
                return
            image = self._pull(job, runner, record)
            if image is None or live.stop.is_set():
                return
            code_dir = self._fetch_code(job, str(algorithm.get("code_dir") or ""))
            if code_dir is None or live.stop.is_set():
                return
            container = self._create_container(job, runner, image, algorithm, code_dir, gpus)
            if container is None:
                return
            self._watch_container(job, runner, container)
        except Exception as error:  # a fault of the stand-in or the engine: the job ends, the test does not hang
            self._finish(job, "Abnormal", None, f"stand-in: {type(error).__name__}: {error}")
        finally:
            if container is not None:
                with contextlib.suppress(Exception):  # gone already is as good
                    container.remove(force=True)
            if code_dir is not None:
                shutil.rmtree(code_dir, ignore_errors=True)
            with self._lock:
                record.removed = True

    def _enter(self, job: dict[str, Any], phase: str) -> bool:
        """Move a live job on; False when it was stopped meanwhile (a stop's phase stays)."""
        with self._lock:
            if job["stopped"]:
                return False
            job["phase"] = phase
            job["live"].record.phases.append(phase)
            if phase == "Running":
                job["live"].started = True
            return True

    def _finish(self, job: dict[str, Any], phase: str, exit_code: int | None, message: str) -> None:
        with self._lock:
            live: _Live = job["live"]
            live.record.exit_code = exit_code if exit_code is not None else live.record.exit_code
            live.record.message = message
            if job["stopped"]:
                return
            job["phase"] = phase
            live.record.phases.append(phase)
            job["script"] = dataclasses.replace(job["script"], exit_code=exit_code, message=message)

    def _pull(self, job: dict[str, Any], runner: _Runner, record: JobRun) -> Any:
        """The job's image pulled from its registry with the login given for its host; None (the job Failed)
        when the pull fails."""
        reference = record.image
        first = reference.split("/", 1)[0]
        host = first if "/" in reference and ("." in first or ":" in first or first == "localhost") else "docker.io"
        login = runner.logins.get(host)
        auth = None if login is None else {"username": login[0], "password": login[1]}
        with self._lock:
            record.login = None if login is None else login[0]
        try:
            image = runner.client.images.pull(reference, auth_config=auth)
        except Exception as error:  # the docker SDK's APIError, ImageNotFound, a refused connection ...
            detail = getattr(error, "explanation", None) or str(error)
            self._finish(job, "Failed", None, f"Failed to pull image {reference}: {detail}")
            return None
        with self._lock:
            record.pulled_id = str(image.id)
            record.pulled_digests = tuple(image.attrs.get("RepoDigests") or ())
        return image

    def _fetch_code(self, job: dict[str, Any], code_dir: str) -> Path | None:
        """The objects under code_dir (/bucket/folder/ or obs://bucket/folder/), written into a new directory the
        container's user can read; None (the job Failed) when there are none."""
        bucket, _, prefix = code_dir.removeprefix("obs:/").lstrip("/").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        with self._lock:
            files = {key[len(prefix):]: data for (in_bucket, key), data in self.objects.items()
                     if in_bucket == bucket and key.startswith(prefix) and not key.endswith("/")}
            job["live"].record.code = dict(files)
        if not files:
            self._finish(job, "Failed", None, f"Failed to download the code from obs://{bucket}/{prefix}: "
                         "no object there (ModelArts copies the code directory into the container)")
            return None
        directory = Path(tempfile.mkdtemp(prefix="stand-in-code-"))
        directory.chmod(0o755)  # mkdtemp's 0700 would keep the container's user out
        for name, data in files.items():
            path = directory / name
            for parent in reversed(path.relative_to(directory).parents[:-1]):
                (directory / parent).mkdir(mode=0o755, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        return directory

    def _create_container(self, job: dict[str, Any], runner: _Runner, image: Any, algorithm: dict[str, Any],
                          code_dir: Path, gpus: int) -> Any:
        """The training container, created (not started); None (the job Failed) without a boot command."""
        environment = {"MA_HOME": _HOME, "MA_MOUNT_PATH": f"{_HOME}/modelarts", "MA_JOB_DIR": _JOB_DIR,
                       "MA_LOG_DIR": f"{_HOME}/modelarts/log", "MA_NUM_GPUS": str(gpus), "MA_NUM_HOSTS": "1",
                       "MA_TASK_NAME": "worker", "VC_TASK_INDEX": "0", "VC_WORKER_NUM": "1",
                       "VC_WORKER_HOSTS": _WORKER}
        environment.update({str(name): str(value) for name, value in (algorithm.get("environments") or {}).items()})
        argv = shlex.split(_expand(str(algorithm.get("command") or ""), environment))
        if not argv:
            self._finish(job, "Failed", None, "the job has no boot command")
            return None
        last_level = str(algorithm.get("code_dir") or "").rstrip("/").rsplit("/", 1)[-1] or "code"
        device_requests = None
        if gpus:
            from docker.types import DeviceRequest  # only a GPU flavour needs the docker SDK's types

            device_requests = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
        container = runner.client.containers.create(
            image.id, entrypoint=argv[:1], command=argv[1:], user=runner.user, environment=environment,
            working_dir=_HOME, hostname=_WORKER, network_mode="none",
            labels={_CONTAINER_LABEL: job["live"].record.job_id}, device_requests=device_requests,
            volumes={str(code_dir): {"bind": f"{_JOB_DIR}/{last_level}", "mode": "ro"}})
        with self._lock:
            job["live"].record.container_id = str(container.id)
        return container

    def _watch_container(self, job: dict[str, Any], runner: _Runner, container: Any) -> None:
        live: _Live = job["live"]
        if live.stop.is_set():
            return
        container.start()
        facts = runner.client.api.inspect_container(container.id)
        config, host = facts.get("Config") or {}, facts.get("HostConfig") or {}
        with self._lock:
            record = live.record
            record.argv = (str(facts.get("Path") or ""), *(str(arg) for arg in facts.get("Args") or ()))
            record.user = str(config.get("User") or "")
            record.environment = dict(item.partition("=")[::2] for item in config.get("Env") or ())
            record.working_dir = str(config.get("WorkingDir") or "")
            record.hostname = str(config.get("Hostname") or "")
            record.network_mode = str(host.get("NetworkMode") or "")
            record.mounts = tuple(facts.get("Mounts") or ())
        if not self._enter(job, "Running"):
            live.stop.set()
        while True:
            if live.stop.is_set():
                with contextlib.suppress(Exception):  # it may have exited meanwhile
                    container.kill()
            container.reload()
            self._take_log(live, container)
            if container.status in ("exited", "dead"):
                break
            live.stop.wait(0.1)
        exit_code = int(container.wait().get("StatusCode", -1))
        self._take_log(live, container)
        if exit_code == 0:
            self._finish(job, "Completed", 0, "")
        else:
            self._finish(job, "Failed", exit_code, f"Command exited with code {exit_code}")

    def _take_log(self, live: _Live, container: Any) -> None:
        log = bytes(container.logs(stdout=True, stderr=True))
        with self._lock:
            live.record.log = log

    # -- OBS ---------------------------------------------------------------------------------------------------

    def _obs(self, request: _Request, operation: str) -> _Reply:
        prefix = self._check_obs_signature(request)
        failure = self._injected(operation)
        if failure is not None:
            return _obs_error(failure.status, failure.error_code, failure.error_msg, prefix)
        bucket, key = _bucket_and_key(request.path)
        if operation == "unknown":
            return _obs_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                              prefix)
        if bucket not in self.buckets:
            return _obs_error(404, "NoSuchBucket", "The specified bucket does not exist", prefix,
                              BucketName=bucket)
        if operation == "head_bucket":
            reply = _Reply(200)
            reply.headers[prefix + ("bucket-region" if prefix == "x-amz-" else "bucket-location")] = \
                self.buckets[bucket]
            return _obs_headers(reply, prefix)
        if operation == "bucket_location":
            region = escape(self.buckets[bucket])
            if prefix == "x-amz-":
                xml = ('<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                       f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>")
            else:
                xml = f'<Location xmlns="http://obs.myhwclouds.com/doc/2015-06-30/">{region}</Location>'
            return _obs_headers(_xml(200, xml), prefix)
        if operation == "put_object":
            return self._put_object(request, bucket, key, prefix)
        content = self.objects.get((bucket, key))
        if content is None:
            return _obs_error(404, "NoSuchKey", "The specified key does not exist.", prefix, Key=key)
        reply = _Reply(200, body=content)
        reply.headers.update({
            "ETag": f'"{hashlib.md5(content).hexdigest()}"',
            "Content-Type": self._object_types.get((bucket, key), "binary/octet-stream"),
            "Last-Modified": formatdate(self._object_times.get((bucket, key), time.time()), usegmt=True),
        })
        return _obs_headers(reply, prefix)

    def _put_object(self, request: _Request, bucket: str, key: str, prefix: str) -> _Reply:
        digest = hashlib.md5(request.body)
        sent_md5 = request.headers.get("content-md5")
        if sent_md5 is not None:
            try:
                claimed = base64.b64decode(sent_md5, validate=True)
            except (binascii.Error, ValueError):
                claimed = b""
            if len(claimed) != 16:
                return _obs_error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.", prefix)
            if claimed != digest.digest():
                return _obs_error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.",
                                  prefix)
        self.objects[(bucket, key)] = request.body
        self._object_types[(bucket, key)] = request.headers.get("content-type", "binary/octet-stream")
        self._object_times[(bucket, key)] = time.time()
        reply = _Reply(200)
        reply.headers["ETag"] = f'"{digest.hexdigest()}"'
        return _obs_headers(reply, prefix)

    def _check_obs_signature(self, request: _Request) -> str:
        """OBS's V2 check (S3-style "AWS" or OBS's own "OBS" scheme); the header prefix the request speaks."""
        authorization = request.headers.get("authorization", "").strip()
        match = _OBS_AUTH.fullmatch(authorization)
        # the scheme says which dialect was signed: OBS's own (x-obs- headers) or S3's (x-amz- headers)
        prefix = "x-obs-" if authorization.startswith("OBS ") else "x-amz-"
        if match is None:
            message = ("Access Denied" if not authorization else
                       "Unsupported Authorization: only the V2 signature (AWS/OBS AK:signature) is accepted")
            raise _obs_refuse(403, "AccessDenied", message, prefix)
        _, access, signature = match.groups()
        if access != self.ak:
            raise _obs_refuse(
                403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                prefix, AWSAccessKeyId=access)
        sent_date = request.headers.get(prefix + "date") or request.headers.get("date")
        try:
            signed_at = parsedate_to_datetime(sent_date) if sent_date else None
        except (TypeError, ValueError):
            signed_at = None
        if signed_at is None:
            raise _obs_refuse(403, "AccessDenied", "Request has no valid Date or x-amz-date header", prefix)
        if signed_at.tzinfo is None:
            signed_at = signed_at.replace(tzinfo=timezone.utc)
        if abs(datetime.now(timezone.utc) - signed_at) > MAX_CLOCK_SKEW:
            raise _obs_refuse(
                403, "RequestTimeTooSkewed", "The difference between the request time and the server's time is too "
                "large.", prefix)
        to_sign = _obs_string_to_sign(request, prefix)
        expected = base64.b64encode(hmac.new(self.sk.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, signature):
            raise _obs_refuse(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                              "signature you provided. Check your key and signing method.", prefix,
                              StringToSign=to_sign, SignatureProvided=signature, AWSAccessKeyId=access)
        token = request.headers.get(prefix + "security-token")
        if token is not None and (self.security_token is None or not hmac.compare_digest(token, self.security_token)):
            raise _obs_refuse(400, "InvalidToken", "The provided token is malformed or otherwise invalid.", prefix)
        return prefix


# -- helpers ---------------------------------------------------------------------------------------------------


def _route(request: _Request) -> tuple[str, dict[str, str]]:
    path = request.path.split("?")[0]
    for method, pattern, operation in _ROUTES:
        match = pattern.fullmatch(path)
        if match and request.method == method:
            return operation, {name: unquote(value) for name, value in match.groupdict().items()}
    raise _refuse(404, APIGW_NO_API, "The API does not exist or has not been published in the environment")


def _started(job: dict[str, Any]) -> bool:
    """Whether the job got past Creating and Pending (before a stop, if it was stopped)."""
    if job.get("live") is not None:
        return bool(job["live"].started)
    observed = _phase_after(job["script"], job["polls"]) if job["polls"] else "Creating"
    return observed not in ("Creating", "Pending")


def _phase_after(script: JobScript, polls: int) -> str:
    remaining = polls
    for phase, count in script.phases:
        if remaining <= count:
            return phase
        remaining -= count
    return script.final


def _expand(command: str, environment: Mapping[str, str]) -> str:
    """The boot command with the job's variables expanded, as the platform does before it runs it; any other
    $NAME stays as typed."""
    return _VARIABLE.sub(lambda match: environment.get(match["braced"] or match["plain"], match[0]), command)


def _canonical_uri(raw_path: str) -> str:
    uri = "/".join(quote(part, safe="~") for part in unquote(raw_path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def _canonical_query(request: _Request) -> str:
    pairs = sorted((name, value or "") for name, value in request.pairs())
    return "&".join(f"{quote(name, safe='~')}={quote(value, safe='~')}" for name, value in pairs)


def _utf8(value: str) -> str:
    """A header value as the client meant it: http.server reads the bytes as Latin-1, the SDK sends UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as error:
        raise _invalid(f"the request body is not valid JSON ({error})") from None


_PRIMITIVES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_model(value: Any, type_name: str, where: str) -> None:
    """`value` read into the SDK's type `type_name` (a model name, list[...], dict(str, ...) or a primitive): an
    unknown field or a wrong type is refused, naming the field as the JSON spells it."""
    if value is None:
        return
    place = where or "body"
    if type_name.startswith("list["):
        if not isinstance(value, list):
            raise _invalid(f"{place} must be an array")
        for index, item in enumerate(value):
            _check_model(item, type_name[5:-1], f"{where}[{index}]")
        return
    mapping = re.fullmatch(r"dict\((\w+), (.+)\)", type_name)
    if mapping:
        if not isinstance(value, dict):
            raise _invalid(f"{place} must be an object")
        for name, item in value.items():
            _check_model(item, mapping.group(2), f"{where}.{name}" if where else name)
        return
    if type_name in _PRIMITIVES:
        if (isinstance(value, bool) and type_name != "bool") or not isinstance(value, _PRIMITIVES[type_name]):
            raise _invalid(f"{place} must be of type {type_name}, not {type(value).__name__}")
        return
    klass = getattr(sdk_models, type_name, None)
    if klass is None or not hasattr(klass, "attribute_map"):
        return  # "object" and the like: anything goes
    if not isinstance(value, dict):
        raise _invalid(f"{place} must be an object ({type_name})")
    attributes = {json_name: attribute for attribute, json_name in klass.attribute_map.items()}
    for name, item in value.items():
        field_path = f"{where}.{name}" if where else name
        if name not in attributes:
            raise _invalid(f"unknown field {field_path!r} ({type_name} has no field {name})")
        _check_model(item, klass.openapi_types[attributes[name]], field_path)


def _check_algorithm(algorithm: dict[str, Any]) -> None:
    engine = algorithm.get("engine") or {}
    chosen = [name for name in ("engine_id", "engine_name", "image_url") if engine.get(name)]
    if len(chosen) > 1:
        raise _invalid(f"algorithm.engine: {' and '.join(chosen)} given; choose one of engine_id, "
                       "engine_name+engine_version, image_url")
    if engine.get("engine_name") and not engine.get("engine_version"):
        raise _invalid("algorithm.engine.engine_version is required with engine_name")
    by_reference = algorithm.get("id") or algorithm.get("subscription_id")
    code_dir, boot_file = algorithm.get("code_dir"), algorithm.get("boot_file")
    if not by_reference and (code_dir is None) != (boot_file is None):
        raise _invalid("algorithm.code_dir and algorithm.boot_file go together")
    if code_dir and boot_file and not boot_file.startswith(code_dir.rstrip("/") + "/"):
        raise _invalid(f"algorithm.boot_file {boot_file} is not inside code_dir {code_dir}")
    local = algorithm.get("local_code_dir")
    if local is not None:
        top = local.rstrip("/")
        if not local.startswith("/home/") or top == "/home/ma-user" or any(
                top == reserved or local.startswith(reserved + "/") for reserved in _RESERVED_CODE_DIRS):
            raise _invalid(f"algorithm.local_code_dir {local} is not allowed")
    environments = algorithm.get("environments") or {}
    if len(environments) > 100:
        raise _invalid("algorithm.environments: at most 100 variables")
    for name, value in environments.items():
        if not _ENV_NAME.fullmatch(name) or len(name) > 8192:
            raise _invalid(f"algorithm.environments: invalid variable name {name!r} (letters, digits and '_', "
                           "not starting with a digit)")
        if len(value) > 4096:
            raise _invalid(f"algorithm.environments.{name}: the value is longer than 4096 characters")


def _json(status: int, payload: Any) -> _Reply:
    return _Reply(status, {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex},
                  json.dumps(payload).encode())


def _json_error(status: int, code: str, message: str) -> _Reply:
    return _json(status, {"error_code": code, "error_msg": message})


def _refuse(status: int, code: str, message: str) -> _RefusedError:
    return _RefusedError(_json_error(status, code, message))


def _invalid(message: str) -> _RefusedError:
    return _refuse(400, INVALID_ARGUMENT, f"Invalid Argument: {message}")


def _apigw_refusal(reason: str) -> _RefusedError:
    reply = _json(401, {"error_msg": f"Incorrect IAM authentication information: {reason}",
                        "error_code": APIGW_AUTH, "request_id": uuid.uuid4().hex})
    return _RefusedError(reply)


def _obs_operation(request: _Request) -> str:
    bucket, key = _bucket_and_key(request.path)
    names = {name.lower() for name, _ in request.pairs()}
    if not bucket:
        return "unknown"
    if key:
        return {"PUT": "put_object", "HEAD": "head_object", "GET": "get_object"}.get(request.method, "unknown")
    if request.method == "HEAD":
        return "head_bucket"
    if request.method == "GET" and "location" in names:
        return "bucket_location"
    return "unknown"


def _bucket_and_key(raw_path: str) -> tuple[str, str]:
    bucket, _, key = raw_path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _obs_string_to_sign(request: _Request, prefix: str) -> str:
    """The V2 string-to-sign as OBS (and obs.auth.Authentication) builds it."""
    interesting = {name: value for name, value in request.headers.items()
                   if name in ("content-type", "content-md5", "date") or name.startswith(prefix)}
    if prefix + "date" in interesting:
        interesting["date"] = ""
    interesting.setdefault("content-type", "")
    interesting.setdefault("content-md5", "")
    parts = [request.method + "\n"]
    for name in sorted(interesting):
        value = interesting[name]
        if name.startswith(prefix + "meta-"):
            parts.append(f"{name}:{value.strip()}")
        elif name.startswith(prefix):
            parts.append(f"{name}:{value}")
        else:
            parts.append(value)
        parts.append("\n")
    parts.append(quote(unquote(request.path), safe="/~") or "/")
    subresources = [quote(name, safe="/") + ("" if value is None else "=" + value)
                    for name, value in sorted(request.pairs(), key=lambda pair: pair[0])
                    if name.lower() in _SUB_RESOURCES or name.lower().startswith(prefix)]
    if subresources:
        parts.append("?" + "&".join(subresources))
    return "".join(parts)


def _xml(status: int, document: str) -> _Reply:
    return _Reply(status, {"Content-Type": "application/xml"},
                  ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + document).encode())


def _obs_headers(reply: _Reply, prefix: str) -> _Reply:
    reply.headers[prefix + "request-id"] = uuid.uuid4().hex[:16].upper()
    reply.headers[prefix + "id-2"] = base64.b64encode(secrets.token_bytes(24)).decode()
    return reply


def _obs_refuse(status: int, code: str, message: str, prefix: str, **extra: str) -> _RefusedError:
    return _RefusedError(_obs_error(status, code, message, prefix, **extra))


def _obs_error(status: int, code: str, message: str, prefix: str, **extra: str) -> _Reply:
    request_id = uuid.uuid4().hex[:16].upper()
    items = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in extra.items())
    reply = _xml(status, f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
                         f"<RequestId>{request_id}</RequestId><HostId>stand-in</HostId>{items}</Error>")
    reply.headers[prefix + "request-id"] = request_id
    return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins every handler: nothing outlives the `with` block
    stand_in: StandIn


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive thread at shutdown

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the records are the log

    def _handle(self) -> None:
        target = urlsplit(self.path)
        request = _Request(method=self.command, path=target.path, query=target.query,
                           headers={name.lower(): value for name, value in self.headers.items()},
                           body=self._read_body())
        reply = self.server.stand_in._dispatch(request)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))  # for HEAD: the length a GET would have
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    def version_string(self) -> str:
        return "stand-in"

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""
