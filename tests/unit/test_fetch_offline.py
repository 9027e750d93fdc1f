"""`--offline`: no request to any server (package index, wheel pages, downloads, the install tool's lookup) and
no pin changed (versions.lock byte for byte as it was); whatever the cache and versions.lock cannot answer is a
FetchError naming the image and what is missing. A real package index on loopback, counting what it is asked,
and the host's real pip pointed at it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images.errors import FetchError
from modelarts_images.fetch import lockfile
from modelarts_images.fetch.cache import Cache
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.http import pip_resolver
from modelarts_images.http.pip_resolver import resolve_tools  # the real one: tests/unit/conftest.py patches it
from modelarts_images.model import Artifact, FetchedImage, ImageSpec, Requirement, Stack
from modelarts_images.options import FetchOptions
from tests.conftest import ROOT
from tests.support.http_server import FileServer
from tests.support.wheels import make_wheel

TORCH = "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
TORCH_PATH = "/files/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl"
TYPING = "typing_extensions-4.12.2-py3-none-any.whl"
SIX = "six-1.17.0-py2.py3-none-any.whl"
DOCOPT = "docopt-0.6.2.tar.gz"
UV = f"uv-{pip_resolver.INSTALL_TOOL.split('==')[1]}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
INSTALLER = b"#!/bin/bash\necho stand-in installer\n"
WHEEL_INDEX = "https://download.pytorch.org/whl/"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sdist(filename: str, pyproject: str) -> bytes:
    """A source distribution whose pyproject.toml declares its build requirements."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, text in (("setup.py", "pass\n"), ("pyproject.toml", pyproject)):
            data = text.encode()
            info = tarfile.TarInfo(f"{filename.removesuffix('.tar.gz')}/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def index(server: FileServer, monkeypatch: pytest.MonkeyPatch,
          no_install_tool_from_the_host_index: None) -> FileServer:
    """The only package index the host's pip reads (a simple index on loopback), with everything an entry with a
    stack resolves to; the install tool is looked up for real there (conftest's stand-in is undone)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no host configuration: no other index, no find-links
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # pip's HTTP cache would answer for the index, uncounted
    monkeypatch.setenv("PIP_INDEX_URL", server.url("/simple/"))
    monkeypatch.setattr(pip_resolver, "resolve_tools", resolve_tools)
    files = {"stand-in.sh": INSTALLER, TYPING: make_wheel(TYPING), SIX: make_wheel(SIX), UV: make_wheel(UV),
             DOCOPT: sdist(DOCOPT, '[build-system]\nrequires = ["hatchling>=1.2"]\n')}
    for name, data in files.items():
        server.add(f"/files/{name}", data)
    server.add(TORCH_PATH, make_wheel(TORCH, requires=("typing-extensions",)))
    for project, name in (("typing-extensions", TYPING), ("six", SIX), ("uv", UV)):
        page = f'<a href="/files/{name}#sha256={sha(files[name])}">{name}</a>\n'
        server.add(f"/simple/{project}/", page.encode(), content_type="text/html")
    return server


def entry(index: FileServer, *requirements: str, build_from_source: tuple[str, ...] = (),
          derived: bool = False, pinned: bool = True) -> ImageSpec:
    """The test entry: torch from versions.yaml (or derived from the wheel index), the stack `requirements`."""
    def artifact(path: str) -> Artifact:
        return Artifact(url=index.url(path), sha256=sha(index.routes[path].body) if pinned else None)

    return ImageSpec(
        id="test-cpu", default=False, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag="t", registry="r", organization="o", repository="p", base_image="modelarts-test-base:bookworm",
        pip_index=index.url("/simple/"), apt_mirror="http://m", installer=artifact("/files/stand-in.sh"),
        wheels=() if derived else (artifact(TORCH_PATH),),
        stack=Stack(requirements=tuple(Requirement(text=text, name=text.split("==")[0]) for text in requirements),
                    build_from_source=build_from_source))


def options(tmp_path: Path, index: FileServer, **changes: object) -> FetchOptions:
    values: dict[str, object] = {"cache_dir": tmp_path / "cache", "lock_path": tmp_path / "versions.lock",
                                 "mirrors": {WHEEL_INDEX: index.url("/whl/")}, **changes}
    return FetchOptions(**values)  # type: ignore[arg-type]


def offline(fetch: FetchOptions) -> FetchOptions:
    return dataclasses.replace(fetch, offline=True)


def stamp(path: Path) -> tuple[bytes, int] | None:
    return (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None


@contextmanager
def nothing_asked_nothing_pinned(index: FileServer, lock: Path) -> Iterator[None]:
    """The block makes no request to the index and leaves versions.lock as it was, to the byte and the mtime."""
    asked = len(index.requests())
    before = stamp(lock)
    yield
    assert [record.target for record in index.requests()[asked:]] == []
    assert stamp(lock) == before, "versions.lock was written"


def refused(index: FileServer, images: list[ImageSpec], fetch: FetchOptions) -> str:
    with nothing_asked_nothing_pinned(index, fetch.lock_path), pytest.raises(FetchError) as caught:
        fetch_images(images, fetch)
    return str(caught.value)


def lock_entry(fetch: FetchOptions) -> dict[str, Any]:
    loaded: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load(fetch.lock_path.read_text("utf-8"))
    return loaded["images"]["test-cpu"]


def edit_lock(fetch: FetchOptions, *keys: str, strip_sizes: bool = False) -> None:
    """versions.lock with `keys` of the entry gone (as an older release or `--no-closure` wrote it)."""
    document = yaml.safe_load(fetch.lock_path.read_text("utf-8"))
    for key in keys:
        del document["images"]["test-cpu"][key]
    if strip_sizes:
        for value in document["images"]["test-cpu"].values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    item.pop("size", None)
    fetch.lock_path.write_text(lockfile.HEADER + yaml.safe_dump(document, sort_keys=False), "utf-8")


# --------------------------------------------------------------------------------------------------------------
# What the lock does not pin: an error before anything is asked, and the lock left alone


def test_a_stack_not_resolved_yet_is_an_error_naming_it(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], online)  # the entry before its stack: cached and locked
    with_stack = entry(index, "six==1.17.0")

    message = refused(index, [with_stack], offline(online))

    assert message.startswith("test-cpu: --offline, and ")
    assert "the stack (six==1.17.0)" in message and "`inv fetch` (or `inv lock`) online once" in message
    assert "versions.yaml changed since" in message


def test_a_stack_entry_never_locked_is_refused_before_the_cache_is_looked_at(index: FileServer,
                                                                           tmp_path: Path) -> None:
    message = refused(index, [entry(index, "six==1.17.0")], offline(options(tmp_path, index)))

    assert "test-cpu: --offline, and versions.lock has no entry for it" in message
    assert "the stack (six==1.17.0)" in message and "the dependency wheels of torch" in message
    assert not (tmp_path / "versions.lock").exists()


def test_a_closure_left_out_by_no_closure_and_its_tool_are_an_error(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], dataclasses.replace(online, closure=False))
    assert lock_entry(online)["closure"] is None and "tools" not in lock_entry(online)

    message = refused(index, [entry(index)], offline(online))

    assert "the dependency wheels of torch (an earlier --no-closure left them out" in message
    assert f"the install tool {pip_resolver.INSTALL_TOOL}" in message and "--no-closure" in message


def test_with_no_closure_an_entry_locked_without_one_fetches_offline(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index, closure=False)
    fetch_images([entry(index)], online)

    with nothing_asked_nothing_pinned(index, online.lock_path):
        [fetched], summary = fetch_images([entry(index)], offline(online))

    assert fetched.closure is None and fetched.tools == () and summary.reused == 2 and summary.lock_updated == ()


def test_an_entry_locked_before_tools_needs_its_tool_pinned(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], online)
    edit_lock(online, "tools")  # as an entry was written before there were tools

    message = refused(index, [entry(index)], offline(online))
    assert message.startswith("test-cpu: --offline, and versions.lock does not pin ")
    assert f"the install tool {pip_resolver.INSTALL_TOOL} (tools:)" in message
    assert "dependency wheels" not in message  # those are pinned

    with nothing_asked_nothing_pinned(index, online.lock_path):  # --locked: the lock as it is, pip installs
        [fetched], _ = fetch_images([entry(index)], dataclasses.replace(offline(online), locked=True))
    assert fetched.tools == () and [item.filename for item in fetched.closure or ()] == [TYPING]


def test_refresh_offline_is_refused(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], online)

    message = refused(index, [entry(index)], dataclasses.replace(offline(online), refresh=True))

    assert message.startswith("test-cpu: --offline, and ") and "resolving it again" in message


def test_derived_wheels_are_not_looked_up(index: FileServer, tmp_path: Path) -> None:
    """The wheel index is the mirror on loopback: a lookup would be counted."""
    message = refused(index, [entry(index, derived=True)], offline(options(tmp_path, index, closure=False)))

    assert message.startswith("test-cpu: --offline, and versions.lock has no entry for it")
    assert f"the torch==2.13.0 wheel (looked up at {WHEEL_INDEX}cpu/torch/)" in message


def test_a_stale_entry_with_everything_in_versions_yaml_fetches_but_pins_nothing(
        index: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    online = options(tmp_path, index, closure=False)
    fetch_images([entry(index)], online)
    moved = dataclasses.replace(entry(index), python="3.12")  # another entry now; its files are pinned and cached

    with nothing_asked_nothing_pinned(index, online.lock_path), caplog.at_level("WARNING"):
        [fetched], summary = fetch_images([moved], offline(online))

    assert fetched.installer.sha256 == sha(INSTALLER) and summary.lock_updated == ()
    assert "test-cpu: versions.lock not updated (--offline pins nothing)" in caplog.text


# --------------------------------------------------------------------------------------------------------------
# A fully locked and cached entry: fetched from the cache alone


def test_a_locked_and_cached_stack_entry_fetches_offline(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    image = entry(index, "six==1.17.0")
    [first], _ = fetch_images([image], online)  # online: resolved with the real pip, pinned, cached
    locked = lock_entry(online)
    assert [item["url"] for item in locked["stack"]] == [index.url(f"/files/{SIX}")]
    assert [item["url"] for item in locked["tools"]] == [index.url(f"/files/{UV}")]

    for fetch in (offline(online), dataclasses.replace(offline(online), locked=True)):
        with nothing_asked_nothing_pinned(index, online.lock_path):
            [again], summary = fetch_images([image], fetch)
        assert summary.fetched == 0 and summary.bytes_transferred == 0 and summary.lock_updated == ()
        assert files(again) == files(first)


def files(fetched: FetchedImage) -> list[tuple[str, str]]:
    everything = (fetched.installer, *fetched.wheels, *(fetched.closure or ()), *fetched.stack, *fetched.tools)
    return [(item.filename, item.sha256) for item in everything]


def test_sizes_missing_from_the_lock_are_not_added_offline(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], online)
    edit_lock(online, strip_sizes=True)  # an older lock: the next online fetch would record them

    with nothing_asked_nothing_pinned(index, online.lock_path):
        [fetched], summary = fetch_images([entry(index)], offline(online))

    assert summary.lock_updated == () and [item.filename for item in fetched.closure or ()] == [TYPING]


# --------------------------------------------------------------------------------------------------------------
# What the cache does not hold


def test_a_wheel_missing_from_the_cache_is_named(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    [fetched], _ = fetch_images([entry(index)], online)
    (typing_extensions,) = fetched.closure or ()
    typing_extensions.path.unlink()

    message = refused(index, [entry(index)], offline(online))

    assert message == (f"test-cpu: --offline, and {TYPING} is not in the cache ({index.url(f'/files/{TYPING}')}); "
                       "run `inv fetch` online once to fetch it")


def test_a_cached_file_that_fails_its_hash_is_named(index: FileServer, tmp_path: Path) -> None:
    online = options(tmp_path, index)
    fetch_images([entry(index)], online)
    blob = Cache(online.cache_dir).blob(sha(INSTALLER))
    blob.chmod(0o644)
    blob.write_bytes(b"#!/bin/bash\necho not the installer\n")

    message = refused(index, [entry(index)], dataclasses.replace(offline(online), verify_cache=True))

    assert "test-cpu: --offline, and stand-in.sh is not in the cache" in message


def test_a_file_nothing_pins_is_named(index: FileServer, tmp_path: Path) -> None:
    message = refused(index, [entry(index, pinned=False)], offline(options(tmp_path, index, closure=False)))

    assert message.startswith("test-cpu: --offline, and nothing pins the sha256 of ")
    assert "neither versions.yaml nor versions.lock" in message and "run `inv fetch` online once" in message


def test_build_requirements_of_an_sdist_not_pinned_are_named(index: FileServer, tmp_path: Path) -> None:
    """A stack with an sdist, locked before its build requirements were: fetch would ask pip for them."""
    image = entry(index, "docopt==0.6.2", build_from_source=("docopt",))

    def pinned(path: str) -> Artifact:
        return Artifact(url=index.url(path), sha256=sha(index.routes[path].body), size=len(index.routes[path].body))

    online = options(tmp_path, index)
    lockfile.write(online.lock_path, {"test-cpu": lockfile.LockedImage(
        inputs=lockfile.inputs_of(image), installer=pinned("/files/stand-in.sh"), wheels=(pinned(TORCH_PATH),),
        closure=(pinned(f"/files/{TYPING}"),), stack=(pinned(f"/files/{DOCOPT}"),), tools=(pinned(f"/files/{UV}"),))})
    fetch_images([image], dataclasses.replace(online, locked=True))  # fills the cache, resolves nothing

    message = refused(index, [image], offline(online))
    assert message == ("test-cpu: --offline, and versions.lock does not pin the wheels that building "
                       f"{DOCOPT} needs (hatchling>=1.2); run `inv fetch` (or `inv lock`) online once to pin what is "
                       "missing")

    with nothing_asked_nothing_pinned(index, online.lock_path):
        [fetched], _ = fetch_images([image], dataclasses.replace(offline(online), locked=True))
    assert [item.filename for item in fetched.stack] == [DOCOPT] and fetched.build_deps == ()


# --------------------------------------------------------------------------------------------------------------
# End to end: the task's exit code and message


def test_inv_fetch_offline_exits_3_with_one_message(index: FileServer, tmp_path: Path) -> None:
    torch = index.routes[TORCH_PATH].body
    (tmp_path / "versions.yaml").write_text(f"""
images:
  - id: test-cpu
    python: "3.11"
    cuda: cpu
    torch: "2.13.0"
    base_image: modelarts-test-base:bookworm
    pip_index: {index.url("/simple/")}
    installer:
      url: {index.url("/files/stand-in.sh")}
      sha256: {sha(INSTALLER)}
    wheels:
      - url: {index.url(TORCH_PATH)}
        sha256: {sha(torch)}
    packages: ["six==1.17.0"]
""", "utf-8")
    config = tmp_path / "invoke-test.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {"cache_dir": str(tmp_path / "cache"), "organization": "test"}}))

    with nothing_asked_nothing_pinned(index, tmp_path / "versions.lock"):
        result = subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), "fetch", "--offline",
                                 "--versions", str(tmp_path / "versions.yaml")],
                                cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: test-cpu: --offline, and versions.lock has no entry for it")
    assert "the stack (six==1.17.0)" in result.stderr and "Traceback" not in result.stderr
