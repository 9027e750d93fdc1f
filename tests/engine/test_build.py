"""Real builds with both backends (marker `engine`); the decisions taken without an engine are tested in
tests/unit/test_build.py.

The torch image is built once per backend (module-scoped fixture) and every assertion reads the real image:
its config, its labels, and what a container of it shows.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelarts_images import pipeline
from modelarts_images.build import builder as build
from modelarts_images.build.builder import BuildResult
from modelarts_images.contract import DEFAULT_USER
from modelarts_images.engine import adapter, cli
from modelarts_images.engine.adapter import DockerEngine
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BaseImageSource,
)
from modelarts_images.errors import BuildError, ConfigError, EngineError
from modelarts_images.model import FetchedImage, docker_arch
from tests.support.engine_tier import (
    TEST_BASE,
    build_options,
    image_spec,
    remove_image,
    run_in,
    small_image,
    unavailable,
)
from tests.support.wheels import make_wheel

BACKENDS = [Backend.DOCKER, Backend.BUILDKIT]


def retagged(fetched: FetchedImage, suffix: str) -> FetchedImage:
    return dataclasses.replace(fetched, image=dataclasses.replace(fetched.image, tag=f"{fetched.image.tag}-{suffix}"))


def fake_docker(directory: Path, *, buildx: bool, client: str) -> str:
    """A real executable that answers like a docker CLI for the two questions discovery asks."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker"
    answer = "echo github.com/docker/buildx v0.12.1 abc; exit 0" if buildx else "exit 1"
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = buildx ]; then {answer}; fi\n'
        f'if [ "$1" = --version ]; then echo "Docker version {client}, build 0123abc"; exit 0; fi\n'
        "exit 1\n")
    path.chmod(0o755)
    return str(path)


def test_buildkit_cli_prefers_buildx_then_an_old_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         engine: DockerEngine) -> None:
    monkeypatch.setattr(cli, "SYSTEM_PLUGIN_DIRS", ())
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "config"))
    new = fake_docker(tmp_path / "new", buildx=False, client="28.2.2")
    old = fake_docker(tmp_path / "old", buildx=False, client="20.10.24+dfsg1")
    plugin = fake_docker(tmp_path / "plugin", buildx=True, client="28.2.2")
    assert cli.find_buildkit_cli([new, old]) == cli.BuildKitCli(path=old, mode=cli.BuildKitMode.LEGACY,
                                                                version="20.10.24+dfsg1")
    # Without a plugin file buildx is asked for only when no old client does; with one, buildx comes first.
    assert cli.find_buildkit_cli([new, old, plugin]).mode is cli.BuildKitMode.LEGACY
    assert cli.find_buildkit_cli([new, plugin]).mode is cli.BuildKitMode.BUILDX
    (tmp_path / "config" / "cli-plugins").mkdir(parents=True)
    (tmp_path / "config" / "cli-plugins" / "docker-buildx").write_text("#!/bin/sh\n")
    assert cli.find_buildkit_cli([new, old, plugin]).mode is cli.BuildKitMode.BUILDX
    # The engine layer says what is missing; the build step turns it into a build failure (exit 4).
    with pytest.raises(EngineError, match="docker-buildx") as caught:
        cli.find_buildkit_cli([new])
    assert "client 28.2.2, no buildx" in str(caught.value)
    monkeypatch.setattr(adapter, "find_buildkit_cli", lambda: cli.find_buildkit_cli([new]))
    # The engine is asked only for the tag's earlier build (there is none); the build stops at the CLI lookup.
    fetched = small_image(tmp_path, "x", "no-buildx")
    with pytest.raises(BuildError, match="docker-buildx") as step_caught:
        pipeline.build_step(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"),
                            # no BuildKit CLI found yet
                            DockerEngine(engine.client, endpoint=engine.endpoint, local=engine.local))
    assert "client 28.2.2, no buildx" in str(step_caught.value) and step_caught.value.exit_code == 4


# --------------------------------------------------------------------------------------------------------------
# The torch image, built for real with each backend


@pytest.fixture(scope="module", params=BACKENDS)
def built(request: pytest.FixtureRequest, engine: DockerEngine, docker_client: Any, fetched_torch: FetchedImage,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BuildResult, FetchedImage]]:
    backend = Backend(request.param)
    fetched = retagged(fetched_torch, str(backend))
    try:
        chosen = build_options(backend, tmp_path_factory.mktemp(f"work-{backend}"),
                         no_cache=os.environ.get("MODELARTS_IMAGES_TEST_NO_CACHE") == "1",
                         base_image=None, platform=None, base_prefix=None)
        result = build.build_image(fetched, chosen, engine)
        print(build.format_result(result))  # shown with -rP / -s: size and layer attribution of the test image
        yield result, fetched
    finally:
        remove_image(docker_client, fetched.image.reference)


@pytest.mark.engine
def test_image_config(built: tuple[BuildResult, FetchedImage], docker_client: Any) -> None:
    result, _ = built
    image = docker_client.images.get(result.reference)
    assert image.id == result.image_id
    config = image.attrs["Config"]
    assert config["User"] == "ma-user"
    assert config["WorkingDir"] == "/home/ma-user"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].split(":")[-1] == f"{DEFAULT_USER.conda_prefix}/bin" and "/usr/bin" in env["PATH"].split(":")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "a CPU entry does not ask for GPUs"


@pytest.mark.engine
def test_image_labels(built: tuple[BuildResult, FetchedImage], docker_client: Any) -> None:
    result, fetched = built
    labels = docker_client.images.get(result.reference).attrs["Config"]["Labels"]
    assert labels["modelarts-images.torch"] == "2.13.0"
    assert labels["modelarts-images.python"] == "3.11"
    assert labels["modelarts-images.cuda"] == "cpu"
    assert labels["org.opencontainers.image.base.name"] == TEST_BASE
    assert labels["modelarts-images.installer"].endswith(f"sha256:{fetched.installer.sha256}")
    torch = fetched.wheels[0]
    assert labels[f"modelarts-images.wheel.{torch.filename}"].endswith(f"sha256:{torch.sha256}")
    for dependency in fetched.closure or ():
        assert labels[f"modelarts-images.dependency.{dependency.filename}"].endswith(f"sha256:{dependency.sha256}")
    for tool in fetched.tools:  # what installed the wheels, though it is not in the image
        assert labels[f"modelarts-images.tool.{tool.filename}"].endswith(f"sha256:{tool.sha256}")
    assert labels["modelarts-images.hermetic"] == "true"


@pytest.mark.engine
def test_container_runs_as_ma_user_with_torch(built: tuple[BuildResult, FetchedImage], docker_client: Any) -> None:
    result, _ = built
    # -W: torch warns on stderr that numpy is missing (torch does not need it; torchvision would bring it)
    python = f"{DEFAULT_USER.conda_prefix}/bin/python -W ignore::UserWarning"
    status, output = run_in(docker_client, result.reference,
                            f'id; pwd; {python} -c "import torch; print(torch.__version__)"; '
                            f"command -v vim curl; test -w {DEFAULT_USER.conda_prefix} && echo conda-writable")
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("uid=1000(ma-user) gid=100(")
    assert lines[1] == "/home/ma-user"
    assert lines[2] == "2.13.0+cpu"
    assert lines[3:5] == ["/usr/bin/vim", "/usr/bin/curl"]
    assert lines[5] == "conda-writable"


@pytest.mark.engine
def test_no_wheel_installer_or_pip_cache_in_the_image(built: tuple[BuildResult, FetchedImage],
                                                      docker_client: Any) -> None:
    result, fetched = built
    ours = [fetched.installer.filename,
            *(item.filename for item in (*fetched.wheels, *(fetched.closure or ()), *fetched.tools))]
    script = ("find / -xdev \\( -name '*.whl' -o -name '*.sh' -path '*installer*' \\) -print 2>/dev/null; "
              "echo ---; ls -d /root/.cache/pip /home/ma-user/.cache/pip /tmp/build /tmp/installer 2>/dev/null; "
              "echo ---; ls -A /tmp")
    status, output = run_in(docker_client, result.reference, script, user="root")
    assert status == 0, output
    found, leftovers, tmp = (part.split() for part in output.split("---"))
    _, base_output = run_in(docker_client, TEST_BASE, "find / -xdev -name '*.whl' -print 2>/dev/null")
    from_base = set(base_output.split())
    assert not [path for path in found if Path(path).name in ours], "a fetched file reached the image"
    assert set(found) <= from_base, f"wheels the base image does not have: {set(found) - from_base}"
    assert leftovers == [] and tmp == []


@pytest.mark.engine
def test_uv_installed_the_wheels_and_left_nothing_behind(built: tuple[BuildResult, FetchedImage],
                                                         docker_client: Any) -> None:
    result, fetched = built
    assert [tool.filename.split("-")[0] for tool in fetched.tools] == ["uv"]
    site = f"{DEFAULT_USER.conda_prefix}/lib/python3.11/site-packages"
    lock = f"{DEFAULT_USER.conda_prefix}/.lock"
    script = (f"ls {site}/torch-*.dist-info {site}/sympy-*.dist-info; echo ---; "
              f"find / -xdev \\( -type f -name uv -o -name uv_cache.json -o -path '{lock}' \\) -print 2>/dev/null")
    status, output = run_in(docker_client, result.reference, script, user="root")
    assert status == 0, output
    listing, leftovers = output.split("---")
    # uv without installer metadata (UV_NO_INSTALLER_METADATA): pip would have written INSTALLER
    assert "RECORD" in listing.split() and "METADATA" in listing.split() and "INSTALLER" not in listing.split()
    assert leftovers.split() == [], "uv, its cache notes or its lock reached the image"


@pytest.mark.engine
def test_summary_attributes_the_largest_layer(built: tuple[BuildResult, FetchedImage], docker_client: Any) -> None:
    result, _ = built
    assert result.size == docker_client.images.get(result.reference).attrs["Size"]
    assert isinstance(result.backend, Backend) and result.backend in BACKENDS and result.duration > 0
    largest = result.layers[0]
    roles = dict(zip((layer.diff_id for layer in result.stack), result.roles, strict=True))
    assert roles[largest.diff_id] == "torch" and not largest.from_base, (result.roles, largest)
    assert largest.size > 300_000_000  # torch
    assert any(layer.from_base for layer in result.layers), "the base image's layer is shown as such"
    assert "built in" in build.format_result(result)
    assert f"({result.backend.value})" in build.format_result(result)


@pytest.mark.engine
def test_a_rebuild_is_served_from_the_cache(built: tuple[BuildResult, FetchedImage], engine: DockerEngine,
                                           tmp_path: Path) -> None:
    result, fetched = built
    again = build.build_image(fetched, build_options(result.backend, tmp_path / "work"), engine)
    assert again.steps_ran == () and again.steps_cached, "every step is taken from the cache"
    assert [layer.diff_id for layer in again.stack] == [layer.diff_id for layer in result.stack]
    if result.backend is Backend.DOCKER:
        # BuildKit's inline cache metadata, which every BuildKit image carries in its config, lists the cache
        # graph in an order of its own: two cached builds may give two configs, and so two ids, of one image
        assert again.image_id == result.image_id


# --------------------------------------------------------------------------------------------------------------
# Small real builds: failures, indexes, preflight


@pytest.mark.engine
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_step_is_reported_with_its_log(backend: Backend, engine: DockerEngine, docker_client: Any,
                                                 test_base: str, run_id: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken-installer.sh"
    broken.write_text("#!/bin/bash\necho 'stand-in installer: unpacking'\necho 'stand-in installer: disk on fire' >&2\n"
                      "exit 1\n")
    fetched = small_image(tmp_path, run_id, f"broken-{backend}", installer=broken)
    try:
        # The engine's EngineError, as the build step raises it: a build failure (exit 4), same message.
        with pytest.raises(BuildError) as caught:
            pipeline.build_step(fetched, build_options(backend, tmp_path / "work"), engine)
    finally:
        remove_image(docker_client, fetched.image.reference)
    message = str(caught.value)
    assert caught.value.exit_code == 4 and isinstance(caught.value.__cause__, EngineError)
    assert "conda-install.sh" in message.split("\n", 1)[0], f"the failing step is not named: {message}"
    assert "stand-in installer: unpacking" in message and "disk on fire" in message
    assert f"/installer/{broken.name} failed" in message, "the log's tail names the installer"
    assert re.search(r"non-zero code: 1|exit code: 1", message)


class _Index(ThreadingHTTPServer):
    """A PEP 503 simple index over plain HTTP, with optional basic auth, that records who asked."""

    daemon_threads = True

    def __init__(self, host: str, files: dict[str, bytes], credentials: str | None) -> None:
        super().__init__((host, 0), _IndexHandler)
        self.files = files
        self.expected = None if credentials is None else "Basic " + base64.b64encode(credentials.encode()).decode()
        self.seen: list[tuple[str, bool]] = []


class _IndexHandler(BaseHTTPRequestHandler):
    server: _Index

    def do_GET(self) -> None:
        authorized = self.server.expected is None or self.headers.get("Authorization") == self.server.expected
        self.server.seen.append((self.path, authorized))
        if not authorized:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.end_headers()
            return
        parts = [part for part in self.path.split("/") if part]
        if len(parts) == 2 and parts[0] == "simple":
            project = parts[1].replace("_", "-")
            links = "".join(f'<a href="/files/{name}#sha256={hashlib.sha256(data).hexdigest()}">{name}</a>\n'
                            for name, data in self.server.files.items()
                            if name.split("-")[0].replace("_", "-") == project)
            body = f"<html><body>\n{links}</body></html>\n".encode()
        elif len(parts) == 2 and parts[0] == "files" and parts[1] in self.server.files:
            body = self.server.files[parts[1]]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if parts[0] == "simple" else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        """Quiet."""


def bridge_gateway(client: Any) -> str:
    """The host's address on the engine's default bridge; engines that do not list it use the subnet's first."""
    (config,) = client.networks.get("bridge").attrs["IPAM"]["Config"]
    return str(config.get("Gateway") or next(ipaddress.ip_network(config["Subnet"]).hosts()))


@pytest.fixture
def index(docker_client: Any) -> Iterator[_Index]:
    """The index, listening on the engine's bridge gateway so build containers reach it."""
    try:
        gateway = bridge_gateway(docker_client)
        server = _Index(gateway, {"demo_dep-1.0-py3-none-any.whl": make_wheel("demo_dep-1.0-py3-none-any.whl")},
                        credentials=None)
    except (OSError, KeyError, IndexError, ValueError) as error:
        unavailable(f"cannot serve an index on the engine's bridge gateway (remote engine?): {error!r}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.engine
def test_without_a_closure_the_dependencies_come_from_pip_index(index: _Index, engine: DockerEngine,
                                                                docker_client: Any, test_base: str, run_id: str,
                                                                tmp_path: Path) -> None:
    host, port = index.server_address[:2]
    fetched = small_image(tmp_path, run_id, "index", pip_index=f"http://{host!s}:{port}/simple/", closure=False)
    try:
        result = build.build_image(fetched, build_options(Backend.DOCKER, tmp_path / "work"), engine)
        status, output = run_in(docker_client, result.reference, "python -c 'import demo_dep, demo_app; print(1)'")
        assert status == 0, output
    finally:
        remove_image(docker_client, fetched.image.reference)
    assert ("/files/demo_dep-1.0-py3-none-any.whl", True) in index.seen


@pytest.mark.engine
def test_an_index_with_credentials_goes_in_as_a_buildkit_secret(index: _Index, engine: DockerEngine,
                                                                docker_client: Any, test_base: str, run_id: str,
                                                                tmp_path: Path) -> None:
    password = f"pw-{run_id}-s3cret"
    index.expected = "Basic " + base64.b64encode(f"robot:{password}".encode()).decode()
    host, port = index.server_address[:2]
    fetched = small_image(tmp_path, run_id, "secret", pip_index=f"http://robot:{password}@{host!s}:{port}/simple/",
                          closure=False)
    try:
        result = build.build_image(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"), engine)
        status, output = run_in(docker_client, result.reference,
                                f"python -c 'import demo_dep; print(1)' && "
                                f"! grep -rqsF -- '{password}' /etc /home /tmp /root "
                                f"{DEFAULT_USER.conda_prefix} && echo clean",
                                user="root")
        assert status == 0 and output.split() == ["1", "clean"], output
        history = docker_client.api.history(result.image_id)
        attrs = docker_client.api.inspect_image(result.image_id)
    finally:
        remove_image(docker_client, fetched.image.reference)
    assert ("/files/demo_dep-1.0-py3-none-any.whl", True) in index.seen, "pip did not use the credentials"
    assert password not in repr(history) and password not in repr(attrs)
    context_files = [path for path in (tmp_path / "work").rglob("*") if path.is_file()]
    assert context_files and not [path for path in context_files if password.encode() in path.read_bytes()]


@pytest.mark.engine
def test_preflight_finds_the_local_base(engine: DockerEngine, test_base: str, tmp_path: Path) -> None:
    # the test base is made for the engine's own architecture
    assert engine.base_image(test_base) == BaseImage(reference=test_base, source=BaseImageSource.LOCAL,
                                                     arch=docker_arch(engine.architecture()))
    pipeline.check_bases_step([image_spec(tag="t")], build_options(Backend.BUILDKIT, tmp_path), engine)


@pytest.mark.engine
def test_preflight_explains_deleted_nvidia_tags(engine: DockerEngine, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        pipeline.check_bases_step([image_spec(tag="t", base_image="nvidia/cuda:10.2-runtime-ubuntu18.04")],
                                  build_options(Backend.BUILDKIT, tmp_path), engine)
    message = str(caught.value)
    assert "NVIDIA deleted nvidia/cuda:10.2-runtime-ubuntu18.04" in message and "ubuntu:18.04" in message
    assert caught.value.exit_code == 2


@pytest.mark.engine
def test_preflight_names_a_missing_base(engine: DockerEngine, tmp_path: Path) -> None:
    # Docker Hub: missing there when it answers (a configuration error), unreachable without a network (a build
    # error); either way the message names the base and the way out.
    with pytest.raises((BuildError, ConfigError)) as caught:
        pipeline.check_bases_step([image_spec(tag="t", base_image="modelarts-test-base:no-such-tag")],
                                  build_options(Backend.BUILDKIT, tmp_path), engine)
    message = str(caught.value)
    assert message.startswith("base image modelarts-test-base:no-such-tag: ")
    if "cannot reach Docker Hub" in message:  # no network: the way out is a mirror, or the image loaded by hand
        assert "set base_prefix" in message and "--base-prefix" in message and "docker load" in message
    else:
        assert "not in the engine" in message and "--base-prefix" in message
    assert caught.value.exit_code == (2 if isinstance(caught.value, ConfigError) else 4)


class _Registry(ThreadingHTTPServer):
    """A registry that answers (plain HTTP on loopback, which the engine treats as insecure) and has no image."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)


class _RegistryHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path.rstrip("/") == "/v2"
        body = b"{}" if found else b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
        """Quiet."""


@pytest.fixture
def empty_registry() -> Iterator[str]:
    """host:port of a registry on loopback that answers for every image that it does not have it."""
    server = _Registry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.engine
def test_a_base_its_registry_does_not_have_is_a_config_error(engine: DockerEngine, empty_registry: str,
                                                             tmp_path: Path) -> None:
    reference = f"{empty_registry}/modelarts-test-base:no-such-tag"
    found = engine.base_image(reference)
    if found.source is BaseImageSource.UNREACHABLE:
        unavailable(f"the engine cannot reach a registry on this host's loopback (remote engine?): {found.reason}")
    assert found.source is BaseImageSource.MISSING
    with pytest.raises(ConfigError) as caught:
        pipeline.check_bases_step([image_spec(tag="t", base_image=reference)],
                                  build_options(Backend.BUILDKIT, tmp_path), engine)
    assert caught.value.exit_code == 2
    assert f"base image {reference}: not in the engine, and its registry does not have it" in str(caught.value)
    assert "--base-prefix" in str(caught.value)


@pytest.mark.engine
def test_a_base_whose_registry_cannot_be_reached_is_a_build_error(engine: DockerEngine, tmp_path: Path) -> None:
    with socket.socket() as bound:  # bound, never listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        reference = f"127.0.0.1:{bound.getsockname()[1]}/modelarts-test-base:no-such-tag"
        with pytest.raises(BuildError) as caught:
            pipeline.check_bases_step([image_spec(tag="t", base_image=reference)],
                                      build_options(Backend.BUILDKIT, tmp_path), engine)
    assert caught.value.exit_code == 4
    assert f"base image {reference}: not in the engine, and its registry cannot be reached" in str(caught.value)
    assert "--base-prefix" in str(caught.value)


@pytest.mark.engine
def test_a_base_the_engine_does_not_list_leaves_layers_unmarked(engine: DockerEngine, test_base: str) -> None:
    # BuildKit keeps a base it pulled in its own store, where the engine's image list does not show it.
    summary = engine.summary(test_base, base_image="modelarts-test-base:pulled-by-buildkit")
    assert summary.layers and not any(layer.from_base for layer in summary.layers)
    marked = engine.summary(test_base, base_image=test_base)
    assert all(layer.from_base for layer in marked.layers)
