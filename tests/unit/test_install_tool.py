"""The install tool (uv): looked up for the image's platform on a local package index by the host's pip, pinned in
versions.lock, put beside the wheels it installs, and unpacked from its wheel by layers.py in the build."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelarts_images.build import context
from modelarts_images.errors import ConfigError
from modelarts_images.fetch import lockfile
from modelarts_images.fetch.fetcher import fetch_images, locked_plan
from modelarts_images.http import pip_resolver
from modelarts_images.http.pip_resolver import resolve_tools  # the real one: tests/unit/conftest.py patches it
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import FetchOptions
from tests.conftest import ROOT
from tests.support.http_server import FileServer, serve
from tests.support.wheels import make_wheel
from tests.unit.test_fetch_failures import INSTALLER, TORCH, TORCH_PATH, sha, spec

VERSION = pip_resolver.INSTALL_TOOL.split("==")[1]
UV = f"uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
UV_PAGE = "/simple/uv/"


def uv_wheel(program: bytes = b"#!/bin/sh\necho uv\n") -> bytes:
    """A wheel laid out as uv's is: its program under uv-X.data/scripts/."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr(f"uv-{VERSION}.data/scripts/uv", program)
        archive.writestr(f"uv-{VERSION}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: uv\nVersion: {VERSION}\n"
                                                            "Requires-Python: >=3.8\n")
        archive.writestr(f"uv-{VERSION}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        archive.writestr(f"uv-{VERSION}.dist-info/RECORD", "")
    return data.getvalue()


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A package index on loopback holding uv's wheel, the only index the host's pip reads."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no host configuration: no other index, no find-links
    with serve() as server:
        wheel = uv_wheel()
        server.add(f"/files/{UV}", wheel)
        page = f'<a href="/files/{UV}#sha256={sha(wheel)}" data-requires-python="&gt;=3.8">{UV}</a>'
        server.add(UV_PAGE, page.encode(), content_type="text/html")
        server.add("/files/stand-in.sh", INSTALLER)
        monkeypatch.setenv("PIP_INDEX_URL", server.url("/simple/"))
        yield server


def image(server: FileServer, python: str = "3.11") -> ImageSpec:
    torch = make_wheel(TORCH)
    server.add(TORCH_PATH, torch)
    return dataclasses.replace(spec(Artifact(url=server.url("/files/stand-in.sh"), sha256=sha(INSTALLER)),
                                    (Artifact(url=server.url(TORCH_PATH), sha256=sha(torch)),)), python=python)


def test_the_tool_is_resolved_for_the_image_from_the_index(index: FileServer) -> None:
    (artifact,) = resolve_tools(image(index))

    assert artifact.filename == UV
    assert artifact.url == index.url(f"/files/{UV}")
    assert artifact.sha256 == sha(index.routes[f"/files/{UV}"].body)


def test_a_python_the_tool_does_not_serve_is_not_looked_up(index: FileServer) -> None:
    assert resolve_tools(image(index, python="3.7")) == ()
    assert not index.requests(UV_PAGE)


def test_an_index_without_the_tool_leaves_the_install_to_pip(index: FileServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    index.routes[UV_PAGE].status = 404
    with caplog.at_level(logging.INFO, logger=pip_resolver.__name__):
        assert resolve_tools(image(index)) == ()
    assert f"test-cpu: no {pip_resolver.INSTALL_TOOL}" in caplog.text and "with pip" in caplog.text


def test_fetch_pins_the_tool_once_and_gives_it_to_the_build(index: FileServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pip_resolver, "resolve_tools", resolve_tools)
    options = FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock")
    entry = image(index)

    [fetched], _ = fetch_images([entry], options)
    [again], summary = fetch_images([entry], options)

    (tool,) = fetched.tools
    assert tool.filename == UV and tool.path.read_bytes() == index.routes[f"/files/{UV}"].body
    locked = yaml.safe_load(options.lock_path.read_text())["images"]["test-cpu"]
    size = tool.path.stat().st_size
    assert locked["tools"] == [{"url": index.url(f"/files/{UV}"), "sha256": tool.sha256, "size": size}]
    assert again.tools == fetched.tools and summary.lock_updated == ()
    assert len(index.requests(UV_PAGE)) == 1  # pinned: not looked up again
    planned = locked_plan(entry, options)
    assert planned is not None and [item.sha256 for item in planned.tools] == [tool.sha256]


def test_an_entry_locked_before_tools_gets_its_tool_once(index: FileServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    options = FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock")
    entry = image(index)
    fetch_images([entry], options)
    document = yaml.safe_load(options.lock_path.read_text())
    del document["images"]["test-cpu"]["tools"]  # as the entry was written before there were tools
    options.lock_path.write_text(yaml.safe_dump(document))
    assert locked_plan(entry, options) is None
    assert locked_plan(entry, dataclasses.replace(options, locked=True)) is not None

    monkeypatch.setattr(pip_resolver, "resolve_tools", resolve_tools)
    [locked_fetch], _ = fetch_images([entry], dataclasses.replace(options, locked=True))
    [fetched], summary = fetch_images([entry], options)

    assert locked_fetch.tools == ()  # --locked installs with what the lock pins: pip
    assert [tool.filename for tool in fetched.tools] == [UV] and summary.lock_updated == ("test-cpu",)


def test_a_tool_entry_that_is_not_a_list_is_refused_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "versions.lock"
    path.write_text("images:\n  a:\n    inputs: x\n    installer: {url: 'https://h/i.sh', sha256: '" + "a" * 64 + "'}\n"
                    "    wheels: []\n    closure: []\n    tools: {url: 'https://h/uv.whl'}\n")
    with pytest.raises(ConfigError, match=r"versions.lock: a.tools: must be a list"):
        lockfile.read(path)


def fetched_with(tmp_path: Path, closure: list[str]) -> FetchedImage:
    files = {}
    for name in [TORCH, UV, *closure]:
        path = tmp_path / "cache" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(make_wheel(name) if name != UV else uv_wheel())
        files[name] = FetchedFile(filename=name, path=path, url=f"https://h/{name}", sha256=sha(path.read_bytes()))
    installer = tmp_path / "cache" / "stand-in.sh"
    installer.write_bytes(INSTALLER)
    entry = spec(Artifact(url="https://h/stand-in.sh", sha256=sha(INSTALLER)), ())
    return FetchedImage(image=entry, installer=FetchedFile(filename="stand-in.sh", path=installer,
                                                           url="https://h/stand-in.sh", sha256=sha(INSTALLER)),
                        wheels=(files[TORCH],), closure=tuple(files[name] for name in closure), tools=(files[UV],))


@pytest.mark.parametrize(("closure", "in_cuda"), [(["filelock-3.0-py3-none-any.whl"], False),
                                                  (["nvidia_nccl_cu12-2.0-py3-none-manylinux_2_17_x86_64.whl"], True)])
def test_the_tool_lies_beside_the_wheels_it_installs(tmp_path: Path, closure: list[str], in_cuda: bool) -> None:
    fetched = fetched_with(tmp_path, closure)

    built = context.assemble(fetched, tmp_path / "work")

    assert [path.name for path in (built / "torch" / "tools").iterdir()] == [UV]
    assert [path.name for path in (built / "cuda" / "tools").iterdir()] == ([UV] if in_cuda else [])
    assert (built / "torch" / "tools" / UV).stat().st_ino == fetched.tools[0].path.stat().st_ino  # a hard link
    digests = dict(context.bundle_digests(fetched, built, context.served_bundles()))
    other = dataclasses.replace(fetched, tools=())
    assert digests["TORCH_INPUTS"] != dict(context.bundle_digests(other, context.assemble(other, tmp_path / "w2"),
                                                                  context.served_bundles()))["TORCH_INPUTS"]


def layers_tool(wheel: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MA_USER": "ma-user", "MA_UID": "1000", "MA_GID": "100", "SOURCE_DATE_EPOCH": "0"}
    return subprocess.run([sys.executable, "-S", "-s", str(ROOT / "context" / "layers.py"), "tool", str(wheel),
                           str(directory)], env=env, capture_output=True, text=True, check=False)


def test_layers_unpacks_the_tools_program(tmp_path: Path) -> None:
    wheel = tmp_path / UV
    wheel.write_bytes(uv_wheel(b"#!/bin/sh\necho the program\n"))

    result = layers_tool(wheel, tmp_path)

    assert result.returncode == 0, result.stderr
    program = Path(result.stdout.strip())
    assert program == tmp_path / "uv" and stat.S_IMODE(program.stat().st_mode) == 0o755
    assert subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout == "the program\n"


def test_layers_refuses_a_wheel_without_the_program(tmp_path: Path) -> None:
    wheel = tmp_path / UV
    wheel.write_bytes(make_wheel(UV))

    result = layers_tool(wheel, tmp_path)

    assert result.returncode != 0 and f"{UV} has no program uv" in result.stderr
    assert not (tmp_path / "uv").exists()

