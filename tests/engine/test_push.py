"""Publishing against a real Docker Engine and a real registry (Debian's docker-registry, htpasswd auth).

The first push uploads the test base image's layer (about 170 MB compressed once, ~30 s); every later push of the
same or a derived image reuses it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from modelarts_images.engine import publishing
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import Refusal, RegistryAuth, RegistryLogin, RegistryRefusedError
from modelarts_images.errors import EngineError, RegistryError
from modelarts_images.http import registry
from modelarts_images.model import ImageSpec
from modelarts_images.options import PushOptions
from modelarts_images.pipeline import stage
from modelarts_images.publish import publisher as publish
from modelarts_images.publish import swr
from modelarts_images.shared import retry
from tests.support.engine_tier import TEST_BASE
from tests.support.registry import (
    ArgvWatcher,
    RunningRegistry,
    build_variant,
    contains_any,
    free_port,
    fresh_client,
    running_registry,
    spec,
    tag_local,
)

pytestmark = pytest.mark.engine

AK = "HPUAENGINETESTAK0001"


def env_for(reg: RunningRegistry, password: str | None = None) -> dict[str, str]:
    return {"MODELARTS_REGISTRY_USER": reg.user, "MODELARTS_REGISTRY_PASSWORD": password or reg.password}


def options(tmp_path: Path, **overrides: Any) -> PushOptions:
    """Fast retries of the registry's HTTP API (the engine's: registry.FAST_BACKOFF in tests/support)."""
    values: dict[str, Any] = {"reports_dir": tmp_path / "reports", "retries": 2, "backoff": 0.05}
    return PushOptions(**{**values, **overrides})


def push_image(image: ImageSpec, push_options: PushOptions, *, engine: DockerEngine, env: dict[str, str],
               now: dt.datetime | None = None) -> publish.PushRecord:
    """One image through the publisher (push_images for a list of one)."""
    (record,) = publish.push_images([image], push_options, engine=engine, env=env, now=now)
    return record


def read_back(reg: RunningRegistry, name: str, tag: str) -> requests.Response:
    """The manifest over plain HTTP with requests alone, independently of registry.py."""
    response = requests.get(f"http://{reg.host}/v2/{name}/manifests/{tag}", auth=(reg.user, reg.password),
                            headers={"Accept": f"{registry.DOCKER_MANIFEST}, {registry.OCI_INDEX}"}, timeout=30)
    response.raise_for_status()
    return response


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as a handler would print it, tracebacks included."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


# --------------------------------------------------------------------------------------------------------------


def test_push_without_login_fails_with_exit_6(push_engine: DockerEngine, local_registry: RunningRegistry,
                                              push_run: str, local_tags: list[str], tmp_path: Path) -> None:
    image = spec(local_registry.host, f"nologin-{push_run}")
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    reference = swr.Reference.of(image)
    # The engine alone: its in-band error is a refusal for want of a login, not retried. A fresh client, since
    # the SDK keeps the logins made through it in memory.
    client = fresh_client()
    try:
        with pytest.raises(RegistryRefusedError) as refused:
            publishing.push(client, reference.repository_reference, reference.tag, auth=None,
                            backoff=retry.Backoff(retries=0, base=0.05))
    finally:
        client.close()
    assert refused.value.kind is Refusal.AUTH
    assert refused.value.detail == "no basic auth credentials"
    # The publisher turns that refusal of an anonymous push into a message that says what to set.
    caught = publish._refused(refused.value, reference, authenticated=False, region=None)
    assert caught.exit_code == 6
    assert "requires a login (no basic auth credentials)" in str(caught)
    assert "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD" in str(caught)
    assert "then run `inv login`" in str(caught)
    # The whole command: the registry check before the push already says so.
    with pytest.raises(RegistryError, match=r"requires a login and no credentials were found: set "
                                            "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD") as whole:
        push_image(image, options(tmp_path), engine=push_engine, env={})
    assert whole.value.exit_code == 6


def test_login_push_read_back_and_no_op(push_engine: DockerEngine, local_registry: RunningRegistry, push_run: str,
                                        local_tags: list[str], tmp_path: Path, all_logs: pytest.LogCaptureFixture
                                        ) -> None:
    image = spec(local_registry.host, f"v1-{push_run}")
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    env = env_for(local_registry)
    now = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    with ArgvWatcher([local_registry.password]) as watcher:
        result = publish.login(local_registry.host, engine=push_engine, env=env)
        assert result == publish.LoginResult(registry=local_registry.host, user=local_registry.user,
                                             source="MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD")
        record = push_image(image, options(tmp_path, extra_tags=("{tag}-{date}",)), engine=push_engine, env=env,
                            now=now)
    local_tags.append(f"{local_registry.host}/engine-tests/modelarts-push:v1-{push_run}-20240601")
    assert record.outcome is publish.Outcome.PUSHED and record.digest is not None
    assert [t.outcome for t in record.tags] == [publish.Outcome.PUSHED, publish.Outcome.PUSHED]

    # The digest read back over HTTP matches, and the manifest is a single docker v2 schema 2 manifest.
    response = read_back(local_registry, "engine-tests/modelarts-push", image.tag)
    assert response.headers["Docker-Content-Digest"] == record.digest
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == record.digest
    assert response.headers["Content-Type"] == registry.DOCKER_MANIFEST == record.media_type
    assert json.loads(response.content)["config"]["digest"] == push_engine.client.images.get(TEST_BASE).id
    extra = read_back(local_registry, "engine-tests/modelarts-push", f"{image.tag}-20240601")
    assert extra.headers["Docker-Content-Digest"] == record.digest

    # The record for the report.
    document = json.loads((tmp_path / "reports" / "push-push-test.json").read_text())
    assert document["reference"] == image.reference
    assert document["digest"] == record.digest
    assert document["outcome"] == "pushed"
    assert document["size"] > 10_000_000  # the compressed base layer
    assert document["time"] == "2024-06-01T12:00:00+00:00"
    assert [t["reference"] for t in document["tags"]] == [image.reference, f"{image.reference}-20240601"]

    # Pushing the identical image again changes nothing and pushes nothing.
    all_logs.clear()
    again = push_image(image, options(tmp_path, extra_tags=("{tag}-{date}",)), engine=push_engine, env=env, now=now)
    assert again.outcome is publish.Outcome.UNCHANGED and again.digest == record.digest
    assert [t.outcome for t in again.tags] == [publish.Outcome.UNCHANGED, publish.Outcome.UNCHANGED]
    assert not [r for r in all_logs.records if r.name == "modelarts_images.engine.push" and
                r.getMessage().startswith("pushing")]
    assert "already in the registry" in logged_text(all_logs)
    assert read_back(local_registry, "engine-tests/modelarts-push", image.tag).headers[
        "Docker-Content-Digest"] == record.digest

    # The password showed up in no log record and on no command line.
    assert local_registry.password not in logged_text(all_logs)
    assert watcher.scans > 2 and not watcher.found, watcher.found


def test_different_image_under_same_tag_needs_replace_tag(push_engine: DockerEngine, local_registry: RunningRegistry,
                                                          push_run: str, local_tags: list[str], tmp_path: Path
                                                          ) -> None:
    image = spec(local_registry.host, f"guard-{push_run}")
    env = env_for(local_registry)
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    first = push_image(image, options(tmp_path), engine=push_engine, env=env)
    assert first.outcome is publish.Outcome.PUSHED

    variant_id = build_variant(push_engine.client, push_run, image.reference, local_tags)  # now names another image
    local_tags.append(variant_id)
    with pytest.raises(RegistryError) as caught:
        push_image(image, options(tmp_path), engine=push_engine, env=env)
    message = str(caught.value)
    assert caught.value.exit_code == 6
    assert f"refusing to push {image.reference}: the tag already exists in the registry as {first.digest}" in message
    assert "--replace-tag" in message  # the flag's name in both front ends (--force was its old name)
    assert read_back(local_registry, "engine-tests/modelarts-push", image.tag).headers[
        "Docker-Content-Digest"] == first.digest  # untouched

    replaced = push_image(image, options(tmp_path, replace_tags=True), engine=push_engine, env=env)
    assert replaced.outcome is publish.Outcome.REPLACED
    assert replaced.tags[0].previous_digest == first.digest
    assert replaced.digest != first.digest and replaced.image_id == variant_id
    assert read_back(local_registry, "engine-tests/modelarts-push", image.tag).headers[
        "Docker-Content-Digest"] == replaced.digest


def test_registry_down_is_retried_then_exit_6(push_engine: DockerEngine, local_tags: list[str], tmp_path: Path,
                                              all_logs: pytest.LogCaptureFixture) -> None:
    down = f"127.0.0.1:{free_port()}"
    image = spec(down, "down")
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    reference = swr.Reference.of(image)
    credentials = RegistryLogin(registry=down, username="u", password="pw-down-123")
    # The engine's push: connection refused in-band, retried once (push_engine allows 2 retries; a refused
    # connection is worth one, http/failures.py), then an EngineError, which the push step of the pipeline raises as
    # its RegistryError (exit 6), naming the host and port that refused.
    with pytest.raises(RegistryError, match=rf"push of {reference} failed after 2 attempts: {down} refused the "
                                            "connection") as caught, stage(RegistryError):
        push_engine.push(reference.repository_reference, reference.tag,
                         auth=RegistryAuth(config=publishing.auth_config(credentials)))
    assert caught.value.exit_code == 6
    assert type(caught.value.__cause__) is EngineError  # given up on, not refused
    retried = [r.getMessage() for r in all_logs.records if "retrying in" in r.getMessage()]
    assert len(retried) == 1 and "(attempt 2 of 2)" in retried[-1]
    # Login through the engine, and the whole command (whose registry check comes first), fail the same way.
    with pytest.raises(EngineError, match=r"login to .* failed after 2 attempt") as login_error:
        push_engine.login(credentials)
    assert not isinstance(login_error.value, RegistryRefusedError)
    with pytest.raises(RegistryError, match=rf"cannot reach the registry {down} .* after 2 attempts") as caught:
        push_image(image, options(tmp_path), engine=push_engine,
                   env={"MODELARTS_REGISTRY_USER": "u", "MODELARTS_REGISTRY_PASSWORD": "pw-down-123"})
    assert caught.value.exit_code == 6
    assert "pw-down-123" not in logged_text(all_logs)


def test_wrong_password_fails_and_never_leaks(push_engine: DockerEngine, local_registry: RunningRegistry,
                                              push_run: str, local_tags: list[str], tmp_path: Path,
                                              all_logs: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    image = spec(local_registry.host, f"wrongpw-{push_run}")
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    env = env_for(local_registry, wrong)
    encoded = base64.b64encode(f"{local_registry.user}:{wrong}".encode()).decode()
    with ArgvWatcher([wrong, local_registry.password]) as watcher:
        with pytest.raises(RegistryError) as login_error:
            publish.login(local_registry.host, engine=push_engine, env=env)
        with pytest.raises(RegistryError) as push_error:
            push_image(image, options(tmp_path), engine=push_engine, env=env)
        credentials = swr.resolve_credentials(local_registry.host, env)
        assert credentials is not None
        with pytest.raises(RegistryRefusedError) as engine_error:
            push_engine.login(RegistryLogin(registry=credentials.registry, username=credentials.username,
                                            password=credentials.password))
    for caught in (login_error, push_error):
        assert caught.value.exit_code == 6
        assert f"rejected the login of {local_registry.user}" in str(caught.value)
        assert "wrong user name or password" in str(caught.value)
        assert wrong not in str(caught.value)
    # The engine says only that the registry refused; who logged in, and from where, the publisher adds.
    assert engine_error.value.kind is Refusal.AUTH
    assert wrong not in str(engine_error.value) and wrong not in engine_error.value.detail
    text = logged_text(all_logs)
    assert wrong not in text and encoded not in text and local_registry.password not in text
    assert watcher.scans > 2 and not watcher.found, watcher.found  # > 2: the thread scanned during the logins


def test_long_term_login_with_ak_sk(push_engine: DockerEngine) -> None:
    """SWR's long-term login against a registry whose htpasswd holds <region>@<AK> and the derived key."""
    secret_key = "SK-" + secrets.token_urlsafe(30)
    key = swr.login_key(AK, secret_key)
    with running_registry(f"cn-north-4@{AK}", key) as reg, ArgvWatcher([secret_key]) as watcher:
        env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": secret_key}
        result = publish.login(reg.host, engine=push_engine, env=env, region="cn-north-4")
        assert result.source == "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (long-term login)"
        assert result.user == "cn-north-4@HPUA…"
        with pytest.raises(RegistryError, match=r"rejected the login of cn-north-4@HPUA…"):
            publish.login(reg.host, engine=push_engine, env={**env, "HUAWEICLOUD_SDK_SK": "another-sk"},
                          region="cn-north-4")
        # Without the region a loopback host is no SWR endpoint: the AK/SK is not sent to it.
        with pytest.raises(RegistryError, match=r"no credentials for"):
            publish.login(reg.host, engine=push_engine, env=env)
        # The region's own project is the default; a sub-project's login is another user, which this one is not.
        with pytest.raises(RegistryError, match=r"rejected the login of cn-north-4_team@HPUA…"):
            publish.login(reg.host, engine=push_engine, env=env, project="cn-north-4_team")
    assert not watcher.found, watcher.found


def test_long_term_login_into_a_sub_project(push_engine: DockerEngine) -> None:
    """A sub-project's long-term login: user <project name>@<AK>, from --project or swr_project."""
    secret_key = "SK-" + secrets.token_urlsafe(30)
    with running_registry(f"cn-north-4_team@{AK}", swr.login_key(AK, secret_key)) as reg:
        env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": secret_key}
        result = publish.login(reg.host, engine=push_engine, env=env, project="cn-north-4_team")
        assert result.user == "cn-north-4_team@HPUA…"
        with pytest.raises(RegistryError, match=r"rejected the login of cn-north-4@HPUA…"):
            publish.login(reg.host, engine=push_engine, env=env, region="cn-north-4")


def test_secret_not_in_pushed_image(push_engine: DockerEngine, local_registry: RunningRegistry, push_run: str,
                                    local_tags: list[str], tmp_path: Path) -> None:
    image = spec(local_registry.host, f"v1-{push_run}")  # pushed by an earlier test, or pushed now
    tag_local(push_engine.client, TEST_BASE, image.reference, local_tags)
    env = env_for(local_registry)
    record = push_image(image, options(tmp_path), engine=push_engine, env=env)
    assert record.outcome in (publish.Outcome.PUSHED, publish.Outcome.UNCHANGED)
    needles = [local_registry.password.encode(),
               base64.b64encode(f"{local_registry.user}:{local_registry.password}".encode())]
    pushed = push_engine.client.images.get(image.reference)
    history = json.dumps(pushed.history()).encode()
    assert contains_any(iter([history]), needles) == []
    assert contains_any(iter([json.dumps(pushed.attrs).encode()]), needles) == []
    chunks: Iterator[bytes] = pushed.save(chunk_size=1 << 20, named=True)
    assert contains_any(chunks, needles) == []
