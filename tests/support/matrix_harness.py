"""The matrix runner with stand-in steps, for the unit tier's `harness` fixture (tests/unit/conftest.py): entries,
what fetch would return for them, and an engine that only knows which images it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelarts_images import inputs as hashing
from modelarts_images import pipeline
from modelarts_images.build.builder import BuildResult
from modelarts_images.declared import StepName
from modelarts_images.engine.api import Backend, ImageConfig, RegistryLogin
from modelarts_images.errors import BuildError
from modelarts_images.fetch.fetcher import FetchSummary
from modelarts_images.matrix import runner
from modelarts_images.matrix.cells import CellRecord
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import resolve
from tests.support.fake_engine import FakeEngine, image_config


def spec(image_id: str, *, tag: str | None = None, pip_index: str = "https://pypi.example/simple") -> ImageSpec:
    return ImageSpec(
        id=image_id, default=False, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag=tag or image_id, registry="localhost:5999", organization="tests", repository="matrix",
        base_image="modelarts-test-base:bookworm", pip_index=pip_index, apt_mirror="http://repo.example",
        installer=Artifact(url="https://x.invalid/stand-in-installer.sh", sha256=None), wheels=(),
    )


def fetched(image: ImageSpec, *, wheel_sha: str = "a" * 64, closure: bool = True) -> FetchedImage:
    def file(name: str, sha: str) -> FetchedFile:
        return FetchedFile(filename=name, path=Path("/cache") / sha, url=f"https://x.invalid/{name}", sha256=sha)

    return FetchedImage(image=image, installer=file("stand-in-installer.sh", "1" * 64),
                        wheels=(file("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", wheel_sha),),
                        closure=(file("numpy-2.0-cp311-cp311-linux_x86_64.whl", "2" * 64),) if closure else None)



class ImagesOnly(FakeEngine):
    """An engine that only knows which images it holds (the runner asks before skipping a cell)."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def image(self, reference: str) -> ImageConfig | None:
        return image_config(reference, image_id=self.ids[reference]) if reference in self.ids else None

    def stored_login(self, registry: str) -> RegistryLogin | None:
        return None  # `docker login` stored nothing


def make_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The matrix runner over an ImagesOnly engine, with stand-in fetch and build steps (calls, failing cells and
    wheel digests set by the test) and without the verify and manifest steps."""
    engine = ImagesOnly()
    calls: list[str] = []
    wheel_sha: dict[str, str] = {}
    failing: set[str] = set()
    built_labels: dict[str, dict[str, str]] = {}
    summary = FetchSummary(fetched=0, reused=1, bytes_transferred=0, seconds=0.0, lock_updated=())

    def fake_fetch(images: Any, options: Any, **_: Any) -> pipeline.Fetched:
        (image,) = images
        return pipeline.Fetched(images=(fetched(image, wheel_sha=wheel_sha.get(image.id, "a" * 64)),),
                                summary=summary)

    def fake_build(item: FetchedImage, options: Any, engine_: Any, *, inputs: Any = None, cache: Any = None,
                   ) -> BuildResult:
        image = item.image
        calls.append(image.id)
        built_labels[image.id] = {hashing.INPUTS_LABEL: hashing.image_hash(inputs)}
        if image.id in failing:
            raise BuildError(f"{image.id}: step 3/9 failed: installer exited 1")
        engine.ids[image.reference] = f"sha256:{image.id}"
        return BuildResult(reference=image.reference, image_id=f"sha256:{image.id}", size=1, layers=(), duration=0.1,
                           backend=Backend.BUILDKIT)

    monkeypatch.setattr(pipeline, "fetch_step", fake_fetch)
    monkeypatch.setattr(pipeline, "check_bases_step", lambda *args: None)
    monkeypatch.setattr(pipeline, "build_step", fake_build)
    # the harness's cells are built, not verified: the matrix runs the pipeline's steps but those two
    monkeypatch.setattr(pipeline, "STEPS", tuple(step for step in pipeline.STEPS
                                                 if step.name not in (StepName.VERIFY, StepName.MANIFEST)))
    options = resolve(None, root=tmp_path)
    base = runner.MatrixOptions(options=options, template_dir=tmp_path / "context", run_token="t1")
    lines: list[str] = []

    def run(images: list[ImageSpec], **changes: Any) -> list[CellRecord]:
        lines.clear()
        chosen = runner.MatrixOptions(**{**base.__dict__, **changes})
        return runner.run_matrix(images, chosen, engine=lambda: engine, out=lines.append, summary=False)

    return type("Harness", (), {"run": staticmethod(run), "calls": calls, "wheel_sha": wheel_sha,
                                "failing": failing, "lines": lines, "reports": tmp_path / "reports",
                                "labels": built_labels, "engine": engine})
