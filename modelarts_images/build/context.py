"""The build context of one image: the Dockerfile and the fetched files, hardlinked from the cache.

    work_dir/<image id>/
        Dockerfile                    context/Dockerfile, and the stack's ENV stages when it sets variables
        .dockerignore, *.sh, layers.py  from context/ in the repository: the steps of the Dockerfile's stages
        conda/                        what the conda step reads: installer/<installer>, packages.txt (the file
                                      names of every wheel below), conda-install.sh, layers.py
        cuda/                         what the CUDA libraries' step reads: deps/ (the nvidia-* dependency
                                      wheels), tools/ (the install tool's wheel, uv, where fetch has one),
                                      packages-install.sh, layers.py
        torch/                        what the torch step reads: wheels/ (torch, torchvision, torchaudio), deps/
                                      (the other dependency wheels), tools/, pip.conf (rendered from pip_index,
                                      credentials removed), packages-install.sh, layers.py
        stack/                        the stack's wheels and the sdists of build_from_source projects
        build-deps/*.whl              what building those sdists needs

Each install step reads one directory, whole: BuildKit bind-mounts it, the classic builder fetches it from the
build's file server (a tar of the directory), and either way a step is keyed by that directory alone. The deps/
directories are empty when fetch has no dependency wheels (the build then uses pip_index).

Zero-copy: every file is a hardlink to the verified file in the cache, so assembling the context of gigabytes
of wheels takes milliseconds; only a cache on another filesystem is copied, with a warning. The directory is
assembled beside its final place and swapped in with a rename, so a build never sees half a context and
assembling twice gives the same result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from modelarts_images.errors import BuildError, ConfigError
from modelarts_images.model import FetchedFile, FetchedImage
from modelarts_images.paths import CONTEXT_TEMPLATE
from modelarts_images.shared import redact
from modelarts_images.shared.files import link_or_copy

log = logging.getLogger(__name__)

DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
PIP_CONF = "pip.conf"
INSTALLER_DIR = "installer"
WHEELS_DIR = "wheels"
DEPS_DIR = "deps"
TOOLS_DIR = "tools"
# The install steps' directories (see above), in the order the Dockerfile runs them.
CONDA_STEP, CUDA_STEP, TORCH_STEP = "conda", "cuda", "torch"
STACK_DIR = "stack"
BUILD_DEPS_DIR = "build-deps"
PACKAGES_LIST = "packages.txt"
# The steps of the Dockerfile's stages, copied from context/ into every build context.
SCRIPTS = ("apt-install.sh", "system-layer.sh", "user-layer.sh", "stack-install.sh", "layers.py")
CONDA_SCRIPT, PACKAGES_SCRIPT = "conda-install.sh", "packages-install.sh"
# Each install step's directory holds its script and layers.py; the script last, so that a tar of the directory
# cut short fails the step instead of running half of it.
STEP_FILES = {CONDA_STEP: (INSTALLER_DIR, PACKAGES_LIST, "layers.py", CONDA_SCRIPT),
              CUDA_STEP: (DEPS_DIR, TOOLS_DIR, "layers.py", PACKAGES_SCRIPT),
              TORCH_STEP: (WHEELS_DIR, DEPS_DIR, TOOLS_DIR, PIP_CONF, "layers.py", PACKAGES_SCRIPT)}
TARGETS = ("image", "image-buildkit")  # the Dockerfile's final stages: classic builder, BuildKit
BUILDKIT_ONLY = "# BuildKit only, below this line"
ENV_SUFFIX = "-env"
PIP_TIMEOUT = 120


def render_pip_conf(index_url: str) -> str:
    """pip.conf as the recipe wrote it: the index, its host trusted (plain-HTTP mirrors), a 120 s timeout.

    An empty index URL leaves pip on its default index. The URL is written as given, credentials included:
    the caller decides whether the text goes into the context or into a BuildKit secret.
    """
    lines = ["[global]"]
    if index_url:
        if any(char in index_url for char in "\r\n"):
            raise ConfigError(f"pip_index: {redact.url(index_url)!r}: a URL cannot contain a line break")
        host = urlsplit(index_url).hostname
        if not host:
            raise ConfigError(f"pip_index: {redact.url(index_url)!r} is not a URL with a host")
        lines += [f"index-url = {index_url}", f"trusted-host = {host}"]
    lines.append(f"timeout = {PIP_TIMEOUT}")
    return "\n".join(lines) + "\n"


def with_env(dockerfile: str, env: Sequence[tuple[str, str]]) -> str:
    """The Dockerfile with a stage giving each final target the image's own environment (ENV) when it has any:
    CANN's (read from the base's set_env.sh) and the stack's.

    A Dockerfile cannot loop over a build argument, so these lines are the one part of the build's Dockerfile that
    is written rather than copied; values are quoted for the Dockerfile (no $ expansion; a line break is refused). The
    stage of `image` goes above the BuildKit-only part, which the classic builder must never reach."""
    if not env:
        return dockerfile
    for name, value in env:
        if "\n" in value or "\r" in value:  # versions.yaml's env is checked; what set_env.sh sets is not
            raise BuildError(f"ENV {name}: its value (from CANN's set_env.sh in the base image) has a line break, "
                             "which a Dockerfile ENV line cannot hold; fix that set_env.sh, or name another with "
                             "cann_set_env")
    assignments = " ".join(f'{name}="{_dockerfile_quoted(value)}"' for name, value in env)

    def stage(target: str) -> str:
        return (f"# the image's environment (CANN's set_env.sh, versions.yaml: env)\n"
                f"FROM {target} AS {target}{ENV_SUFFIX}\nENV {assignments}\n\n")

    head, marker, tail = dockerfile.partition(BUILDKIT_ONLY)
    if not marker:
        raise ConfigError(f"context/Dockerfile: the line {BUILDKIT_ONLY.strip()!r} is missing")
    before, _, rule = head.rstrip("\n").rpartition("\n")
    return f"{before}\n\n{stage(TARGETS[0])}{rule}\n{marker}{tail.rstrip()}\n\n{stage(TARGETS[1])}".rstrip() + "\n"


def _dockerfile_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")


def context_dir(work_dir: Path, image_id: str) -> Path:
    return work_dir / image_id


def assemble(fetched: FetchedImage, work_dir: Path, *, template_dir: Path = CONTEXT_TEMPLATE,
             base_env: Sequence[tuple[str, str]] = ()) -> Path:
    """Put the build context of `fetched` at work_dir/<image id> (replacing what was there) and return it;
    `base_env`: what the base's CANN set_env.sh sets, given to the image as ENV before the stack's own."""
    image = fetched.image
    target = context_dir(work_dir, image.id)
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{image.id}.", suffix=".partial", dir=work_dir))
    try:
        for name in (DOCKERIGNORE, *SCRIPTS):
            _template_copy(template_dir / name, staging / name, fetched.source_date_epoch)
        dockerfile = with_env((template_dir / DOCKERFILE).read_text("utf-8"), (*base_env, *image.stack.env))
        _write(staging / DOCKERFILE, dockerfile, fetched.source_date_epoch)
        for step, files in STEP_FILES.items():
            (staging / step).mkdir()
            for name in files:
                if name.endswith((".sh", ".py")):
                    _template_copy(template_dir / name, staging / step / name, fetched.source_date_epoch)
        pip_conf = render_pip_conf(redact.without_credentials(image.pip_index))
        _write(staging / TORCH_STEP / PIP_CONF, pip_conf, fetched.source_date_epoch)
        wheels = sorted(item.filename for item in (*fetched.wheels, *(fetched.closure or ())))
        _write(staging / CONDA_STEP / PACKAGES_LIST, "".join(name + "\n" for name in wheels),
               fetched.source_date_epoch)
        closure = fetched.closure or ()
        _link_all(staging / CONDA_STEP / INSTALLER_DIR, [fetched.installer])
        cuda = [item for item in closure if is_cuda_wheel(item.filename)]
        _link_all(staging / CUDA_STEP / DEPS_DIR, cuda)
        _link_all(staging / CUDA_STEP / TOOLS_DIR, fetched.tools if cuda else ())  # nothing to install without
        _link_all(staging / TORCH_STEP / WHEELS_DIR, fetched.wheels)
        _link_all(staging / TORCH_STEP / DEPS_DIR, [item for item in closure if not is_cuda_wheel(item.filename)])
        _link_all(staging / TORCH_STEP / TOOLS_DIR, fetched.tools)
        _link_all(staging / STACK_DIR, fetched.stack)
        _link_all(staging / BUILD_DEPS_DIR, fetched.build_deps)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_cuda_wheel(filename: str) -> bool:
    """An nvidia-* distribution (a CUDA library as a wheel): the CUDA libraries' layer."""
    return filename.lower().replace("-", "_").startswith("nvidia")


Bundles = tuple[tuple[str, tuple[str, ...]], ...]


def served_bundles() -> Bundles:
    """What each of the classic builder's install steps fetches from the build's file server (context/Dockerfile,
    image-base): the step's directory, its entries (relative to it) in the order they are sent."""
    return tuple(STEP_FILES.items())


def inputs_arg(bundle: str) -> str:
    """The build argument that keys the classic builder's step fetching `bundle` (context/Dockerfile)."""
    return f"{bundle.upper()}_INPUTS"


def bundle_digests(fetched: FetchedImage, context: Path, bundles: Bundles) -> tuple[tuple[str, str], ...]:
    """The build argument keying each served step (CONDA_INPUTS...): the sha256 of its files' names and contents.
    The artifacts' digests are the verified ones (no gigabytes read again); the small files are hashed."""
    known = {item.filename: item.sha256
             for item in (fetched.installer, *fetched.wheels, *(fetched.closure or ()), *fetched.tools)}
    digests = []
    for name, entries in bundles:
        digest = hashlib.sha256()
        for entry in entries:
            top = context / name / entry
            for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
                if path.is_dir():
                    continue
                artifact = path.parent.name in (INSTALLER_DIR, WHEELS_DIR, DEPS_DIR, TOOLS_DIR) and known.get(path.name)
                content = artifact or hashlib.sha256(path.read_bytes()).hexdigest()
                digest.update(f"{path.relative_to(context).as_posix()}\0{content}\n".encode())
        digests.append((inputs_arg(name), digest.hexdigest()))
    return tuple(digests)


def _template_copy(source: Path, destination: Path, epoch: int) -> None:
    shutil.copy(source, destination)
    os.utime(destination, (epoch, epoch))


def _write(path: Path, text: str, epoch: int) -> None:
    """A file of the context, dated: a COPY keeps a file's time, and the checkout's or the clock's would make each
    machine's layer its own."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, (epoch, epoch))


def _link_all(directory: Path, files: Iterable[FetchedFile]) -> None:
    directory.mkdir()
    for item in files:
        name = item.filename
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ConfigError(f"{item.url}: {name!r} cannot be a file name in the build context")
        destination = directory / name
        if destination.exists():
            raise ConfigError(f"{item.url}: two artifacts of this image are both named {name!r}")
        link_or_copy(item.path, destination)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with `staging` by renames; an old context is moved aside first, then deleted."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        target.replace(old / "context")
    staging.replace(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
