"""An entry's own stack: read from versions.yaml with its defaults, refused when it cannot work, resolved with the
torch family by the host's pip, pinned in versions.lock, and carried into build arguments, labels and the
Dockerfile's ENV stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images import inputs, plan
from modelarts_images.build import context
from modelarts_images.config import versions
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError, FetchError
from modelarts_images.fetch import lockfile, sources
from modelarts_images.http import pip_resolver
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec, Requirement
from modelarts_images.options import BuildOptions, DeviceChoice
from tests.conftest import INVOKE_FALLBACKS, ROOT

TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
ENTRY: dict[str, Any] = {
    "id": "cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "registry": "localhost:5999",
    "organization": "tests", "repository": "x", "base_image": "debian:bookworm",
    "installer": {"url": "https://h.example/a.sh"},
}


def load(tmp_path: Path, entry: dict[str, Any], defaults: dict[str, Any] | None = None) -> ImageSpec:
    path = tmp_path / "versions.yaml"
    path.write_text(yaml.safe_dump({**({"defaults": defaults} if defaults else {}), "images": [{**ENTRY, **entry}]}))
    return versions.load_versions(path).images[0]


def refused(tmp_path: Path, entry: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, entry, defaults)
    return str(caught.value)


# --------------------------------------------------------------------------------------------------------------
# versions.yaml: how an entry combines with defaults, and what is refused before any download


def test_an_entry_adds_to_the_defaults_and_repins_a_project(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "common.txt").write_text("six==1.16.0\neinops\\\n  >=0.7  # a comment\n")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "a.py").write_text("print('a')\n")
    (tmp_path / "checks" / "b.py").write_text("print('b')\n")
    image = load(tmp_path, {"packages": ["six==1.17.0", "packaging"], "apt_packages": ["jq", "git"],
                            "env": {"B": "2", "A": "entry"}, "checks": ["checks/b.py"]},
                 {"requirements": "stacks/common.txt", "packages": ["numpy<2.3"], "apt_packages": ["git"],
                  "env": {"A": "defaults"}, "checks": ["checks/a.py"]})
    stack = image.stack
    assert [r.text for r in stack.requirements] == ["einops>=0.7", "numpy<2.3", "six==1.17.0", "packaging"]
    assert stack.apt_packages == ("git", "jq")
    assert dict(stack.env) == {"A": "entry", "B": "2"}
    assert [check.name for check in stack.checks] == ["a.py", "b.py"]


def test_requirements_files_keep_their_hashes_and_refuse_other_options(tmp_path: Path) -> None:
    digest = "a" * 64
    (tmp_path / "req.txt").write_text(f"einops==0.8.2 --hash=sha256:{digest}\n-i https://other.example/simple\n")
    message = refused(tmp_path, {"requirements": "req.txt"})
    assert "images[0].requirements (req.txt line 2): '-i': only requirements and --hash are read" in message
    (tmp_path / "req.txt").write_text(f"einops==0.8.2 \\\n    --hash=sha256:{digest}\n")
    (requirement,) = load(tmp_path, {"requirements": "req.txt"}).stack.requirements
    assert requirement == Requirement(text="einops==0.8.2", name="einops", hashes=(digest,))


@pytest.mark.parametrize(("entry", "message"), [
    ({"packages": ["not a requirement!"]}, "images[0].packages[0]: 'not a requirement!' is not a pip requirement"),
    ({"packages": ["x @ https://h.example/x.whl"]}, "names a URL"),
    ({"packages": ["torch==2.12.0"]}, "'torch==2.12.0' asks for another torch than the entry's (torch 2.13.0)"),
    ({"packages": ["torchvision"]}, "asks for another torchvision than the entry's (no torchvision)"),
    ({"requirements": "missing.txt"}, "images[0].requirements: "),
    ({"apt_packages": ["Bad_Name"]}, "images[0].apt_packages[0]: must be a Debian package name"),
    ({"env": {"1X": "y"}}, "images[0].env.1X: is not a variable name"),
    ({"env": {"PATH": "/x"}}, "images[0].env.PATH: is set by the image or by ModelArts itself"),
    ({"env": {"MA_JOB_DIR": "/x"}}, "images[0].env.MA_JOB_DIR: is set by the image or by ModelArts itself"),
    ({"env": {"HF_TOKEN": "hf_x"}}, "images[0].env.HF_TOKEN: looks like a credential"),
    ({"env": {"INDEX": "https://u:pw@h.example/simple"}}, "images[0].env.INDEX: looks like a credential"),
    ({"env": {"WANDB_KEY": "0123"}}, "images[0].env.WANDB_KEY: looks like a credential"),
    ({"env": {"HUB": "hf_" + "a1B2" * 9}}, "images[0].env.HUB: looks like a credential"),
    ({"env": {"GIT_AUTH_HEADER": "Bearer ghp_" + "x9" * 18}}, "images[0].env.GIT_AUTH_HEADER: looks like a credential"),
    ({"env": {"CLOUD_ID": "AKIA" + "ABCDEFGH23456789"}}, "images[0].env.CLOUD_ID: looks like a credential"),
    ({"env": {"LINE": "a\nb"}}, "images[0].env.LINE: 'a\\nb' must be one line"),
    ({"checks": ["missing.py"]}, "images[0].checks[0]: "),
    ({"checks": ["run.sh"]}, "a check is a Python script"),
    ({"packages": ["six"], "build_from_source": ["docopt"]}, "'docopt' is not a requirement of this image's stack"),
])
def test_a_stack_that_cannot_work_is_refused_naming_the_key(tmp_path: Path, entry: dict[str, Any],
                                                            message: str) -> None:
    (tmp_path / "run.sh").write_text("true\n")
    text = refused(tmp_path, entry)
    assert text.startswith("versions.yaml: ") and message in text


def test_a_pin_of_the_entrys_own_build_is_kept_and_another_build_is_refused(tmp_path: Path) -> None:
    image = load(tmp_path, {"packages": ["torch==2.13.0+cpu", "einops"]})
    assert [r.text for r in image.stack.requirements] == ["torch==2.13.0+cpu", "einops"]
    message = refused(tmp_path, {"packages": ["einops", "torch==2.13.0+cu128"]})
    assert "images[0].packages[1]: 'torch==2.13.0+cu128' asks for another torch" in message


def test_a_refused_torch_pin_is_named_where_it_was_written(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("einops\ntorch<2\n")
    assert "images[0].requirements (req.txt line 2): 'torch<2' asks for another torch" in refused(
        tmp_path, {"requirements": "req.txt"})
    assert "defaults.packages[0]: 'torch==2.12.0' asks for another torch" in refused(
        tmp_path, {}, {"packages": ["torch==2.12.0"]})


def test_a_variable_that_merely_contains_token_is_kept(tmp_path: Path) -> None:
    image = load(tmp_path, {"env": {"TOKENIZERS_PARALLELISM": "false", "MONKEY_PATCH": "1",
                                    "HF_HOME": "/home/ma-user/work/.cache/huggingface", "TAG": "sk-learn"}})
    assert dict(image.stack.env) == {"TOKENIZERS_PARALLELISM": "false", "MONKEY_PATCH": "1",
                                     "HF_HOME": "/home/ma-user/work/.cache/huggingface", "TAG": "sk-learn"}


# --------------------------------------------------------------------------------------------------------------
# Resolution with the host's pip, for the image's Python and platform


needs_torch = pytest.mark.skipif(not TORCH_WHEEL.is_file(),
                                 reason=f"no CPU torch wheel at {TORCH_WHEEL} to resolve the stack against")


def torch_file() -> FetchedFile:
    return FetchedFile(filename=TORCH_WHEEL.name, path=TORCH_WHEEL, url=f"https://x.invalid/{TORCH_WHEEL.name}",
                       sha256="0" * 64)


@needs_torch
def test_the_stack_resolves_above_the_torch_layer(tmp_path: Path) -> None:
    image = load(tmp_path, {"packages": ["einops", "six"]})
    closure = pip_resolver.resolve(image, [torch_file()]) or ()
    resolution = pip_resolver.resolve_stack(image, [torch_file()], closure)
    names = {sources.project_of(a.filename) for a in resolution.stack}
    assert names == {"einops", "six"}
    assert {sources.project_of(a.filename) for a in resolution.closure} >= {"sympy", "filelock"}
    assert all(artifact.sha256 for artifact in resolution.stack)


@needs_torch
def test_a_requirement_needing_another_torch_is_refused_with_pips_reasons(tmp_path: Path) -> None:
    image = load(tmp_path, {})
    image = dataclasses.replace(image, stack=dataclasses.replace(image.stack, requirements=(
        Requirement(text="torchvision==0.29.1", name="torchvision"),)))
    with pytest.raises(ConfigError) as caught:
        pip_resolver.resolve_stack(image, [torch_file()], ())
    message = str(caught.value)
    assert message.startswith("cell: the stack cannot be resolved for Python 3.11, Linux x86_64, cpu, torch 2.13.0:")
    assert "torchvision 0.29.1 depends on torch" in message and "The user requested torch 2.13.0+cpu" in message


@needs_torch
def test_a_project_without_a_wheel_is_refused_unless_it_may_be_built(tmp_path: Path) -> None:
    image = load(tmp_path, {"packages": ["docopt==0.6.2"]})
    with pytest.raises(ConfigError, match="list it under build_from_source"):
        pip_resolver.resolve_stack(image, [torch_file()], ())
    allowed = load(tmp_path, {"packages": ["docopt==0.6.2"], "build_from_source": ["docopt"]})
    closure = pip_resolver.resolve(allowed, [torch_file()]) or ()
    resolution = pip_resolver.resolve_stack(allowed, [torch_file()], closure)
    assert [a.filename for a in resolution.stack] == ["docopt-0.6.2.tar.gz"]


def test_build_requirements_come_from_the_sdist(tmp_path: Path) -> None:
    import io
    import tarfile

    def sdist(name: str, pyproject: str | None) -> FetchedFile:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as archive:
            for member, text in (("setup.py", "pass\n"), *((("pyproject.toml", pyproject),) if pyproject else ())):
                data = text.encode()
                info = tarfile.TarInfo(f"{name.removesuffix('.tar.gz')}/{member}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return FetchedFile(filename=name, path=path, url=f"https://x.invalid/{name}", sha256="0" * 64)

    modern = sdist("modern-1.0.tar.gz", '[build-system]\nrequires = ["hatchling>=1.2", "cython"]\n')
    legacy = sdist("legacy-2.0.tar.gz", None)
    assert sources.build_requirements([modern, legacy]) == ["hatchling>=1.2", "cython", "setuptools>=40.8.0", "wheel"]
    assert sources.project_of("docopt-0.6.2.tar.gz") == "docopt"
    assert sources.project_of("Typing_Extensions-4.0-py3-none-any.whl") == "typing-extensions"


# --------------------------------------------------------------------------------------------------------------
# The lock, the build and the matrix see the stack


def test_the_lock_records_the_stack_and_its_inputs(tmp_path: Path) -> None:
    image = load(tmp_path, {"packages": ["six==1.17.0"]})
    plain = load(tmp_path, {})
    assert lockfile.inputs_of(plain) == lockfile.inputs_of(dataclasses.replace(image, stack=plain.stack))
    assert lockfile.inputs_of(image).endswith("; stack six==1.17.0")
    sha = hashlib.sha256(b"six").hexdigest()
    entry = lockfile.LockedImage(inputs=lockfile.inputs_of(image), installer=Artifact(url="https://h/a.sh", sha256=sha),
                                 wheels=(), closure=(), stack=(Artifact(url="https://h/six-1.17.0-py3-none-any.whl",
                                                                         sha256=sha, size=3),))
    path = tmp_path / "versions.lock"
    lockfile.write(path, {"cell": entry})
    assert lockfile.read(path)["cell"] == dataclasses.replace(entry, installer=dataclasses.replace(entry.installer))
    assert "stack:" in path.read_text() and "build_deps" not in path.read_text()


def fetched(image: ImageSpec, tmp_path: Path, stack: tuple[FetchedFile, ...] = ()) -> FetchedImage:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    installer = FetchedFile(filename="a.sh", path=blob, url="https://h/a.sh", sha256="1" * 64)
    return FetchedImage(image=image, installer=installer, wheels=(), closure=(), stack=stack)


def test_build_arguments_labels_and_the_env_stage(tmp_path: Path) -> None:
    image = load(tmp_path, {"packages": ["six==1.17.0"], "apt_packages": ["jq"], "env": {"HF_HOME": "/h/$x \"q\""},
                            "build_from_source": ["six"]})
    six = FetchedFile(filename="six-1.17.0.tar.gz", path=tmp_path / "blob", url="https://h/six-1.17.0.tar.gz",
                      sha256="2" * 64)
    item = fetched(image, tmp_path, (six,))
    args = dict(plan.build_args(image, hermetic=True))
    assert args["APT_PACKAGES"] == "jq" and args["FROM_SOURCE"] == "1"
    labels = dict(plan.labels(image, fetched=item))
    assert labels["modelarts-images.stack.requirements"] == "six==1.17.0"
    assert labels["modelarts-images.stack.env"] == "HF_HOME"
    assert labels["modelarts-images.stack.file.six-1.17.0.tar.gz"] == f"https://h/six-1.17.0.tar.gz sha256:{'2' * 64}"
    built = context.assemble(item, tmp_path / "build")
    dockerfile = (built / "Dockerfile").read_text()
    assert 'FROM image AS image-env\nENV HF_HOME="/h/\\$x \\"q\\""' in dockerfile
    assert dockerfile.index("AS image-env") < dockerfile.index(context.BUILDKIT_ONLY)
    assert dockerfile.rstrip().endswith('FROM image-buildkit AS image-buildkit-env\nENV HF_HOME="/h/\\$x \\"q\\""')
    assert (built / "stack" / "six-1.17.0.tar.gz").is_file()
    from modelarts_images.build.builder import build_inputs

    assert build_inputs(item, BuildOptions(backend=Backend.BUILDKIT, work_dir=tmp_path)).target == "image-buildkit-env"
    assert build_inputs(item, BuildOptions(backend=Backend.DOCKER, work_dir=tmp_path)).target == "image-env"


def test_a_stack_change_changes_only_the_stack_parts_of_a_cell(tmp_path: Path) -> None:
    steps = inputs.Steps(build=BuildOptions(backend=Backend.BUILDKIT, work_dir=tmp_path), device=DeviceChoice.CPU,
                        push=False)
    plain = load(tmp_path, {})
    with_stack = load(tmp_path, {"packages": ["six==1.17.0"]})
    repinned = load(tmp_path, {"packages": ["six==1.16.0"]})

    def parts(image: ImageSpec) -> dict[str, str]:
        return inputs.cell_inputs(fetched(image, tmp_path), steps, context_digest="c", verify_digest="v")

    assert "stack" not in parts(plain)  # a cell without a stack keeps the hash it had
    assert inputs.changed_inputs(parts(with_stack), parts(repinned)) == ["stack"]
    assert json.dumps(parts(plain))  # plain JSON values


def test_the_shipped_versions_file_still_loads() -> None:
    shipped = versions.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS).images
    assert shipped and all(image.stack.empty for image in shipped)


def test_a_hash_the_requirements_file_does_not_allow_is_a_fetch_error(tmp_path: Path) -> None:
    from modelarts_images.fetch.fetcher import _check_hashes

    image = load(tmp_path, {})
    image = dataclasses.replace(image, stack=dataclasses.replace(image.stack, requirements=(
        Requirement(text="six==1.17.0", name="six", hashes=("a" * 64,)),)))
    six = FetchedFile(filename="six-1.17.0-py2.py3-none-any.whl", path=tmp_path, url="https://h/six.whl",
                      sha256="b" * 64)
    with pytest.raises(FetchError, match="which its requirements file does not allow"):
        _check_hashes(image, (six,))
    _check_hashes(image, (dataclasses.replace(six, sha256="a" * 64),))


@pytest.mark.parametrize(("locked", "closure", "message"), [
    (True, True, r"^cell: --locked, but versions.lock pins no stack for it"),
    (False, False, r"^cell: a stack is installed only from files pinned .* and --no-closure leaves them out"),
])
def test_a_stack_the_lock_does_not_pin_needs_a_resolution(tmp_path: Path, locked: bool, closure: bool,
                                                          message: str) -> None:
    from modelarts_images.fetch.fetcher import fetch_images
    from modelarts_images.options import FetchOptions
    from tests.support.http_server import serve

    data = b"#!/bin/sh\n"
    digest = hashlib.sha256(data).hexdigest()
    with serve() as server:
        url = server.add("/files/a.sh", data)
        image = load(tmp_path, {"packages": ["six"], "installer": {"url": url, "sha256": digest}})
        image = dataclasses.replace(image, wheels=(Artifact(url=url, sha256=digest),))
        lockfile.write(tmp_path / "versions.lock", {"cell": lockfile.LockedImage(
            inputs=lockfile.inputs_of(image), installer=Artifact(url=url, sha256=digest),
            wheels=(Artifact(url=url, sha256=digest),), closure=None)})
        options = FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock", locked=locked,
                               closure=closure)
        with pytest.raises(FetchError, match=message):
            fetch_images([image], options)


def test_a_hash_is_honoured_for_a_project_that_went_into_the_torch_layer(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """filelock is a dependency of torch as well as a requirement of the stack: the resolution puts it into the
    torch layer's closure, and its --hash still has to hold."""
    from modelarts_images.fetch.fetcher import fetch_images
    from modelarts_images.options import FetchOptions
    from tests.support.http_server import serve
    from tests.support.wheels import make_wheel

    torch = "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"  # a real wheel: fetch reads its metadata (no CUDA)
    files = {"a.sh": b"#!/bin/sh\n", torch: make_wheel(torch),
             "filelock-3.20.0-py3-none-any.whl": b"filelock"}
    (tmp_path / "req.txt").write_text(f"filelock --hash=sha256:{'a' * 64}\n")
    with serve() as server:
        artifacts = {name: Artifact(url=server.add(f"/files/{name}", data), sha256=hashlib.sha256(data).hexdigest())
                     for name, data in files.items()}
        image = load(tmp_path, {"requirements": "req.txt", "installer": {"url": artifacts["a.sh"].url,
                                                                          "sha256": artifacts["a.sh"].sha256}})
        image = dataclasses.replace(image, wheels=(artifacts["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"],))
        filelock = artifacts["filelock-3.20.0-py3-none-any.whl"]
        monkeypatch.setattr(pip_resolver, "resolve", lambda *_, **__: (filelock,))
        monkeypatch.setattr(pip_resolver, "resolve_stack", lambda *_, **__: pip_resolver.StackResolution(
            closure=(filelock,), stack=()))
        options = FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock")
        with pytest.raises(FetchError,
                           match=r"filelock resolved to filelock-3\.20\.0-py3-none-any\.whl .* not allow"):
            fetch_images([image], options)
    assert not (tmp_path / "versions.lock").exists(), "a refused file is not pinned"


def _wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    """A pure-Python wheel of one module whose metadata declares `requires`."""
    import zipfile

    folder.mkdir(exist_ok=True)
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}.py", "")
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")


def test_a_pinned_requirement_needing_another_torch_is_refused_before_any_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelarts_images.fetch.fetcher import fetch_images
    from modelarts_images.options import FetchOptions
    from tests.support.http_server import serve

    links = tmp_path / "links"
    _wheel(links, "needs_old_torch", "1.0", "torch==2.12.0", "numpy; python_version < '3'")
    _wheel(links, "fits", "2.0", "torch>=2.0", "torchaudio; extra == 'audio'")
    _wheel(links, "needs_audio", "1.0", "torchaudio>=2.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with serve() as server:
        url = server.add("/files/a.sh", b"#!/bin/sh\n")
        torch = server.add("/files/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", b"torch")
        image = load(tmp_path, {"packages": ["needs-old-torch==1.0", "fits==2.0", "needs_audio==1.0", "six"],
                                "installer": {"url": url}})
        image = dataclasses.replace(image, wheels=(Artifact(url=torch, sha256=None),))
        options = FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock")
        with pytest.raises(ConfigError) as caught:
            fetch_images([image], options)
        assert server.requests() == [], "nothing is downloaded for a stack that cannot go with the entry"
    assert str(caught.value) == (
        "cell: the stack needs another torch family than the entry's (its torch, torchvision, torchaudio and cuda "
        "keys fix it):\n"
        "  needs_old_torch-1.0-py3-none-any.whl requires torch==2.12.0; the entry has torch 2.13.0+cpu\n"
        "  needs_audio-1.0-py3-none-any.whl requires torchaudio>=2.0; the entry has no torchaudio")
