"""The classic builder's file server, on a real loopback port: what each install step fetches, how a step is keyed,
and what the build sends the engine."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from modelarts_images.build import builder, context
from modelarts_images.engine import builds, served
from modelarts_images.engine.api import Backend, BuildRequest
from modelarts_images.errors import EngineError
from modelarts_images.model import FetchedImage
from modelarts_images.options import BuildOptions
from tests.unit.test_context import cached, fetched_image


def fetch(address: str, path: str) -> tarfile.TarFile:
    with urllib.request.urlopen(f"http://{address}/{path}", timeout=10) as response:
        return tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:")


def with_cuda(fetched_dir: Path) -> FetchedImage:
    fetched = fetched_image(fetched_dir)
    nvidia = cached(fetched_dir, "nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl", b"cublas")
    return dataclasses.replace(fetched, closure=(*(fetched.closure or ()), nvidia))


def test_each_step_gets_its_bundle_with_its_script_last(tmp_path: Path) -> None:
    fetched = with_cuda(tmp_path / "cache")
    built = context.assemble(fetched, tmp_path / "work")
    bundles = context.served_bundles()
    with served.serving(built, dict(bundles)) as address:
        assert address.startswith("127.0.0.1:")
        conda = fetch(address, "conda.tar").getnames()
        cuda = fetch(address, "cuda.tar").getnames()
        torch = fetch(address, "torch.tar")
    assert conda == ["installer", f"installer/{fetched.installer.filename}", "packages.txt", "layers.py",
                     "conda-install.sh"]
    # the CUDA libraries' step gets the nvidia-* wheels only, the torch step everything else
    assert cuda == ["deps", "deps/nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl",
                    "deps/nvidia_nccl_cu12-2.27.3-py3-none-manylinux2014_x86_64.whl", "tools", "layers.py",
                    "packages-install.sh"]
    names = torch.getnames()
    assert names[-1] == "packages-install.sh" and not [name for name in names if "nvidia" in name]
    assert {"wheels/" + fetched.wheels[0].filename, "deps/sympy-1.14.0-py3-none-any.whl", "pip.conf"} <= set(names)
    member = torch.extractfile("wheels/" + fetched.wheels[0].filename)
    assert member is not None and member.read() == fetched.wheels[0].path.read_bytes()
    assert {info.uid for info in torch.getmembers()} == {0}


@pytest.mark.parametrize("path", ["/stack.tar", "/conda", "/../conda.tar", "/installer/x.tar", "/"])
def test_only_a_known_bundle_is_served(tmp_path: Path, path: str) -> None:
    fetched = fetched_image(tmp_path / "cache")
    built = context.assemble(fetched, tmp_path / "work")
    with served.serving(built, dict(context.served_bundles())) as address, \
            pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://{address}{path}", timeout=10)
    assert error.value.code == 404


def test_a_link_in_the_context_is_not_followed_out_of_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the build")
    root = tmp_path / "context"
    (root / "torch" / "wheels").mkdir(parents=True)
    (root / "torch" / "wheels" / "link.whl").symlink_to(secret)
    (root / "torch" / "wheels" / "real.whl").write_bytes(b"wheel")
    with served.serving(root, {"torch": ("wheels",)}) as address:
        assert fetch(address, "torch.tar").getnames() == ["wheels", "wheels/real.whl"]


def test_the_server_is_gone_after_the_build(tmp_path: Path) -> None:
    with served.serving(tmp_path, {"conda": ()}) as address:
        pass
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/conda.tar", timeout=5)


def test_a_step_is_keyed_by_what_it_fetches(tmp_path: Path) -> None:
    fetched = with_cuda(tmp_path / "cache")
    built = context.assemble(fetched, tmp_path / "work")
    bundles = context.served_bundles()
    first = dict(context.bundle_digests(fetched, built, bundles))
    assert set(first) == {"CONDA_INPUTS", "CUDA_INPUTS", "TORCH_INPUTS"}
    # the same inputs in another context directory: the same keys (no path, port or time in them)
    again = context.assemble(fetched, tmp_path / "elsewhere")
    assert dict(context.bundle_digests(fetched, again, bundles)) == first
    # the artifacts count by their verified sha256, not by reading them again
    torch = fetched.wheels[0]
    changed = dataclasses.replace(fetched, wheels=(dataclasses.replace(torch, sha256="0" * 64),))
    keys = dict(context.bundle_digests(changed, built, bundles))
    assert keys["TORCH_INPUTS"] != first["TORCH_INPUTS"]
    assert keys["CONDA_INPUTS"] == first["CONDA_INPUTS"] and keys["CUDA_INPUTS"] == first["CUDA_INPUTS"]
    # a script the step runs is part of its key
    for step in ("cuda", "torch"):
        (built / step / "packages-install.sh").write_text("echo changed\n")
    keys = dict(context.bundle_digests(fetched, built, bundles))
    assert keys["CUDA_INPUTS"] != first["CUDA_INPUTS"] and keys["TORCH_INPUTS"] != first["TORCH_INPUTS"]
    assert keys["CONDA_INPUTS"] == first["CONDA_INPUTS"]


def test_the_classic_dry_run_shows_the_host_network_and_the_server(tmp_path: Path) -> None:
    fetched = fetched_image(tmp_path / "cache")
    command = builder.build_command_preview(fetched.image, BuildOptions(backend=Backend.DOCKER, work_dir=tmp_path))
    assert "--network host --build-arg FTP_PROXY=127.0.0.1:PORT" in command
    assert "--build-arg CONDA_INPUTS=SHA256" in command and "--build-arg TORCH_INPUTS=SHA256" in command
    buildkit = builder.build_command_preview(fetched.image, BuildOptions(backend=Backend.BUILDKIT, work_dir=tmp_path))
    assert "FTP_PROXY" not in buildkit and "_INPUTS" not in buildkit


@pytest.mark.parametrize(("url", "here"), [
    ("unix:///var/run/docker.sock", True), ("tcp://127.0.0.1:2375", True), ("tcp://localhost:2376", True),
    ("tcp://10.1.2.3:2375", False), ("tcp://build-host.example:2376", False),
])
def test_the_classic_builder_refuses_an_engine_it_cannot_serve(tmp_path: Path, url: str, here: bool) -> None:
    client = docker.DockerClient(base_url=url, version="1.41")
    assert builds._engine_is_here(client) is here
    if here:
        return
    request = BuildRequest(backend=Backend.DOCKER, context_dir=tmp_path, target="image", tag="x:1", build_args=(),
                           labels=(), served=(("conda", ("installer",)),))
    with pytest.raises(EngineError, match="cannot reach; use --backend buildkit"):
        builds.build_classic(client, request)
