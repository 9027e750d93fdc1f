"""`inv doctor` against real parts: loopback servers up, down, slow, without TLS, behind a proxy; a name that does not
resolve; no engine (DOCKER_HOST at a socket that does not exist); a full disk; the JSON and the exit codes. The
engine's own rows with a real engine are in tests/engine/test_doctor_engine.py."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelarts_images.config import versions as versions_config
from modelarts_images.declared import DeviceChoice
from modelarts_images.doctor import local, needs, report, rows
from modelarts_images.doctor.report import Level, Need, Report, Row
from modelarts_images.doctor.run import Bounds, examine
from modelarts_images.errors import DoctorError
from modelarts_images.fetch import lockfile
from modelarts_images.http.reach import Stage, masked_user, reach
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import Flags, Options, Where, resolve
from tests.support.doctor import (
    IMAGE_ID,
    INSTALLER_NAME,
    WHEEL_NAME,
    Scene,
    clean_env,
    free_port,
    parsed,
    rows_by_check,
    run_doctor,
    silent_server,
    write_scene,
)
from tests.support.http_server import FileServer, serve

NO_ENGINE = "unix:///nonexistent/doctor/docker.sock"
FAST = Bounds(source=1.0, engine=1, cli=2.0, login=1.0, total=3.0)


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy, pip index, docker context or credentials from the host (reach() reads the proxies from the
    process's environment, as requests does), and no engine."""
    kept = clean_env()
    for name in list(os.environ):
        if name not in kept:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)


@pytest.fixture
def files(quiet_env: None) -> Iterator[FileServer]:
    with serve() as running:
        running.add(f"/files/{INSTALLER_NAME}", b"installer")
        running.add("/files/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", b"wheel")
        running.add("/simple/", b"<html></html>", content_type="text/html")
        running.add("/apt/", b"apt", content_type="text/html")
        yield running


def options_of(scene: Scene, **flags: Any) -> tuple[tuple[ImageSpec, ...], Options]:
    options = resolve({"cache_dir": str(scene.cache_dir)}, Flags(versions=str(scene.versions), **flags),
                      root=scene.root)
    loaded = versions_config.load_versions(options.selection.versions, fallbacks=options.fallbacks)
    return versions_config.select(loaded), options


def by_check(checked: Report) -> dict[str, Row]:
    return {one.check: one for one in checked.rows}


def source_row(checked: Report, url: str) -> Row:
    origin = needs.origin_of(url)
    return by_check(checked)[f"source {origin}"]


# --------------------------------------------------------------------------------------------------------------
# The rows, their verdict and their rendering (pure)


def test_a_failed_check_is_missing_when_the_work_needs_it_else_a_warning() -> None:
    assert report.row("x", ok=False, detail="d", fix="f", need=Need.REQUIRED).level is Level.MISSING
    assert report.row("x", ok=False, detail="d", fix="f", need=Need.WANTED).level is Level.WARNING
    not_needed = report.row("x", ok=False, detail="d", fix="f", need=Need.NOT_NEEDED)
    assert (not_needed.level, not_needed.fix) == (Level.OK, "")  # nothing to fix for what nothing needs
    assert report.row("x", ok=True, detail="d", fix="f").fix == ""


def test_the_table_json_and_exit_code_say_the_same() -> None:
    checked = Report(images=("a",), elapsed=1.25, deadline=4.5, rows=(
        report.row("python", ok=True, detail="fine"),
        report.row("engine", ok=False, detail="no Docker Engine answers", fix="start dockerd"),
        Row(check="nvidia runtime", level=Level.WARNING, detail="no nvidia runtime", fix="install it",
            required=False),
    ))
    table = report.as_table(checked)
    assert table.splitlines()[0].startswith("doctor: a: the selected work cannot run (1 ok, 1 warning, 1 missing")
    assert "missing  engine          no Docker Engine answers" in table and "fix: start dockerd" in table
    document = json.loads(report.as_json(checked))
    assert (document["ok"], document["exit_code"], document["elapsed_s"]) == (False, 8, 1.25)
    assert [row["level"] for row in document["rows"]] == ["ok", "missing", "warning"]
    error = report.error(checked)
    assert isinstance(error, DoctorError) and error.exit_code == 8 == checked.exit_code
    assert "1 missing: engine (no Docker Engine answers)" in str(error)
    assert report.error(Report(images=("a",), rows=checked.rows[:1], elapsed=0, deadline=1)) is None


def test_a_row_is_one_line_with_credentials_masked() -> None:
    one = report.row("source", ok=False, detail="https://user:hunter2@mirror.example/simple\nsecond line",
                     fix="x")
    assert one.detail == "https://user:***@mirror.example/simple second line"


# --------------------------------------------------------------------------------------------------------------
# What the selected work needs (pure)


def spec(**changes: Any) -> ImageSpec:
    base: dict[str, Any] = dict(
        id="img", default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag="t", registry="127.0.0.1:5999", organization="o", repository="r", base_image="ubuntu:22.04",
        pip_index="https://pypi.example/simple", apt_mirror="http://apt.example",
        installer=Artifact(url="https://repo.anaconda.com/miniconda/Miniconda3-py311_23.5.2-0-Linux-x86_64.sh",
                           sha256="1" * 64),
        wheels=(Artifact(url="https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl",
                         sha256=None),))
    return ImageSpec(**{**base, **changes})


@pytest.mark.parametrize(("device", "cuda", "on", "need"), [
    (DeviceChoice.GPU, "cpu", Where.LOCAL, Need.REQUIRED),
    (DeviceChoice.BOTH, "12.1", Where.LOCAL, Need.REQUIRED),
    (DeviceChoice.AUTO, "12.1", Where.LOCAL, Need.WANTED),
    (DeviceChoice.AUTO, "cpu", Where.LOCAL, Need.NOT_NEEDED),
    (DeviceChoice.CPU, "12.1", Where.LOCAL, Need.NOT_NEEDED),
    (DeviceChoice.GPU, "12.1", Where.MODELARTS, Need.NOT_NEEDED),
])
def test_the_gpu_is_needed_by_the_device_and_the_images(device: DeviceChoice, cuda: str, on: Where,
                                                        need: Need) -> None:
    assert needs.gpu_need([spec(cuda=cuda)], device, on)[0] is need


def test_each_host_is_asked_once_at_the_url_a_mirror_gives(tmp_path: Path) -> None:
    options = resolve({"mirrors": {"https://download.pytorch.org/whl/": "http://127.0.0.1:9/pytorch/"}},
                      root=tmp_path)
    images = [spec(id="a"), spec(id="b", base_image="mirror.example:5000/library/ubuntu:22.04")]
    found = {source.origin: source for source in needs.sources_of(images, options, {}, frozenset(), needs.PYPI)}
    assert list(found) == ["https://repo.anaconda.com", "http://127.0.0.1:9", "https://pypi.org",
                           "https://pypi.example", "http://apt.example", "https://registry-1.docker.io",
                           "https://mirror.example:5000"]
    mirror = found["http://127.0.0.1:9"]
    assert mirror.url.startswith("http://127.0.0.1:9/pytorch/cpu/torch-2.13.0")
    assert "2 wheels (a, b); a mirror of https://download.pytorch.org/whl/cpu/" in mirror.described
    assert found["https://registry-1.docker.io"].need is Need.WANTED  # the engine may hold the base already
    assert found["https://repo.anaconda.com"].need is Need.REQUIRED
    cached = needs.sources_of(images, options, {}, frozenset({"1" * 64}), needs.PYPI)
    assert cached[0].need is Need.WANTED  # the installer is in the cache: fetch does not ask for it


def test_the_disk_estimate_comes_from_the_lock_sizes_else_a_fixed_figure() -> None:
    image = spec()
    sized = lockfile.LockedImage(
        inputs=lockfile.inputs_of(image), installer=Artifact(url=image.installer.url, sha256="1" * 64, size=100),
        wheels=(Artifact(url=image.wheels[0].url, sha256="2" * 64, size=1000),),
        closure=(Artifact(url="https://files.example/numpy.whl", sha256="3" * 64, size=10),))
    cache, engine = needs.disk_needs([image], {"img": sized}, frozenset({"1" * 64}))
    assert cache.bytes == 1010 and "versions.lock's sizes" in cache.described
    assert engine.bytes == 3 * 1110 + needs.BASE_ALLOWANCE[needs.Kind.CPU]
    cuda12 = spec(cuda="12.8")
    cache, engine = needs.disk_needs([cuda12], {}, frozenset())
    assert (cache.bytes, engine.bytes) == needs.FIXED[needs.Kind.CUDA12]
    assert "the fixed figure for CUDA 12 and later" in cache.described


def test_the_python_row_names_each_unmet_requirement() -> None:
    versions = {"docker": "6.1.3", "requests": "2.32.0"}
    checked, unmet = local.unmet_requirements(
        ["docker>=7.1", "requests>=2.31", "rich>=13", 'tomli>=2; python_version < "3.0"', 'pytest; extra == "dev"'],
        versions.get)
    assert checked == 3  # the marker and the extra leave two out
    assert unmet == ("docker>=7.1: 6.1.3 is installed", "rich>=13: not installed")
    facts = local.python_facts()
    assert facts.distribution.startswith("modelarts-images ") and facts.unmet == () and facts.checked >= 5
    assert rows.python_row(facts).level is Level.OK


# --------------------------------------------------------------------------------------------------------------
# How far a source is reached


def test_a_server_that_answers_is_reached_to_its_http_status(files: FileServer) -> None:
    reached = reach(files.url(f"/files/{INSTALLER_NAME}"), timeout=1.0)
    assert (reached.reached, reached.failed, reached.status) == (Stage.HTTP, None, 206)  # the first byte only
    assert files.requests(f"/files/{INSTALLER_NAME}")[0].headers["range"] == "bytes=0-0"


def test_a_port_nobody_listens_on_fails_at_tcp(quiet_env: None) -> None:
    reached = reach(f"http://127.0.0.1:{free_port()}/x", timeout=1.0)
    assert (reached.reached, reached.failed, reached.timed_out) == (Stage.DNS, Stage.TCP, False)
    assert "refused the connection" in reached.problem


def test_a_server_that_never_answers_times_out_within_the_bound(quiet_env: None) -> None:
    with silent_server() as port:
        reached = reach(f"http://127.0.0.1:{port}/simple/", timeout=0.5)
    assert (reached.reached, reached.failed, reached.timed_out) == (Stage.TCP, Stage.HTTP, True)
    assert "timed out after 0.5 s waiting for the HTTP status" in reached.problem
    assert reached.seconds < 5  # bounded by the probe's own deadline, not by the server


def test_https_to_a_plain_http_port_fails_at_tls(files: FileServer) -> None:
    reached = reach(f"https://127.0.0.1:{files.port}/files/{INSTALLER_NAME}", timeout=1.0)
    assert (reached.reached, reached.failed) == (Stage.TCP, Stage.TLS)
    assert "TLS handshake" in reached.problem


def test_a_name_that_does_not_resolve_fails_at_dns(quiet_env: None) -> None:
    reached = reach("https://nothing.doctor.invalid/simple/", timeout=1.0)
    assert (reached.reached, reached.failed) == (Stage.START, Stage.DNS)
    assert "nothing.doctor.invalid does not resolve" in reached.problem


def test_a_proxy_from_the_environment_is_used_and_named(files: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{files.port}")
    url = f"http://files.doctor.invalid/files/{INSTALLER_NAME}"
    reached = reach(url, timeout=1.0)
    assert (reached.status, reached.proxy, reached.proxy_variable) == (206, f"http://127.0.0.1:{files.port}",
                                                                       "HTTP_PROXY")
    assert files.requests(f"/files/{INSTALLER_NAME}")[-1].target == url  # the request went through the proxy
    monkeypatch.setenv("NO_PROXY", "doctor.invalid")
    assert reach(url, timeout=1.0).failed is Stage.DNS  # NO_PROXY: asked directly, as requests would


# --------------------------------------------------------------------------------------------------------------
# The whole check, through the library


def test_without_an_engine_the_engine_is_missing_and_what_needs_it_is_not_checked(files: FileServer,
                                                                                    tmp_path: Path) -> None:
    scene = write_scene(tmp_path, installer=files.url("/files/"), wheel=files.url("/files/"),
                        pip_index=files.url("/simple/"), apt_mirror=files.url("/apt"),
                        registry=f"127.0.0.1:{free_port()}")
    images, options = options_of(scene, device="cpu", backend="docker")
    checked = examine(images, options, env=clean_env(PIP_INDEX_URL=files.url("/simple/")), bounds=FAST)
    found = by_check(checked)
    assert found["engine"].level is Level.MISSING
    assert f"DOCKER_HOST={NO_ENGINE}" in found["engine"].detail and "dockerd" in found["engine"].fix
    assert found["disk: engine"].level is Level.WARNING and "not checked" in found["disk: engine"].detail
    assert found["nvidia runtime"].level is Level.OK  # --device cpu: not needed
    for url in (files.url(f"/files/{INSTALLER_NAME}"), files.url("/simple/")):
        assert source_row(checked, url).level is Level.OK
    assert [one.check for one in checked.missing] == ["engine"]
    assert checked.elapsed < FAST.total + 2


def test_the_rows_of_unreachable_sources_say_the_stage_and_the_proxy(files: FileServer, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with silent_server() as slow:
        scene = write_scene(tmp_path, installer="https://installer.doctor.invalid/conda",
                            wheel=f"http://127.0.0.1:{free_port()}/whl", pip_index=f"http://127.0.0.1:{slow}/simple",
                            apt_mirror=f"https://127.0.0.1:{files.port}/apt",
                            registry=f"127.0.0.1:{free_port()}")
        images, options = options_of(scene, device="cpu")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{files.port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        checked = examine(images, options, env=clean_env(PIP_INDEX_URL="http://pypi.doctor.invalid/simple/"),
                          bounds=FAST)  # the proxy serves /simple/
    installer = source_row(checked, "https://installer.doctor.invalid/")
    assert installer.level is Level.MISSING and installer.detail.startswith("DNS failed: installer.doctor.invalid")
    wheel = source_row(checked, images[0].wheels[0].url)
    assert wheel.level is Level.MISSING and wheel.detail.startswith("TCP failed") and "wheel" in wheel.detail
    pip_build = source_row(checked, images[0].pip_index)
    assert pip_build.level is Level.MISSING and "HTTP timed out" in pip_build.detail
    assert dict(pip_build.facts)["timed_out"] is True
    apt = source_row(checked, images[0].apt_mirror)
    assert apt.level is Level.MISSING and apt.detail.startswith("TLS failed")
    proxied = source_row(checked, "http://pypi.doctor.invalid/")
    assert proxied.level is Level.OK and proxied.detail.startswith("HTTP 206")  # answered through the proxy
    assert f"via the proxy http://127.0.0.1:{files.port} (HTTP_PROXY)" in proxied.detail
    assert dict(proxied.facts)["proxy_variable"] == "HTTP_PROXY"
    assert checked.elapsed < FAST.total + 2  # the slow server is cut at its bound


def test_a_full_disk_under_the_cache_is_missing(files: FileServer, tmp_path: Path) -> None:
    mount = tmp_path / "full"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs to fill ({error}): needs root")
    try:
        scene = write_scene(tmp_path / "scene", installer=files.url("/files/"), wheel=files.url("/files/"),
                            pip_index=files.url("/simple/"), apt_mirror=files.url("/apt"),
                            registry=f"127.0.0.1:{free_port()}", cache_dir=mount / "cache",
                            wheel_sha="2" * 64)
        images, options = options_of(scene, device="cpu")
        image = images[0]
        lockfile.write(options.fetch.lock_path, {IMAGE_ID: lockfile.LockedImage(
            inputs=lockfile.inputs_of(image), installer=Artifact(url=image.installer.url,
                                                                 sha256=image.installer.sha256, size=200_000),
            wheels=(Artifact(url=image.wheels[0].url, sha256="2" * 64, size=300_000),), closure=())})
        roomy = by_check(examine(images, options, env=clean_env(), bounds=FAST))["disk: cache"]
        assert roomy.level is Level.OK and "needs about 500.0 KB" in roomy.detail
        assert "(versions.lock's sizes)" in roomy.detail
        with contextlib.suppress(OSError), (mount / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
        full = by_check(examine(images, options, env=clean_env(), bounds=FAST))["disk: cache"]
        assert full.level is Level.MISSING and full.detail.startswith("0 B free at ")
        assert "modelarts.cache_dir" in full.fix
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=30)


# --------------------------------------------------------------------------------------------------------------
# The registry's login and the ModelArts keys, never shown


class _Registry(BaseHTTPRequestHandler):
    """/v2/ behind Basic auth, accepting one user and password."""

    expected = ""

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v2":
            self.send_response(404)
        elif self.headers.get("Authorization") == self.expected:
            self.send_response(200)
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="doctor"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def basic_registry(user: str, password: str) -> Iterator[str]:
    handler = type("Handler", (_Registry,), {
        "expected": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("given", "level", "words"), [
    ("pw-right-9f2c", Level.OK, "accepts the login of doc… (from MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD)"),
    ("pw-wrong-77aa", Level.MISSING, "rejected the login of doc… (from MODELARTS_REGISTRY_USER"),
], ids=["accepted", "rejected"])
def test_the_registry_login_is_tried_and_never_shown(files: FileServer, tmp_path: Path, given: str, level: Level,
                                                     words: str) -> None:
    with basic_registry("doctor-user", "pw-right-9f2c") as registry:
        scene = write_scene(tmp_path, installer=files.url("/files/"), wheel=files.url("/files/"),
                            pip_index=files.url("/simple/"), apt_mirror=files.url("/apt"), registry=registry)
        images, options = options_of(scene, device="cpu")
        env = clean_env(MODELARTS_REGISTRY_USER="doctor-user", MODELARTS_REGISTRY_PASSWORD=given)
        checked = examine(images, options, env=env, bounds=FAST)
    login = by_check(checked)[f"registry login {registry}"]
    assert login.level is level and words in login.detail
    shown = report.as_table(checked) + report.as_json(checked)
    assert given not in shown and "doctor-user" not in shown
    assert masked_user("cn-north-4@HPUAEXAMPLEKEY") == "cn-north-4@HPUA…"


def test_modelarts_keys_are_checked_by_presence_and_shape_never_shown(files: FileServer, tmp_path: Path) -> None:
    scene = write_scene(tmp_path, installer=files.url("/files/"), wheel=files.url("/files/"),
                        pip_index=files.url("/simple/"), apt_mirror=files.url("/apt"),
                        registry=f"127.0.0.1:{free_port()}")
    images, options = options_of(scene, device="cpu", on="modelarts", region="cn-north-4")
    platform = local.platform_facts({}, None, find=lambda name: object())
    none = rows.platform_row(platform, Need.REQUIRED, "--on modelarts", regions=["cn-north-4"])
    assert none.level is Level.MISSING and "no AK/SK: set HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK" in none.detail
    assert "no OBS folder" in none.detail
    ak, sk = "short-ak", "s3cr3t-value-that-is-not-40"
    odd = local.platform_facts({"HUAWEICLOUD_SDK_AK": ak, "HUAWEICLOUD_SDK_SK": sk}, "obs://bucket/folder/",
                               find=lambda name: object())
    shaped = rows.platform_row(odd, Need.REQUIRED, "--on modelarts", regions=["cn-north-4"])
    assert shaped.level is Level.WARNING and "HUAWEICLOUD_SDK_AK has 8 characters" in shaped.detail
    half = local.platform_facts({"HW_SECRET_KEY": sk}, "obs://Bad_Bucket", find=lambda name: None)
    broken = rows.platform_row(half, Need.REQUIRED, "--on modelarts", regions=[None])
    assert broken.level is Level.MISSING
    for words in ("HW_SECRET_KEY is set but HW_ACCESS_KEY is not", "is not an OBS folder", "esdk-obs-python",
                  "give --region"):
        assert words in broken.detail, words
    checked = examine(images, options, env=clean_env(HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk), bounds=FAST)
    shown = report.as_table(checked) + report.as_json(checked)
    assert ak not in shown and sk not in shown
    assert by_check(checked)["modelarts"].level is Level.MISSING  # --on modelarts, and no OBS folder


# --------------------------------------------------------------------------------------------------------------
# inv doctor as a user runs it


def test_inv_doctor_with_every_source_unreachable_ends_within_its_bound_with_exit_8(tmp_path: Path) -> None:
    with silent_server() as slow, serve() as plain:
        scene = write_scene(tmp_path, installer="https://conda.doctor.invalid/miniconda",
                            wheel=f"http://127.0.0.1:{free_port()}/whl", pip_index=f"http://127.0.0.1:{slow}/simple",
                            apt_mirror=f"https://127.0.0.1:{plain.port}/apt", registry=f"127.0.0.1:{free_port()}")
        env = clean_env(DOCKER_HOST=NO_ENGINE, PIP_INDEX_URL="https://pypi.doctor.invalid/simple/")
        result = run_doctor(scene, "--json", "--device", "cpu", env=env, timeout=60)
    assert result.returncode == 8, result.stderr
    document = parsed(result)
    assert (document["ok"], document["exit_code"], document["images"]) == (False, 8, [IMAGE_ID])
    assert document["elapsed_s"] <= document["deadline_s"] + 1.0  # every probe bounded; the slow one too
    found = rows_by_check(document)
    assert found["engine"]["level"] == "missing" and found["engine"]["facts"]["reached"] is False
    stages = {row["facts"]["url"]: (row["facts"]["failed"], row["facts"]["timed_out"])
              for name, row in found.items() if name.startswith("source ")}
    assert stages[f"https://conda.doctor.invalid/miniconda/{INSTALLER_NAME}"] == ("dns", False)
    assert stages[f"http://127.0.0.1:{slow}/simple/"] == ("http", True)
    assert stages[f"https://127.0.0.1:{plain.port}/apt/"] == ("tls", False)
    assert any(url.endswith(WHEEL_NAME) and failed == ("tcp", False) for url, failed in stages.items())
    assert result.stderr.startswith("error: the selected work cannot run here, ")
    assert "engine (" in result.stderr and "source https://conda.doctor.invalid" in result.stderr


def test_inv_doctor_prints_a_table_and_refuses_a_bad_selection_with_exit_2(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, installer="https://conda.doctor.invalid/x", wheel="https://whl.doctor.invalid/x",
                        pip_index="", apt_mirror="", registry=f"127.0.0.1:{free_port()}")
    env = clean_env(DOCKER_HOST=NO_ENGINE, PIP_INDEX_URL="https://pypi.doctor.invalid/simple/")
    table = run_doctor(scene, "--device", "cpu", env=env)
    assert table.returncode == 8
    assert table.stdout.startswith(f"doctor: {IMAGE_ID}: the selected work cannot run")
    assert any(line.startswith("missing  engine ") for line in table.stdout.splitlines())
    wrong = run_doctor(scene, "--only", "nope", env=env)
    assert wrong.returncode == 2 and "nope" in wrong.stderr

