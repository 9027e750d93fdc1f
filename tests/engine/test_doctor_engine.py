"""`inv doctor` with the real Docker Engine: its row says what `docker info` says (version, where, rootless), the
selected work can run (exit 0) when every source answers on loopback, the GPU row follows --device, and the
registry login is tried against a real registry (htpasswd) without ever showing the password."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.engine import probe
from modelarts_images.engine.adapter import DockerEngine
from tests.support.doctor import (
    INSTALLER_NAME,
    Scene,
    clean_env,
    free_port,
    parsed,
    rows_by_check,
    run_doctor,
    write_scene,
)
from tests.support.engine_tier import TEST_BASE
from tests.support.http_server import FileServer, serve
from tests.support.registry import RunningRegistry

pytestmark = pytest.mark.engine


@pytest.fixture
def files() -> Iterator[FileServer]:
    with serve() as running:
        running.add(f"/files/{INSTALLER_NAME}", b"installer")
        running.add("/files/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", b"wheel")
        running.add("/simple/", b"<html></html>", content_type="text/html")
        running.add("/apt/", b"apt", content_type="text/html")
        yield running


def loopback_scene(tmp_path: Path, files: FileServer, registry: str) -> Scene:
    """Every source on the loopback server; the base image is the test base the engine holds."""
    return write_scene(tmp_path, installer=files.url("/files/"), wheel=files.url("/files/"),
                       pip_index=files.url("/simple/"), apt_mirror=files.url("/apt"), registry=registry,
                       base_image=TEST_BASE)


def loopback_env(files: FileServer, **extra: str) -> dict[str, str]:
    return clean_env(PIP_INDEX_URL=files.url("/simple/"), NO_PROXY="127.0.0.1,localhost", **extra)


def test_the_engine_row_says_what_docker_info_says(engine: DockerEngine) -> None:
    facts = probe.probe()
    info: dict[str, Any] = engine.client.info()
    assert facts.reached and not facts.problem
    assert facts.version == info["ServerVersion"] == engine.client.version()["Version"]
    assert facts.rootless is any("name=rootless" in option for option in info.get("SecurityOptions") or ())
    assert facts.architecture == info["Architecture"] and facts.root_dir == info["DockerRootDir"]
    assert ("nvidia" in facts.runtimes) is ("nvidia" in (info.get("Runtimes") or {}))
    assert facts.endpoint == engine.endpoint and facts.seconds < probe.TIMEOUT_S * 2


def test_the_selected_work_can_run_when_every_source_answers(engine: DockerEngine, files: FileServer,
                                                             tmp_path: Path) -> None:
    scene = loopback_scene(tmp_path, files, registry=f"127.0.0.1:{free_port()}")
    result = run_doctor(scene, "--json", "--device", "cpu", "--backend", "docker", env=loopback_env(files))
    document = parsed(result)
    found = rows_by_check(document)
    missing = {name: row["detail"] for name, row in found.items() if row["level"] == "missing"}
    assert (result.returncode, missing) == (0, {}), result.stderr
    engine_row = found["engine"]
    assert engine_row["level"] == "ok" and engine_row["facts"]["version"] == engine.client.version()["Version"]
    assert engine_row["detail"].endswith("rootless")  # 'not rootless' or 'rootless'
    assert found["python"]["level"] == "ok"
    assert found["disk: cache"]["level"] == "ok" and found["disk: engine"]["level"] in ("ok", "warning")
    assert found[f"source {files.url('')}"]["level"] == "ok"
    assert found["nvidia runtime"]["level"] == "ok"  # --device cpu: not needed
    assert document["elapsed_s"] <= document["deadline_s"] + 1.0


def test_a_gpu_the_engine_cannot_give_is_missing_only_when_the_device_asks_for_one(
        engine: DockerEngine, files: FileServer, tmp_path: Path) -> None:
    if "nvidia" in (engine.client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the nvidia runtime: --device gpu can run")
    scene = loopback_scene(tmp_path, files, registry=f"127.0.0.1:{free_port()}")
    result = run_doctor(scene, "--json", "--device", "gpu", "--backend", "docker", env=loopback_env(files))
    row = rows_by_check(parsed(result))["nvidia runtime"]
    assert (result.returncode, row["level"]) == (8, "missing"), result.stderr
    assert "nvidia-ctk" in row["fix"] and "nvidia runtime" in result.stderr


@pytest.mark.parametrize("right", [True, False], ids=["accepted", "rejected"])
def test_the_registry_login_is_tried_against_a_real_registry(push_engine: DockerEngine,
                                                             local_registry: RunningRegistry, files: FileServer,
                                                             tmp_path: Path, right: bool) -> None:
    password = local_registry.password if right else "pw-" + secrets.token_urlsafe(12)
    scene = loopback_scene(tmp_path, files, registry=local_registry.host)
    env = loopback_env(files, MODELARTS_REGISTRY_USER=local_registry.user, MODELARTS_REGISTRY_PASSWORD=password)
    result = run_doctor(scene, "--json", "--device", "cpu", "--backend", "docker", env=env)
    row = rows_by_check(parsed(result))[f"registry login {local_registry.host}"]
    assert row["level"] == ("ok" if right else "missing"), row
    assert row["facts"]["outcome"] == ("accepted" if right else "rejected")
    assert result.returncode == (0 if right else 8), result.stderr
    shown = result.stdout + result.stderr
    assert password not in shown and local_registry.password not in shown and local_registry.user not in shown
    assert row["facts"]["user"] == local_registry.user[:3] + "…"
