"""The Engine protocol for unit tests: each test subclass answers what its code under test asks; anything else
fails the test loudly, so a test cannot pass by accident through an engine call it did not expect."""

from __future__ import annotations

from modelarts_images.engine.api import (
    BaseImage,
    BuildRequest,
    Built,
    ContainerOutput,
    ContainerRun,
    GpuSupport,
    ImageConfig,
    ImageSummary,
    Pushed,
    RegistryAuth,
    RegistryLogin,
)
from modelarts_images.shared.progress import ProgressCallback


class FakeEngine:
    endpoint = "a fake engine"
    local = True

    def _unexpected(self, what: str) -> AssertionError:
        return AssertionError(f"{type(self).__name__}: {what} was not expected in this test")

    def architecture(self) -> str:
        return "x86_64"

    def base_image(self, reference: str) -> BaseImage:
        raise self._unexpected(f"base_image({reference!r})")

    def build(self, request: BuildRequest) -> Built:
        raise self._unexpected(f"build({request.tag!r})")

    def image(self, reference: str) -> ImageConfig | None:
        raise self._unexpected(f"image({reference!r})")

    def summary(self, image_id: str, *, base_image: str | None) -> ImageSummary:
        raise self._unexpected(f"summary({image_id!r})")

    def run(self, spec: ContainerRun) -> ContainerOutput:
        raise self._unexpected(f"run({spec.command[:2]!r})")

    def gpu_support(self, image: str | None = None) -> GpuSupport:
        raise self._unexpected("gpu_support()")

    def stored_login(self, registry: str) -> RegistryLogin | None:
        raise self._unexpected(f"stored_login({registry!r})")

    def login(self, login: RegistryLogin) -> RegistryAuth:
        raise self._unexpected(f"login({login.registry!r})")

    def tag(self, source: str, repository: str, tag: str) -> None:
        raise self._unexpected(f"tag({source!r})")

    def push(self, repository: str, tag: str, *, auth: RegistryAuth | None, secrets: tuple[str, ...] = (),
             progress: ProgressCallback | None = None) -> Pushed:
        raise self._unexpected(f"push({repository!r}, {tag!r})")


def image_config(reference: str, *, image_id: str = "sha256:abc", user: str = "ma-user", size: int = 3_000_000_000,
                 base: str = "base") -> ImageConfig:
    """What the engine would say of a built image."""
    return ImageConfig(reference=reference, image_id=image_id, user=user, working_dir="/home/ma-user", size=size,
                       labels=(("org.opencontainers.image.base.name", base),), environment=(), entrypoint=(),
                       cmd=("/bin/bash",))
