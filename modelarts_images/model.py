"""Domain values: what an image is once versions.yaml has been loaded and checked."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelarts_images.contract import DEFAULT_USER, RunUser

_SHA256 = re.compile(r"[0-9a-f]{64}")
# The time every file of the image's own layers carries, unless versions.lock says otherwise: 1980-01-01, the
# earliest a zip (a wheel) can hold, so files taken from the image can be packed again.
DEFAULT_SOURCE_DATE_EPOCH = 315_532_800
MAX_NAME_BYTES = 255  # what ext4, xfs and tmpfs allow for one file name
CPU = "cpu"  # versions.yaml's `cuda` for the CPU build, and that build's name wherever it is named
_CUDA = "cuda"
NPU = "npu"  # the matrix cell's tag of an Ascend image, and the verification's device there
_BUILD_TAG = re.compile(r"cpu|cu\d+")  # what Accelerator.tag spells: PyTorch's local labels of its builds
X86_64 = "x86_64"
AARCH64 = "aarch64"
# An image's architecture as versions.yaml may spell it (Docker's names too), and as the tool names it.
ARCH_SPELLINGS = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}
_DOCKER_ARCH = {X86_64: "amd64", AARCH64: "arm64"}


def docker_platform(arch: str) -> str:
    """The engine's platform for an image's architecture: 'linux/amd64', 'linux/arm64'."""
    return f"linux/{_DOCKER_ARCH[arch]}"


def docker_arch(arch: str) -> str:
    """How the engine's image config spells an architecture ('amd64', 'arm64')."""
    return _DOCKER_ARCH[arch]


def sha256_problem(value: object) -> str | None:
    """Why a value read from a file or a server cannot be a sha256; None when it can. A sha256 names a file in the
    cache, so anything else (a path, `../x`) must never reach a path join."""
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return None
    return f"{value!r} is not a sha256 (64 lowercase hexadecimal digits)"


def filename_problem(name: str) -> str | None:
    """Why an artifact's file name (its URL's last segment, percent-decoded) cannot name a file in the cache or
    the build context; None when it can."""
    if not name or name in (".", "..") or any(char in name for char in "/\\\0") or \
            any(ord(char) < 32 or ord(char) == 127 for char in name):
        return f"{name!r} cannot be a file name (empty, a path, or a control character, once percent-decoded)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"{name[:40]!r}... is longer than the {MAX_NAME_BYTES} bytes a file name may have"
    return None


@dataclass(frozen=True)
class Accelerator:
    """What an image's PyTorch is built for: the CPU, one CUDA release, or an Ascend NPU through torch_npu on CANN
    (whose torch is the CPU build). CUDA and CANN releases are open sets (what versions.yaml and the compatibility
    tables name), so this is a value rather than an Enum; every spelling of a build ('cpu', 'cu121', 'cuda12',
    'cuda12.1', 'npu') is derived here and nowhere else."""

    cuda: str | None = None  # the CUDA release, e.g. "12.1"; None: the CPU build
    cann: str | None = None  # an Ascend image's CANN release, e.g. "8.2.RC1" (its torch is the CPU build)
    chip: str | None = None  # an Ascend image's NPU chip, e.g. "910b"

    @classmethod
    def of(cls, cuda: str) -> Accelerator:
        """From versions.yaml's `cuda` value: "cpu" or a CUDA release ("12.1")."""
        return cls(None if cuda == CPU else cuda)

    @staticmethod
    def is_tag(label: str) -> bool:
        """Whether a wheel's local label ('cpu', 'cu121') names a build, as `tag` spells them."""
        return _BUILD_TAG.fullmatch(label) is not None

    @property
    def is_cpu(self) -> bool:
        """Whether no CUDA is involved: a CPU image or an Ascend one (whose torch is the CPU build)."""
        return self.cuda is None

    @property
    def is_npu(self) -> bool:
        return self.cann is not None

    @property
    def tag(self) -> str:
        """PyTorch's name for the wheel build (its index's directory, its wheels' local label): 'cpu' or 'cu' and
        the CUDA digits ('cu121')."""
        return CPU if self.cuda is None else "cu" + self.cuda.replace(".", "")

    @property
    def cell_tag(self) -> str:
        """The matrix cell's tag (nox's -t, invoke.yaml's ci_runners): 'cpu', 'npu', or 'cuda' and the CUDA
        major."""
        if self.cann is not None:
            return NPU
        return CPU if self.cuda is None else _CUDA + self.cuda.split(".")[0]

    @property
    def label(self) -> str:
        """What a derived image tag ends with: 'cpu', 'cuda' and the release ('cuda12.1'), or the CANN release and
        the chip ('cann8.2.RC1-910b')."""
        if self.cann is not None:
            return f"cann{self.cann}-{self.chip}"
        return CPU if self.cuda is None else _CUDA + self.cuda

    @property
    def runtime(self) -> str:
        """The Dockerfile's runtime stage (GPU_RUNTIME): 'cpu' or 'cuda'."""
        return CPU if self.cuda is None else _CUDA

    @property
    def described(self) -> str:
        """For messages: 'the CPU build', 'CUDA 12.1' or 'Ascend 910b, CANN 8.2.RC1'."""
        if self.cann is not None:
            return f"Ascend {self.chip}, CANN {self.cann}"
        return "the CPU build" if self.cuda is None else f"CUDA {self.cuda}"


@dataclass(frozen=True, kw_only=True)
class Ascend:
    """An Ascend image's NPU software: CANN (from its base image) and torch_npu (a wheel beside torch)."""

    cann: str  # e.g. "8.2.RC1"
    chip: str  # versions.yaml's `npu`, e.g. "910b"
    torch_npu: str  # the torch_npu release, e.g. "2.6.0" or "2.1.0.post13"
    set_env: str | None = None  # where the base keeps CANN's set_env.sh; None: looked for where CANN puts it


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A file the build needs: the conda installer or a wheel."""

    url: str
    sha256: str | None  # None: not pinned in versions.yaml; versions.lock pins it
    size: int | None = None  # bytes, when versions.lock recorded them: a download never grows beyond it

    @property
    def filename(self) -> str:
        """The file name as pip and bash see it (percent-escapes decoded, '+cu102' restored)."""
        return unquote(posixpath.basename(urlsplit(self.url).path))


@dataclass(frozen=True, kw_only=True)
class Requirement:
    """One pip requirement of an image's stack (PEP 508)."""

    text: str  # as pip reads it, e.g. 'numpy<2.3'
    name: str  # the project's canonical name, e.g. 'numpy'
    hashes: tuple[str, ...] = ()  # sha256 values a requirements file allows for it ('--hash=sha256:...')


@dataclass(frozen=True, kw_only=True)
class Stack:
    """The team's own stack above torch: pip requirements, apt packages, environment and check scripts."""

    requirements: tuple[Requirement, ...] = ()
    apt_packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    checks: tuple[Path, ...] = ()  # Python scripts, run in the image after the verification script
    build_from_source: tuple[str, ...] = ()  # canonical names that may be built from their sdist

    @property
    def empty(self) -> bool:
        return not (self.requirements or self.apt_packages or self.env or self.checks)


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """One entry of versions.yaml with its defaults applied."""

    id: str
    default: bool
    python: str
    cuda: str  # "10.2", "11.8", ... or "cpu"
    torch: str
    torchvision: str | None
    torchaudio: str | None
    tag: str
    registry: str
    organization: str
    repository: str
    base_image: str
    pip_index: str
    apt_mirror: str
    installer: Artifact
    wheels: tuple[Artifact, ...]  # empty: derived from the PyTorch wheel index when fetched
    stack: Stack = Stack()
    user: RunUser = DEFAULT_USER
    nodes: int = 1  # workers of its verification (versions.yaml's verify.nodes): more than one is a distributed run
    arch: str = X86_64  # the machine the image runs on: x86_64 or aarch64 (every Ascend image)
    ascend: Ascend | None = None  # an Ascend NPU image's CANN and torch_npu

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.organization}/{self.repository}:{self.tag}"

    @property
    def accelerator(self) -> Accelerator:
        if self.ascend is not None:
            return Accelerator(cann=self.ascend.cann, chip=self.ascend.chip)
        return Accelerator.of(self.cuda)

    @property
    def platform(self) -> str:
        """The engine's platform of the image: 'linux/amd64' or 'linux/arm64'."""
        return docker_platform(self.arch)

    @property
    def is_npu(self) -> bool:
        return self.ascend is not None

    @property
    def is_cpu(self) -> bool:
        return self.accelerator.is_cpu

    @property
    def variant(self) -> str:
        """PyTorch's name for the wheel build: 'cpu' or 'cu' + the CUDA digits ('cu102')."""
        return self.accelerator.tag

    @property
    def packages(self) -> tuple[tuple[str, str], ...]:
        """(name, version) of the PyTorch packages the image carries, torch first."""
        listed = (("torch", self.torch), ("torchvision", self.torchvision), ("torchaudio", self.torchaudio),
                  ("torch_npu", self.ascend.torch_npu if self.ascend else None))
        return tuple((name, version) for name, version in listed if version is not None)


@dataclass(frozen=True, kw_only=True)
class VersionsFile:
    """A loaded versions.yaml."""

    path: str
    images: tuple[ImageSpec, ...]

    @property
    def default_image(self) -> ImageSpec | None:
        marked = [image for image in self.images if image.default]
        if marked:
            return marked[0]
        return self.images[0] if len(self.images) == 1 else None


@dataclass(frozen=True, kw_only=True)
class FetchedFile:
    """An artifact in the local cache, verified against its sha256."""

    filename: str  # the name it gets in the build context (what pip and bash see)
    path: Path  # the verified file in the cache
    url: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class FetchedImage:
    """Everything the build of one image needs, already on disk."""

    image: ImageSpec
    installer: FetchedFile
    wheels: tuple[FetchedFile, ...]  # torch, torchvision, torchaudio as listed or derived
    # The wheels those depend on, for an install without any index; None when they could not be
    # fetched, and the build then installs them from the image's pip_index.
    closure: tuple[FetchedFile, ...] | None
    stack: tuple[FetchedFile, ...] = ()  # the stack's wheels and sdists, installed in a layer above torch
    build_deps: tuple[FetchedFile, ...] = ()  # what building the stack's sdists needs
    tools: tuple[FetchedFile, ...] = ()  # the installer the build runs for the dependency wheels (uv), never installed
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH  # from versions.lock: the time of every file of the layers
