"""Verification on ModelArts end to end, with each job really run: the engine tests' torch image pushed to a real
registry with the tool's own publisher, then the platform step against the Huawei Cloud stand-in in its real-run
mode (tests/support/huawei_cloud.py), which pulls the image from that registry, fetches the code from its OBS and
runs the boot command in a container as ModelArts does. Only the cloud's API is a stand-in; the image, the
registry, the engine and the verification script are the real ones.

The registry takes the account's SWR long-term login (user cn-north-4@<AK>, password derived from the SK): --region
makes the tool treat any registry host as SWR, and for SWR an AK/SK in the environment is the login it uses for
the tag check (MODELARTS_REGISTRY_USER/PASSWORD would be shadowed by it), as ModelArts pulls with the account's
rights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import shlex
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from modelarts_images import pipeline
from modelarts_images.cloud.api import Phase
from modelarts_images.declared import StepName
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.errors import RegistryError, VerifyError
from modelarts_images.http.registry import Registry
from modelarts_images.model import ImageSpec
from modelarts_images.options import Device, Flags, Options, PlatformOptions, PushOptions, VerifyOptions, resolve
from modelarts_images.platform import verifier as platform
from modelarts_images.platform.watch import Pace, PollSchedule
from modelarts_images.publish import publisher as publish
from modelarts_images.publish import swr
from modelarts_images.shared.credentials import Credentials
from modelarts_images.verify.report import ImageReport
from modelarts_images.verify.verifier import verify_image
from tests.support.huawei_cloud import JobRun, StandIn
from tests.support.registry import RunningRegistry, fresh_client, running_registry, spec, tag_local

pytestmark = pytest.mark.engine

REGION = "cn-north-4"
# The container takes seconds: a status call every 0.2 s sees each phase without hammering the stand-in.
POLLS = Pace(schedule=PollSchedule(first=0.2, growth=1.0, longest=0.2))
BOOT_ARGV = ("/home/ma-user/miniconda3/bin/python",
             "/home/ma-user/modelarts/user-job-dir/code/pytorch-verification.py")
SHELLS = ("/bin/sh", "sh", "/bin/bash", "bash", "/usr/bin/env")


@dataclasses.dataclass(frozen=True)
class Account:
    ak: str
    sk: str = dataclasses.field(repr=False)
    # huaweicloudsdkcore caches the project id it looked up at IAM per AK and region, as a real account's is
    # fixed: every stand-in of the module must answer for the same one
    project_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))


@dataclasses.dataclass(frozen=True)
class Pushed:
    image: ImageSpec
    record: publish.PushRecord
    root: Path  # the project root the run resolves against: its reports/ holds the push record


@pytest.fixture(scope="module")
def account() -> Account:
    """A fresh AK/SK in IAM's shapes: 20 of A-Z0-9, 40 letters and digits."""
    return Account(ak="".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20)),
                   sk="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40)))


@pytest.fixture(scope="module")
def swr_registry(push_engine: DockerEngine, account: Account) -> Iterator[RunningRegistry]:
    """A registry whose only user is the account's SWR long-term login."""
    with running_registry(swr.long_term_user(REGION, account.ak), swr.login_key(account.ak, account.sk)) as started:
        yield started


def env_of(account: Account) -> dict[str, str]:
    return {"HUAWEICLOUD_SDK_AK": account.ak, "HUAWEICLOUD_SDK_SK": account.sk}


def entry_for(registry: RunningRegistry, tag: str, image_id: str) -> ImageSpec:
    """A CPU torch 2.13.0 entry whose reference is <registry>/engine-tests/modelarts-platform:<tag>."""
    return dataclasses.replace(spec(registry.host, tag, image_id), repository="modelarts-platform")


def push(push_engine: DockerEngine, source: str, image: ImageSpec, root: Path, account: Account,
         made: list[str]) -> publish.PushRecord:
    """`source` pushed as `image` by the publisher, recorded in root/reports; then the local tag is dropped, so
    that a job's image can only come from the registry."""
    tag_local(push_engine.client, source, image.reference, made)
    options = PushOptions(reports_dir=root / "reports", retries=2, backoff=0.05, region=REGION)
    (record,) = publish.push_images([image], options, engine=push_engine, env=env_of(account))
    assert record.digest is not None and (root / "reports" / f"push-{image.id}.json").is_file()
    push_engine.client.images.remove(image.reference)  # an untag: `source` still names the image
    return record


@pytest.fixture(scope="module")
def good_pushed(push_engine: DockerEngine, good_image: str, swr_registry: RunningRegistry, account: Account,
                run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    image = entry_for(swr_registry, f"good-{run_id}", "platform-good")
    root = tmp_path_factory.mktemp("platform-good")
    made: list[str] = []
    try:
        yield Pushed(image=image, record=push(push_engine, good_image, image, root, account, made), root=root)
    finally:
        for reference in made:  # the tag the jobs' pulls made again
            with contextlib.suppress(docker.errors.DockerException):  # already gone is as good
                push_engine.client.images.remove(reference)


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, account: Account, swr_registry: RunningRegistry) -> Iterator[StandIn]:
    """The stand-in in its real-run mode, pulling with the account's login through a client with no stored
    logins (push_engine keeps DOCKER_CONFIG empty while the module runs)."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.delenv("HUAWEICLOUD_SDK_IAM_ENDPOINT", raising=False)
    client = fresh_client()
    try:
        with StandIn(ak=account.ak, sk=account.sk, project_id=account.project_id, region=REGION) as running:
            running.run_jobs_with(client, {swr_registry.host: (swr_registry.user, swr_registry.password)})
            yield running
    finally:
        client.close()


def platform_step(cloud: StandIn, root: Path, image: ImageSpec, account: Account,
                  said: list[str] | None = None) -> pipeline.Run:
    section = {"obs_dir": "obs://verify-bucket/ci/", "modelarts_endpoint": cloud.endpoint,
               "obs_endpoint": cloud.endpoint, "iam_endpoint": cloud.endpoint, "reports_dir": "reports"}
    options = resolve(section, Flags(on="modelarts", region=REGION, device="cpu", job_timeout="2"), root=root)
    run = pipeline.Run(options=options, images=(image,), env=env_of(account),
                       say=(said if said is not None else []).append, pace=POLLS)
    return pipeline.execute([StepName.PLATFORM], run)


def container_gone(client: Any, job: JobRun) -> bool:
    return job.removed and not client.containers.list(all=True, filters={"id": job.container_id})


def assert_no_secret(cloud: StandIn, root: Path, account: Account) -> None:
    """Neither key is in what the run wrote, what it uploaded or sent as a job, or what any job's container got
    or printed."""
    places = {
        "reports": b"".join(path.read_bytes() for path in (root / "reports").rglob("*") if path.is_file()),
        "OBS objects": b"".join(cloud.objects.values()),
        "job bodies": b"".join(call.body for call in cloud.calls("create")),
        "containers": json.dumps([[job.argv, job.environment, job.user] for job in cloud.runs.values()]).encode(),
        "container logs": b"".join(job.log for job in cloud.runs.values()),
    }
    assert cloud.runs and places["reports"] and places["OBS objects"]  # there was something to look in
    for where, content in places.items():
        for name, key in (("AK", account.ak), ("SK", account.sk)):
            assert key.encode() not in content, f"the {name} is in the {where}"


# --------------------------------------------------------------------------------------------------------------


def test_a_good_image_passes_as_a_job_that_really_ran(engine: DockerEngine, docker_client: Any, good_image: str,
                                                     good_pushed: Pushed, cloud: StandIn, account: Account,
                                                     swr_registry: RunningRegistry,
                                                     verify_options: VerifyOptions) -> None:
    image, said = good_pushed.image, list[str]()
    run = platform_step(cloud, good_pushed.root, image, account, said)
    (verified,) = run.verified
    report = verified.report
    pipeline.raise_for_reports([report])  # nothing failed
    assert report.ok and report.platform == "modelarts" and report.image_id == good_pushed.record.digest
    assert verified.path == good_pushed.root / "reports" / "verify" / f"{image.id}.json"
    assert json.loads(verified.path.read_text())["platform"] == "modelarts"
    (ran,) = report.runs
    assert ran.device is Device.CPU and ran.job is not None
    assert (ran.job.phase, ran.job.exit_code, ran.job.flavor) == ("Completed", 0, "modelarts.vm.cpu.2u")
    assert any("-> Running" in line for line in said) and any("Running -> Completed" in line for line in said), said

    # the same checks as a local verification of the same image on the CPU
    local = verify_image(engine, image, options=verify_options, reference=good_image, devices=(Device.CPU,),
                         check_conformance=False)
    (local_cpu,) = local.runs
    assert [outcome.name for outcome in ran.outcomes] == [outcome.name for outcome in local_cpu.outcomes]
    assert ran.result is not None and local_cpu.result is not None and ran.result.torch == local_cpu.result.torch

    # the job named the image by its tag, and the platform pulled that tag from the registry with the account
    (created,) = [call.json() for call in cloud.calls("create")]
    assert created["algorithm"]["engine"] == {"image_url": image.reference}
    job = cloud.runs[ran.job.job_id]
    assert job.image == image.reference and job.login == swr_registry.user
    assert f"{swr_registry.host}/engine-tests/modelarts-platform@{good_pushed.record.digest}" in job.pulled_digests
    assert set(job.code) >= {"pytorch-verification.py"} and job.code == {
        key.rsplit("/code/", 1)[1]: data for (_, key), data in cloud.objects.items()}

    # the container, as the engine ran it: the training user, the boot command's argv with no shell, ModelArts'
    # variables, the code read-only where the command looks for it, no network
    boot = shlex.split(created["algorithm"]["command"].replace("${MA_JOB_DIR}", "/home/ma-user/modelarts/user-job-dir"))
    assert job.argv == tuple(boot) == BOOT_ARGV and job.argv[0] not in SHELLS
    assert job.user == "1000:100" and job.working_dir == "/home/ma-user" and job.network_mode == "none"
    assert {name: job.environment[name] for name in ("MA_JOB_DIR", "MA_NUM_GPUS", "VC_WORKER_NUM")} == {
        "MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "MA_NUM_GPUS": "0", "VC_WORKER_NUM": "1"}
    (mount,) = job.mounts
    assert mount["Destination"] == "/home/ma-user/modelarts/user-job-dir/code" and mount["RW"] is False
    result = ran.result
    assert (result.uid, result.gid, result.cwd) == (1000, 100, "/home/ma-user")
    assert result.python_executable == BOOT_ARGV[0] and dict(result.environment)["MA_NUM_GPUS"] == "0"
    assert job.phases == ["Creating", "Pending", "Running", "Completed"] and job.exit_code == 0
    assert b"MODELARTS_VERIFY_RESULT" in job.log and ran.job.log_bytes == (len(job.log), len(job.log))
    assert container_gone(docker_client, job)
    assert_no_secret(cloud, good_pushed.root, account)


def test_an_image_without_torch_fails_naming_the_job(push_engine: DockerEngine, docker_client: Any,
                                                     no_torch_image: str, good_pushed: Pushed, cloud: StandIn,
                                                     account: Account, swr_registry: RunningRegistry, run_id: str,
                                                     local_tags: list[str], tmp_path: Path) -> None:
    image = entry_for(swr_registry, f"no-torch-{run_id}", "platform-no-torch")
    push(push_engine, no_torch_image, image, tmp_path, account, local_tags)
    run = platform_step(cloud, tmp_path, image, account)
    (verified,) = run.verified
    (ran,) = verified.report.runs
    assert ran.job is not None and ran.job.phase == "Failed" and ran.job.exit_code == 1
    with pytest.raises(VerifyError) as caught:
        pipeline.raise_for_reports([verified.report])
    message = str(caught.value)
    assert caught.value.exit_code == 5
    assert ran.job.name in message and "ended Failed" in message
    assert "exit code 1: Command exited with code 1" in message
    assert "No module named 'torch'" in message
    job = cloud.runs[ran.job.job_id]
    assert job.phases[-1] == "Failed" and job.exit_code == 1 and job.argv == BOOT_ARGV
    assert container_gone(docker_client, job)
    assert_no_secret(cloud, tmp_path, account)


def stand_in_api(cloud: StandIn, account: Account) -> Any:
    keys = platform.keys_from(env_of(account))
    options = PlatformOptions(modelarts_endpoint=cloud.endpoint, obs_endpoint=cloud.endpoint,
                              iam_endpoint=cloud.endpoint, project_id=cloud.project_id)
    api, _ = pipeline.sdk_cloud(keys, REGION, options)
    return api


def sleeper(cloud: StandIn, image_url: str) -> dict[str, Any]:
    """A job whose boot command sleeps, with one file of code in the stand-in's bucket."""
    cloud.objects[("verify-bucket", "sleeper/code/nothing.txt")] = b"nothing\n"
    return {"kind": "job", "metadata": {"name": f"sleeper-{secrets.token_hex(3)}"},
            "algorithm": {"code_dir": "/verify-bucket/sleeper/code/",
                          "boot_file": "/verify-bucket/sleeper/code/nothing.txt",
                          "command": "/bin/sleep 60", "engine": {"image_url": image_url}},
            "spec": {"resource": {"flavor_id": "modelarts.vm.cpu.2u", "node_count": 1}}}


def wait_for(what: str, condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {seconds:g} s"
        time.sleep(0.1)


def test_a_stopped_job_kills_its_container(docker_client: Any, good_pushed: Pushed, cloud: StandIn,
                                            account: Account) -> None:
    api = stand_in_api(cloud, account)
    created = api.create(sleeper(cloud, good_pushed.image.reference))
    wait_for("Running", lambda: api.job(created.id).phase is Phase.RUNNING)
    api.stop(created.id)
    assert api.job(created.id).phase is Phase.TERMINATED
    job = cloud.runs[created.id]
    wait_for("removed", lambda: job.removed)
    assert job.phases == ["Creating", "Pending", "Running", "Terminated"] and job.exit_code == 137  # SIGKILL
    assert api.job(created.id).phase is Phase.TERMINATED and container_gone(docker_client, job)


def test_an_image_the_registry_lacks_fails_the_job_at_its_pull(good_pushed: Pushed, cloud: StandIn,
                                                             account: Account) -> None:
    api = stand_in_api(cloud, account)
    missing = good_pushed.image.reference + "-missing"
    created = api.create(sleeper(cloud, missing))
    wait_for("Failed", lambda: api.job(created.id).phase is Phase.FAILED)
    state = api.job(created.id)
    (status,) = state.task_statuses
    assert status.exit_code is None and status.message.startswith(f"Failed to pull image {missing}: ")
    job = cloud.runs[created.id]
    assert job.phases == ["Creating", "Pending", "Failed"] and job.container_id is None and job.argv == ()


# --------------------------------------------------------------------------------------------------------------
# The release flow (the matrix's --push --on modelarts): pushed under a staging tag, verified on the platform
# under it, then given the entry's own tag through the registry's API only when the platform passed it.

FLOW = (StepName.PUSH, StepName.PLATFORM, StepName.RELEASE)


def staged(image: ImageSpec) -> ImageSpec:
    return dataclasses.replace(image, tag=image.tag + "-staging-test")


def api_name(image: ImageSpec) -> str:
    return f"{image.organization}/{image.repository}"


def registry_api(registry: RunningRegistry) -> Registry:
    """The registry's v2 API with the account's login, as the tool reads it."""
    login = Credentials(registry=registry.host, username=registry.user, password=registry.password,
                        source="the engine tests' SWR login")
    return Registry(registry.host, login, retries=1, backoff=0.05)


def registry_dir(registry: RunningRegistry) -> Path:
    """Where scripts/registry-up.sh keeps the registry's log and data (its state file: "PID DIR")."""
    _, directory = Path(f"/tmp/registry-{registry.port}.state").read_text(encoding="utf-8").split()
    return Path(directory)


def blobs(registry: RunningRegistry) -> set[str]:
    """Every blob the registry stores (layers, configs and manifests), by digest."""
    root = registry_dir(registry) / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {path.parent.name for path in root.glob("*/*/data")}


@dataclasses.dataclass
class AtRelease:
    """What the registry held when the release step started: its log's length and its blobs."""

    log: Path
    offset: int | None = None
    blobs: frozenset[str] = frozenset()

    def requests(self) -> list[str]:
        """The request lines of the registry's access log since the release step started."""
        assert self.offset is not None, "the release step never started"
        with self.log.open("rb") as log:
            log.seek(self.offset)
            written = log.read().decode("utf-8", "replace")
        return [line for line in written.splitlines() if '"' in line and " /v2/" in line]


def release_run(push_engine: DockerEngine, cloud: StandIn, registry: RunningRegistry, root: Path,
                image: ImageSpec, source: str, account: Account, made: list[str],
                said: list[str] | None = None) -> tuple[pipeline.Run, AtRelease]:
    """A run of the release flow for `image` as built from `source` (the local image tagged as the entry): its
    push options with the fast retries, the engine with no stored logins; once pushed, both local tags are dropped,
    so that the job can only run what the registry holds under the staging tag."""
    section = {"obs_dir": "obs://verify-bucket/ci/", "modelarts_endpoint": cloud.endpoint,
               "obs_endpoint": cloud.endpoint, "iam_endpoint": cloud.endpoint, "reports_dir": "reports"}
    options = resolve(section, Flags(on="modelarts", region=REGION, device="cpu", job_timeout="2"), root=root)
    options = dataclasses.replace(options, push=dataclasses.replace(options.push, retries=2, backoff=0.05))
    tag_local(push_engine.client, source, image.reference, made)
    made.append(staged(image).reference)  # the push step tags it, a job's pull makes it again
    marks = AtRelease(log=registry_dir(registry) / "registry.log")

    def show(step: StepName, item: Any) -> None:
        if step is StepName.PUSH:
            for reference in (image.reference, staged(image).reference):
                push_engine.client.images.remove(reference)  # an untag: `source` still names the image

    def starting(step: StepName) -> None:
        if step is StepName.RELEASE:
            marks.offset, marks.blobs = marks.log.stat().st_size, frozenset(blobs(registry))

    run = pipeline.Run(options=options, images=(image,), env=env_of(account), connect=lambda error: push_engine,
                       show=show, starting=starting, say=(said if said is not None else []).append, pace=POLLS,
                       staged=staged)
    return run, marks


def with_replace_tags(options: Options) -> Options:
    return dataclasses.replace(options, push=dataclasses.replace(options.push, replace_tags=True))


def assert_ran_staged(cloud: StandIn, run: pipeline.Run, registry: RunningRegistry, image: ImageSpec,
                      ) -> ImageReport:
    """The platform's one job named the staging tag and pulled the pushed digest; its report, which the run
    saved."""
    (record,) = run.pushed
    (verified,) = run.verified
    (ran,) = verified.report.runs
    assert ran.job is not None
    (created,) = [call.json() for call in cloud.calls("create")]
    assert created["algorithm"]["engine"] == {"image_url": staged(image).reference}
    job = cloud.runs[ran.job.job_id]
    assert job.image == staged(image).reference and job.login == registry.user
    assert f"{registry.host}/{api_name(image)}@{record.digest}" in job.pulled_digests
    assert verified.report.platform == "modelarts" and verified.report.image_id == record.digest
    assert verified.path == run.options.verify.reports_dir / f"{image.id}.json"
    return verified.report


def assert_retagged(marks: AtRelease, registry: RunningRegistry, image: ImageSpec) -> None:
    """The release sent the release tag's manifest and nothing else: no blob upload, no new blob."""
    release_put = f'"PUT /v2/{api_name(image)}/manifests/{image.tag} '
    wait_for("logged", lambda: any(release_put in line for line in marks.requests()), seconds=10)
    sent = [line for line in marks.requests() if '"PUT ' in line or '"POST ' in line or '"PATCH ' in line]
    assert sent and all(release_put in line for line in sent), sent
    assert not any("/blobs/" in line for line in marks.requests()), marks.requests()
    assert blobs(registry) == marks.blobs  # the manifest's bytes are the staged one's: not even a new blob


def test_a_good_image_is_released_under_its_own_tag_once_it_passed(
        push_engine: DockerEngine, good_image: str, cloud: StandIn, account: Account, swr_registry: RunningRegistry,
        run_id: str, local_tags: list[str], tmp_path: Path) -> None:
    image, said = entry_for(swr_registry, f"release-{run_id}", "platform-release"), list[str]()
    run, marks = release_run(push_engine, cloud, swr_registry, tmp_path, image, good_image, account, local_tags, said)
    assert pipeline.execute(FLOW, run) is run and run.stopped_at is None

    # pushed under the staging tag only, verified there on the platform
    (record,) = run.pushed
    assert record.reference == staged(image).reference and record.digest is not None
    assert [tag.reference for tag in record.tags] == [staged(image).reference]
    assert json.loads((tmp_path / "reports" / f"push-{image.id}.json").read_text())["reference"] == record.reference
    report = assert_ran_staged(cloud, run, swr_registry, image)
    pipeline.raise_for_reports([report])  # nothing failed
    assert report.ok and report.reference == staged(image).reference

    # released: the entry's own tag now names the digest that was pushed and verified
    (released,) = run.released
    assert (released.id, released.reference, released.staged) == (image.id, image.reference, record.reference)
    assert released.digest == record.digest and released.previous is None
    with registry_api(swr_registry) as registry:
        release, staging = registry.manifest(api_name(image), image.tag), registry.manifest(api_name(image),
                                                                                             staged(image).tag)
    assert release is not None and staging is not None
    assert release == staging and release.digest == record.digest and release.is_docker_v2
    assert_retagged(marks, swr_registry, image)
    assert any(f"released {record.reference} as {image.reference}" in pipeline.text(StepName.RELEASE, item)
               for item in run.released)


def test_an_image_that_fails_on_the_platform_keeps_only_its_staging_tag(
        push_engine: DockerEngine, no_torch_image: str, cloud: StandIn, account: Account,
        swr_registry: RunningRegistry, run_id: str, local_tags: list[str], tmp_path: Path) -> None:
    image = entry_for(swr_registry, f"no-torch-release-{run_id}", "platform-no-torch-release")
    run, marks = release_run(push_engine, cloud, swr_registry, tmp_path, image, no_torch_image, account, local_tags)
    pipeline.execute(FLOW, run)  # a failed report is in the run, not raised: raise_for_reports says it

    (record,) = run.pushed
    assert record.reference == staged(image).reference
    report = assert_ran_staged(cloud, run, swr_registry, image)
    (ran,) = report.runs
    assert not report.ok and ran.job is not None and ran.job.phase == "Failed" and ran.job.exit_code == 1
    with pytest.raises(VerifyError, match="No module named 'torch'"):
        pipeline.raise_for_reports([report])

    assert run.released == ()
    with registry_api(swr_registry) as registry:
        assert registry.head_manifest(api_name(image), image.tag) is None  # never released
        staging = registry.head_manifest(api_name(image), staged(image).tag)
    assert staging is not None and staging[0] == record.digest
    assert not [line for line in marks.requests() if '"PUT ' in line or '"POST ' in line], marks.requests()


def test_a_release_tag_naming_another_image_is_replaced_only_when_asked(
        push_engine: DockerEngine, good_image: str, no_torch_image: str, cloud: StandIn, account: Account,
        swr_registry: RunningRegistry, run_id: str, local_tags: list[str], tmp_path: Path) -> None:
    image = entry_for(swr_registry, f"guarded-{run_id}", "platform-guarded")
    # another image already under the release tag, pushed by an earlier run with its own reports
    earlier = push(push_engine, no_torch_image, image, tmp_path / "earlier", account, local_tags)
    run, marks = release_run(push_engine, cloud, swr_registry, tmp_path / "now", image, good_image, account,
                             local_tags)
    with pytest.raises(RegistryError) as caught:
        pipeline.execute(FLOW, run)
    message = str(caught.value)
    assert caught.value.exit_code == 6 and message.startswith("refusing to release") and "--replace-tag" in message
    assert f"already names {earlier.digest}" in message and image.reference in message

    # pushed and passed under the staging tag; the release tag still names the earlier image
    (record,) = run.pushed
    assert record.reference == staged(image).reference and record.digest != earlier.digest
    report = assert_ran_staged(cloud, run, swr_registry, image)
    assert report.ok and run.released == ()
    with registry_api(swr_registry) as registry:
        assert registry.head_manifest(api_name(image), image.tag) == (earlier.digest, earlier.media_type)

    # with --replace-tag, the release replaces it (the run's push and platform results as they were)
    run.options = with_replace_tags(run.options)
    (released,) = pipeline.execute([StepName.RELEASE], run).released
    assert (released.reference, released.digest, released.previous) == (image.reference, record.digest,
                                                                        earlier.digest)
    assert f"(it named {earlier.digest})" in pipeline.text(StepName.RELEASE, released)
    with registry_api(swr_registry) as registry:
        release = registry.manifest(api_name(image), image.tag)
    assert release is not None and release.digest == record.digest
    assert release == registry_api(swr_registry).manifest(api_name(image), staged(image).tag)
    assert_retagged(marks, swr_registry, image)
    assert len(cloud.calls("create")) == 1  # the release reran nothing on the platform
