"""What the selected work needs of this machine, from the entries, the options and versions.lock alone (no I/O):
a GPU or not, the architectures to build, the backend's CLI, the sources it downloads from, and disk space.

Disk space is an estimate, per image:

- where versions.lock has a current entry that records the size of every file (what `inv lock` writes), the
  downloads are those sizes, less the files already in the cache, and the engine's data root needs
  ENGINE_FACTOR times all of them (the wheels unpacked and installed in a layer, the build context's copy)
  plus the base image's allowance (BASE_ALLOWANCE);
- elsewhere, a fixed figure for the image's accelerator (FIXED): the torch wheels of CUDA 12 pull in about 3 GB
  of NVIDIA's wheels, those of CUDA 11 are about 2 GB each, the CPU builds a tenth of that, and an Ascend image
  starts from a CANN base of about 10 GB.

The figures are upper bounds for one cold build of each selected image; images that share files share their
downloads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from modelarts_images.build.builder import effective_base_image, has_registry_host
from modelarts_images.declared import DeviceChoice
from modelarts_images.doctor.report import Need
from modelarts_images.engine.api import Backend
from modelarts_images.fetch import index, lockfile
from modelarts_images.fetch.fetcher import mirrored
from modelarts_images.http.registry import base_url
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import Options, Where
from modelarts_images.plan import wheel_source
from modelarts_images.shared.choices import Choice
from modelarts_images.shared.text import size

GB = 1_000_000_000
DOCKER_HUB = "registry-1.docker.io"  # where the engine pulls a base image that names no registry
ENGINE_FACTOR = 3
PYPI = "https://pypi.org/simple/"


class Kind(Choice):
    """The accelerators whose images differ in size."""

    CPU = "the CPU build"
    CUDA11 = "CUDA before 12"
    CUDA12 = "CUDA 12 and later"
    NPU = "Ascend"


# Fixed figures where versions.lock records no sizes: (downloads into the cache, space in the engine's data root).
FIXED: Mapping[Kind, tuple[int, int]] = {
    Kind.CPU: (1 * GB, 5 * GB),
    Kind.CUDA11: (3 * GB, 12 * GB),
    Kind.CUDA12: (5 * GB, 16 * GB),
    Kind.NPU: (2 * GB, 20 * GB),
}
# The base image and the system layer (apt packages), beside ENGINE_FACTOR times the files, with sizes known.
BASE_ALLOWANCE: Mapping[Kind, int] = {Kind.CPU: 1 * GB, Kind.CUDA11: 1 * GB, Kind.CUDA12: 1 * GB, Kind.NPU: 10 * GB}


def kind_of(image: ImageSpec) -> Kind:
    if image.is_npu:
        return Kind.NPU
    if image.is_cpu:
        return Kind.CPU
    return Kind.CUDA12 if int(image.cuda.split(".")[0]) >= 12 else Kind.CUDA11


class Purpose(Choice):
    """What a source serves."""

    INSTALLER = "installer"
    WHEEL = "wheel"
    TORCH_INDEX = "torch index"  # PyTorch's index pages, where fetch looks up the torch family's wheels
    LOCKED = "pinned file"  # a dependency wheel, a stack file or the install tool versions.lock pins
    PIP_INDEX = "pip index"  # the host's pip: dependency wheels, torch_npu, the stack and uv are resolved there
    BUILD_INDEX = "build's pip index"  # the entry's pip_index, which the build installs from when not hermetic
    APT_MIRROR = "apt mirror"  # the entry's apt_mirror, inside the build
    BASE_REGISTRY = "base image registry"  # where the engine pulls a base it does not hold

    @property
    def plural(self) -> str:
        return {Purpose.TORCH_INDEX: "torch indexes", Purpose.PIP_INDEX: "pip indexes",
                Purpose.BUILD_INDEX: "build's pip indexes", Purpose.BASE_REGISTRY: "base image registries"}.get(
            self, f"{self.value}s")


@dataclass(frozen=True, kw_only=True)
class Use:
    purpose: Purpose
    image: str  # the image id
    url: str  # as it is asked for (mirrors applied)
    need: Need
    mirror_of: str = ""  # the URL before modelarts.mirrors rewrote it


@dataclass(frozen=True, kw_only=True)
class Source:
    """One host the selected work downloads from, asked once (at its first URL)."""

    origin: str  # scheme://host, with the port unless it is the scheme's own
    url: str
    uses: tuple[Use, ...]

    @property
    def need(self) -> Need:
        needs = {use.need for use in self.uses}
        return Need.REQUIRED if Need.REQUIRED in needs else Need.WANTED if Need.WANTED in needs else Need.NOT_NEEDED

    @property
    def described(self) -> str:
        """'installer, 3 wheels (pytorch-2.9.1-cpu, pytorch-2.9.1-cuda12.8); mirror of https://...'."""
        counts: dict[Purpose, int] = {}
        for use in self.uses:
            counts[use.purpose] = counts.get(use.purpose, 0) + 1
        what = ", ".join(f"{count} {purpose.plural}" if count > 1 else str(purpose)
                         for purpose, count in counts.items())
        images = list(dict.fromkeys(use.image for use in self.uses))
        shown = ", ".join(images[:3]) + (f" and {len(images) - 3} more" if len(images) > 3 else "")
        mirrors = sorted({use.mirror_of for use in self.uses if use.mirror_of})
        return f"{what} ({shown})" + (f"; a mirror of {mirrors[0]}" if mirrors else "")

    @property
    def cached_only(self) -> bool:
        """Every file asked of it is in the cache already."""
        return all(use.need is not Need.REQUIRED for use in self.uses)


@dataclass(frozen=True, kw_only=True)
class DiskNeed:
    bytes: int
    basis: tuple[str, ...]  # per image, how the figure was made

    @property
    def described(self) -> str:
        return "; ".join(self.basis)


@dataclass(frozen=True, kw_only=True)
class Needs:
    images: tuple[ImageSpec, ...]
    backend: Backend
    buildkit: Need
    gpu: Need
    gpu_reason: str
    arches: tuple[str, ...]  # the selected images' architectures, each once
    sources: tuple[Source, ...]
    cache: DiskNeed
    engine: DiskNeed
    registries: tuple[str, ...]
    platform: Need
    platform_reason: str


def current_lock(image: ImageSpec, lock: Mapping[str, lockfile.LockedImage]) -> lockfile.LockedImage | None:
    """The lock entry fetch would use: it still describes the entry, and versions.yaml pins nothing otherwise."""
    entry = lock.get(image.id)
    if entry is None or entry.inputs != lockfile.inputs_of(image):
        return None
    by_url = {artifact.url: artifact.sha256 for artifact in (entry.installer, *entry.wheels)}
    if any(artifact.sha256 and by_url.get(artifact.url) != artifact.sha256
           for artifact in (image.installer, *image.wheels)):
        return None
    return entry


def files_of(image: ImageSpec, lock: Mapping[str, lockfile.LockedImage]) -> tuple[Artifact, ...]:
    """The files fetch puts into the cache for the image, as far as the entry and versions.lock know them."""
    entry = current_lock(image, lock)
    return entry.artifacts if entry is not None else (image.installer, *image.wheels)


def pinned_digests(images: Sequence[ImageSpec], lock: Mapping[str, lockfile.LockedImage]) -> tuple[str, ...]:
    """Every sha256 the entries and versions.lock pin: what to look for in the cache."""
    found = {artifact.sha256 for image in images for artifact in files_of(image, lock) if artifact.sha256}
    return tuple(sorted(found))


def gpu_need(images: Sequence[ImageSpec], device: DeviceChoice, on: Where) -> tuple[Need, str]:
    if on is Where.MODELARTS:
        return Need.NOT_NEEDED, "the verification runs on ModelArts (--on modelarts)"
    if device in (DeviceChoice.GPU, DeviceChoice.BOTH):
        return Need.REQUIRED, f"--device {device} verifies on a GPU"
    cuda = [image.id for image in images if not image.is_cpu]
    if device is DeviceChoice.AUTO and cuda:
        return Need.WANTED, (f"--device auto verifies {', '.join(cuda[:3])}{' ...' if len(cuda) > 3 else ''} on "
                             "the GPU when the engine has one, else on the CPU only")
    return Need.NOT_NEEDED, (f"--device {device}" if device is not DeviceChoice.AUTO
                             else "every selected image is a CPU or Ascend build")


def origin_of(url: str) -> str | None:
    """scheme://host:port of an http(s) URL (None for file:// and anything without a host)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{f'[{host}]' if ':' in host else host}{'' if port in (None, default) else f':{port}'}"


def base_registry_url(reference: str) -> str:
    """The v2 API of the registry a base image reference names (Docker Hub's when it names none)."""
    host = reference.partition("/")[0] if has_registry_host(reference) else DOCKER_HUB
    return base_url(DOCKER_HUB if host in ("docker.io", "index.docker.io") else host) + "/v2/"


def _uses(image: ImageSpec, options: Options, lock: Mapping[str, lockfile.LockedImage], cached: Collection[str],
          host_pip_index: str) -> list[Use]:
    mirrors = options.fetch.mirrors

    def download(purpose: Purpose, artifact: Artifact) -> Use:
        url = mirrored(artifact.url, mirrors)
        need = Need.WANTED if artifact.sha256 and artifact.sha256 in cached else Need.REQUIRED
        return Use(purpose=purpose, image=image.id, url=url, need=need,
                   mirror_of=artifact.url if url != artifact.url else "")

    entry = current_lock(image, lock)
    uses = [download(Purpose.INSTALLER, entry.installer if entry else image.installer)]
    uses += [download(Purpose.WHEEL, wheel) for wheel in (entry.wheels if entry else image.wheels)]
    if entry is not None:
        uses += [download(Purpose.LOCKED, artifact) for artifact in entry.artifacts[1 + len(entry.wheels):]]
    else:
        if not image.wheels:
            page = index.page_urls(wheel_source(image).index_url, "torch")
            url = mirrored(page, mirrors)
            uses.append(Use(purpose=Purpose.TORCH_INDEX, image=image.id, url=url, need=Need.REQUIRED,
                            mirror_of=page if url != page else ""))
        if options.fetch.closure or image.is_npu or image.stack.requirements:
            uses.append(Use(purpose=Purpose.PIP_INDEX, image=image.id, url=host_pip_index, need=Need.REQUIRED))
    if image.pip_index:
        hermetic = entry is not None and entry.closure is not None and options.fetch.closure
        uses.append(Use(purpose=Purpose.BUILD_INDEX, image=image.id, url=image.pip_index.rstrip("/") + "/",
                        need=Need.WANTED if hermetic else Need.REQUIRED))
    if image.apt_mirror:
        uses.append(Use(purpose=Purpose.APT_MIRROR, image=image.id, url=image.apt_mirror.rstrip("/") + "/",
                        need=Need.REQUIRED))
    uses.append(Use(purpose=Purpose.BASE_REGISTRY, image=image.id,
                    url=base_registry_url(effective_base_image(image, options.build)), need=Need.WANTED))
    return uses


def sources_of(images: Sequence[ImageSpec], options: Options, lock: Mapping[str, lockfile.LockedImage],
               cached: Collection[str], host_pip_index: str) -> tuple[Source, ...]:
    """Every host the selected work downloads from, in the order first met, each with all it serves."""
    grouped: dict[str, list[Use]] = {}
    for image in images:
        for use in _uses(image, options, lock, cached, host_pip_index):
            origin = origin_of(use.url)
            if origin is not None:
                grouped.setdefault(origin, []).append(use)
    return tuple(Source(origin=origin, url=uses[0].url, uses=tuple(uses)) for origin, uses in grouped.items())


def disk_needs(images: Sequence[ImageSpec], lock: Mapping[str, lockfile.LockedImage],
               cached: Collection[str]) -> tuple[DiskNeed, DiskNeed]:
    """(the cache's, the engine data root's) estimate, as the module doc says."""
    downloads: dict[str, int] = {}  # sha256 or URL -> bytes still to download
    cache_basis, engine_bytes, engine_basis = [], 0, []
    for image in images:
        kind = kind_of(image)
        entry = current_lock(image, lock)
        files = entry.artifacts if entry is not None else ()
        if entry is not None and all(artifact.size is not None for artifact in files):
            total = sum(artifact.size or 0 for artifact in files)
            missing = [artifact for artifact in files if artifact.sha256 not in cached]
            for artifact in missing:
                downloads[artifact.sha256 or artifact.url] = artifact.size or 0
            left = sum(artifact.size or 0 for artifact in missing)
            cache_basis.append(f"{image.id}: {size(left)} of {size(total)} to download (versions.lock's sizes)")
            engine = ENGINE_FACTOR * total + BASE_ALLOWANCE[kind]
            engine_basis.append(f"{image.id}: {size(engine)} ({ENGINE_FACTOR}× versions.lock's {size(total)} + "
                                f"{size(BASE_ALLOWANCE[kind])} for the base)")
        else:
            fixed_cache, fixed_engine = FIXED[kind]
            downloads[f"fixed:{image.id}"] = fixed_cache
            cache_basis.append(f"{image.id}: {size(fixed_cache)}, the fixed figure for {kind} (versions.lock "
                               "records no sizes for it)")
            engine = fixed_engine
            engine_basis.append(f"{image.id}: {size(fixed_engine)}, the fixed figure for {kind}")
        engine_bytes += engine
    return (DiskNeed(bytes=sum(downloads.values()), basis=tuple(cache_basis)),
            DiskNeed(bytes=engine_bytes, basis=tuple(engine_basis)))


def needs_of(images: Sequence[ImageSpec], options: Options, *, lock: Mapping[str, lockfile.LockedImage],
             cached: Collection[str], host_pip_index: str = PYPI, keys_present: bool = False) -> Needs:
    """What the selected work needs: `cached` holds the sha256 of the files already in the cache, `keys_present`
    whether an AK/SK is set (the ModelArts row is then checked)."""
    gpu, gpu_reason = gpu_need(images, options.verify.device, options.platform.on)
    cache, engine = disk_needs(images, lock, cached)
    backend = options.build.backend
    if options.platform.on is Where.MODELARTS:
        platform, platform_reason = Need.REQUIRED, "--on modelarts"
    elif options.platform.obs_dir or keys_present:
        platform, platform_reason = Need.WANTED, "configured, for `inv verify --on modelarts`"
    else:
        platform, platform_reason = Need.NOT_NEEDED, "not configured; only `inv verify --on modelarts` needs it"
    return Needs(
        images=tuple(images), backend=backend,
        buildkit=Need.REQUIRED if backend is Backend.BUILDKIT else Need.NOT_NEEDED,
        gpu=gpu, gpu_reason=gpu_reason,
        arches=tuple(dict.fromkeys(image.arch for image in images)),
        sources=sources_of(images, options, lock, cached, host_pip_index),
        cache=cache, engine=engine,
        registries=tuple(dict.fromkeys(image.registry for image in images)),
        platform=platform, platform_reason=platform_reason,
    )
