"""The build context: pip.conf rendering, zero-copy assembly from the cache, the tar the classic builder gets."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pytest

from modelarts_images.build import builder, context
from modelarts_images.engine import builds, cli
from modelarts_images.engine.api import Backend, BuildRequest, RegistryLogin
from modelarts_images.errors import ConfigError
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.shared import files

ROOT = Path(__file__).resolve().parents[2]


def spec(**overrides: object) -> ImageSpec:
    values: dict[str, object] = {
        "id": "pytorch-2.13.0-cpu", "default": True, "python": "3.11", "cuda": "cpu", "torch": "2.13.0",
        "torchvision": None, "torchaudio": None, "tag": "2.13.0-cpu", "registry": "swr.example.com",
        "organization": "demo", "repository": "pytorch", "base_image": "ubuntu:22.04",
        "pip_index": "https://repo.huaweicloud.com/repository/pypi/simple", "apt_mirror": "http://repo.huaweicloud.com",
        "installer": Artifact(url="https://example.com/Miniconda3-py311_23.5.2-0-Linux-x86_64.sh", sha256=None),
        "wheels": (),
    }
    values.update(overrides)
    return ImageSpec(**values)  # type: ignore[arg-type]


def cached(cache: Path, filename: str, data: bytes) -> FetchedFile:
    """A file stored the way the cache stores it: named by its sha256, not by its file name."""
    digest = hashlib.sha256(data).hexdigest()
    path = cache / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FetchedFile(filename=filename, path=path, url=f"https://example.com/{filename}", sha256=digest)


def fetched_image(cache: Path, *, closure: bool = True, **overrides: object) -> FetchedImage:
    return FetchedImage(
        image=spec(**overrides),
        installer=cached(cache, "Miniconda3-py311_23.5.2-0-Linux-x86_64.sh", b"#!/bin/sh\necho installer\n"),
        wheels=(cached(cache, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", b"torch" * 1000),),
        closure=(cached(cache, "sympy-1.14.0-py3-none-any.whl", b"sympy"),
                 cached(cache, "nvidia_nccl_cu12-2.27.3-py3-none-manylinux2014_x86_64.whl", b"nccl"),
                 cached(cache, "mpmath-1.3.0-py3-none-any.whl", b"mpmath")) if closure else None,
    )


def tree(root: Path) -> dict[str, bytes | None]:
    return {path.relative_to(root).as_posix(): (path.read_bytes() if path.is_file() else None)
            for path in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------------------------------------------
# pip.conf


def test_pip_conf_as_the_recipe_wrote_it() -> None:
    assert context.render_pip_conf("https://repo.huaweicloud.com/repository/pypi/simple") == (
        "[global]\n"
        "index-url = https://repo.huaweicloud.com/repository/pypi/simple\n"
        "trusted-host = repo.huaweicloud.com\n"
        "timeout = 120\n"
    )


def test_pip_conf_trusts_the_host_without_port_or_credentials() -> None:
    text = context.render_pip_conf("http://user:s3cret@10.0.0.5:8080/simple/")
    assert "index-url = http://user:s3cret@10.0.0.5:8080/simple/\n" in text
    assert "trusted-host = 10.0.0.5\n" in text


def test_pip_conf_without_an_index_keeps_pip_default() -> None:
    assert context.render_pip_conf("") == "[global]\ntimeout = 120\n"


@pytest.mark.parametrize("bad", ["https://example.com/simple\n[global]\nindex-url = http://evil", "not a url"])
def test_pip_conf_refuses_what_is_not_one_url(bad: str) -> None:
    with pytest.raises(ConfigError, match="pip_index"):
        context.render_pip_conf(bad)


# --------------------------------------------------------------------------------------------------------------
# Assembly


def test_context_holds_hardlinks_to_the_cache(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache")
    built = context.assemble(fetched, tmp_path / "work")
    assert built == tmp_path / "work" / fetched.image.id
    sympy, nccl, _ = fetched.closure or ()
    for directory, item in [("conda/installer", fetched.installer), ("torch/wheels", fetched.wheels[0]),
                            ("torch/deps", sympy), ("cuda/deps", nccl)]:
        linked = built / directory / item.filename
        assert linked.stat().st_ino == item.path.stat().st_ino, f"{linked} is a copy, not a hardlink"
        assert linked.stat().st_nlink >= 2
    assert (built / "Dockerfile").read_bytes() == (ROOT / "context" / "Dockerfile").read_bytes()
    assert (built / ".dockerignore").read_bytes() == (ROOT / "context" / ".dockerignore").read_bytes()
    # each install step's directory holds all it reads, and each wheel is in one of them only
    assert sorted(path.name for path in (built / "torch" / "deps").iterdir()) == [
        "mpmath-1.3.0-py3-none-any.whl", "sympy-1.14.0-py3-none-any.whl"]
    assert [path.name for path in (built / "cuda" / "deps").iterdir()] == [nccl.filename]
    for step, entries in context.STEP_FILES.items():
        assert sorted(path.name for path in (built / step).iterdir()) == sorted(entries)
        for script in (name for name in entries if name.endswith((".sh", ".py"))):
            assert (built / step / script).read_bytes() == (ROOT / "context" / script).read_bytes()
    assert (built / "conda" / "packages.txt").read_text().split() == sorted(
        item.filename for item in (*fetched.wheels, *(fetched.closure or ())))


def test_files_the_image_copies_carry_the_source_date_epoch(tmp_path: Path) -> None:
    fetched = dataclasses.replace(fetched_image(tmp_path / "cache"), source_date_epoch=1_700_000_000)
    built = context.assemble(fetched, tmp_path / "work")
    written = [".dockerignore", "Dockerfile", "torch/pip.conf", "conda/packages.txt", "cuda/layers.py",
               "torch/packages-install.sh", *context.SCRIPTS]
    assert {name: int((built / name).stat().st_mtime) for name in written} == dict.fromkeys(written, 1_700_000_000)


def test_context_pip_conf_never_holds_credentials(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache", pip_index="https://robot:t0ken@pypi.example.com/simple")
    built = context.assemble(fetched, tmp_path / "work")
    text = (built / "torch" / "pip.conf").read_text("utf-8")
    assert "t0ken" not in text and "robot" not in text
    assert "index-url = https://pypi.example.com/simple\n" in text


def test_without_closure_deps_is_an_empty_directory(tmp_path: Path) -> None:
    built = context.assemble(fetched_image(tmp_path / "cache", closure=False), tmp_path / "work")
    for step in ("cuda", "torch"):
        assert (built / step / "deps").is_dir() and not any((built / step / "deps").iterdir())


def test_assembly_is_idempotent_and_leaves_nothing_behind(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache")
    work = tmp_path / "work"
    first = context.assemble(fetched, work)
    before = tree(first)
    inodes = {path.name: path.stat().st_ino for path in first.rglob("*.whl")}
    (first / "stale-file").write_text("left over from an older build")
    (first / "torch" / "wheels" / "torch-1.0.0-cp37-cp37m-linux_x86_64.whl").write_bytes(b"old wheel")
    second = context.assemble(fetched, work)
    assert second == first
    assert tree(second) == before
    assert {path.name: path.stat().st_ino for path in second.rglob("*.whl")} == inodes
    assert [path.name for path in work.iterdir()] == [fetched.image.id], "staging or old directories left behind"


def test_a_failed_assembly_keeps_the_previous_context(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache")
    work = tmp_path / "work"
    before = tree(context.assemble(fetched, work))
    fetched.wheels[0].path.unlink()  # the cache lost a file
    with pytest.raises(FileNotFoundError):
        context.assemble(fetched, work)
    assert tree(work / fetched.image.id) == before
    assert [path.name for path in work.iterdir()] == [fetched.image.id]


@pytest.mark.parametrize("name", ["../escape.whl", "", "a/b.whl"])
def test_file_names_that_would_leave_their_directory_are_refused(tmp_path: Path, name: str) -> None:
    fetched = fetched_image(tmp_path / "cache")
    bad = FetchedFile(filename=name, path=fetched.wheels[0].path, url="https://example.com/x", sha256="0" * 64)
    with pytest.raises(ConfigError, match="cannot be a file name"):
        context.assemble(FetchedImage(image=fetched.image, installer=fetched.installer, wheels=(bad,),
                                      closure=fetched.closure), tmp_path / "work")


def test_a_cache_on_another_filesystem_is_copied_with_a_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm writable and on another filesystem than the temporary directory")
    source = shm / f"modelarts-test-{os.getpid()}.whl"
    source.write_bytes(b"wheel bytes")
    try:
        with caplog.at_level(logging.WARNING, logger="modelarts_images.shared.files"):
            files.link_or_copy(source, tmp_path / "copy.whl")
        assert (tmp_path / "copy.whl").read_bytes() == b"wheel bytes"
        assert (tmp_path / "copy.whl").stat().st_ino != source.stat().st_ino
        assert "copying it instead" in caplog.text
    finally:
        source.unlink()


# --------------------------------------------------------------------------------------------------------------
# The tar the docker backend streams


def test_streamed_context_is_a_tar_of_the_allowed_entries(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache")
    built = context.assemble(fetched, tmp_path / "work")
    (built / "not-for-the-engine").write_text("x")
    data = b"".join(builds.stream_context(built, ("torch", "layers.py")))
    assert len(data) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = {member.name: member for member in archive.getmembers()}
        torch_name = "torch/wheels/" + fetched.wheels[0].filename
        assert members["torch/wheels"].isdir() and members[torch_name].isfile()
        extracted = archive.extractfile(torch_name)
        assert extracted is not None and extracted.read() == fetched.wheels[0].path.read_bytes()
        assert members[torch_name].uid == 0 and members[torch_name].mtime == int(fetched.wheels[0].path.stat().st_mtime)
        assert {name.split("/")[0] for name in members} == {"torch", "layers.py"}


def test_the_classic_builder_is_sent_what_its_copies_read_and_no_artifact(tmp_path: Path) -> None:
    built = context.assemble(fetched_image(tmp_path / "cache"), tmp_path / "work")
    (built / "not-for-the-engine").write_text("x")
    data = b"".join(builds.stream_context(built, builder.CONTEXT_ENTRIES))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        sent = {member.name.split("/")[0] for member in archive.getmembers()}
    # the installer and the wheels reach the steps from the build's file server (test_served.py)
    assert sent == {"Dockerfile", ".dockerignore", "stack", "build-deps", "apt-install.sh", "system-layer.sh",
                    "user-layer.sh", "stack-install.sh", "layers.py"}
    copied = set()
    for line in (built / "Dockerfile").read_text().split("# BuildKit only")[0].splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied |= {word.rstrip("/") for word in line.split()[1:-1]}
    assert copied <= sent


def test_long_names_survive_the_tar(tmp_path: Path) -> None:
    name = "markupsafe-3.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl" * 2
    (tmp_path / "deps").mkdir()
    (tmp_path / "deps" / name).write_bytes(b"z" * 1000)
    with tarfile.open(fileobj=io.BytesIO(b"".join(builds.stream_context(tmp_path))), mode="r:") as archive:
        assert archive.getnames() == ["deps", f"deps/{name}"]


# --------------------------------------------------------------------------------------------------------------
# What a build did, read from the builder's output


BUILDKIT_OUTPUT = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#8 importing cache manifest from 127.0.0.1:5111/t/cx:1
#8 DONE 0.0s
#4 [builder 1/2] FROM docker.io/library/modelarts-test-base:bookworm
#4 CACHED
#5 [builder 2/2] RUN dd if=/dev/urandom of=/big bs=1M count=20
#5 CACHED
#6 [stage-1 2/3] COPY --from=builder /big /big
#6 pulling sha256:e0a06db569b328cf93504b6facd1c9bfd580f69dfd702d35d55d99e890b18199 0.1s done
#6 CACHED
#7 [stage-1 3/3] RUN echo 3 > /y
#7 0.232 built-final
#7 DONE 0.3s
#10 exporting to image
"""

CLASSIC_OUTPUT = """\
Step 1/4 : FROM modelarts-test-base:bookworm
 ---> cb2a3478b8fe
Step 2/4 : COPY big /big
 ---> Using cache
 ---> 1a2b3c4d5e6f
Step 3/4 : ENV A=1
 ---> Using cache
Step 4/4 : RUN echo 3 > /y
 ---> Running in 0123456789ab
"""


def test_the_steps_that_ran_and_the_layers_pulled_are_read_from_the_output() -> None:
    transcript = builds._Transcript()
    for line in BUILDKIT_OUTPUT.splitlines():
        builds._buildkit_line(transcript, line)
    built = transcript.built("sha256:" + "1" * 64)
    assert built.ran == ("[stage-1 3/3] RUN echo 3 > /y",)
    assert built.cached == ("[builder 2/2] RUN dd if=/dev/urandom of=/big bs=1M count=20",
                            "[stage-1 2/3] COPY --from=builder /big /big")
    assert built.pulled == ("sha256:e0a06db569b328cf93504b6facd1c9bfd580f69dfd702d35d55d99e890b18199",)
    classic = builds._Transcript()
    for line in CLASSIC_OUTPUT.splitlines():
        builds._classic_line(classic, line)
    built = classic.built("sha256:" + "2" * 64)
    assert (built.ran, built.cached, built.pulled) == (("Step 4/4 : RUN echo 3 > /y",), ("Step 2/4 : COPY big /big",),
                                                       ())


def test_an_absent_registry_cache_is_not_the_failure_of_the_build() -> None:
    transcript = builds._Transcript()
    for line in ["#8 importing cache manifest from 127.0.0.1:5111/t/cx:nope",
                 "#8 ERROR: 127.0.0.1:5111/t/cx:nope: not found",
                 "#5 [builder 2/2] RUN false",
                 "#5 0.101 disk on fire",
                 "#5 ERROR: executor failed running [/bin/sh -c false]: exit code: 1"]:
        builds._buildkit_line(transcript, line)
    message = str(builds._buildkit_failure("t", transcript, 1))
    assert message.startswith("build of t failed at [builder 2/2] RUN false:"), message
    assert "executor failed running" in message and "disk on fire" in message and "nope" not in message


def test_the_cache_login_goes_in_a_private_client_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home-config"
    (home / "cli-plugins").mkdir(parents=True)
    (home / "config.json").write_text(json.dumps({"credsStore": "desktop", "currentContext": "remote",
                                                  "auths": {"other.example.com": {"auth": "b3RoZXI6eA=="}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    login = RegistryLogin(registry="127.0.0.1:5000", username="robot", password="t0ken")
    made = builds._client_config(tmp_path / "scratch", [login])
    config = json.loads((made / "config.json").read_text("utf-8"))
    assert config["auths"]["127.0.0.1:5000"] == {"auth": base64.b64encode(b"robot:t0ken").decode()}
    assert config["auths"]["other.example.com"] and config["currentContext"] == "remote"
    assert "credsStore" not in config, "a credential store would answer for the cache's registry too"
    assert (made / "config.json").stat().st_mode & 0o777 == 0o600 and made.stat().st_mode & 0o777 == 0o700
    assert (made / "cli-plugins").resolve() == home / "cli-plugins"
    request = BuildRequest(backend=Backend.BUILDKIT, context_dir=tmp_path, target="image-buildkit", tag="r/o/p:t",
                           build_args=(), labels=(), cache_from=("127.0.0.1:5000/o/p:t",), cache_logins=(login,))
    command, _ = cli.buildkit_command(cli.BuildKitCli(path="docker", mode=cli.BuildKitMode.LEGACY, version=""),
                                      request, tmp_path / "iid")
    assert command[command.index("--cache-from") + 1] == "127.0.0.1:5000/o/p:t"
    assert "t0ken" not in " ".join(command)
