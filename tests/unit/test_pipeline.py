"""The pipeline's steps: each turns the failures of the layers below into its own stage's error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelarts_images import pipeline
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BaseImageSource,
    BuildRequest,
    Built,
    ContainerOutput,
    ContainerRun,
    GpuSupport,
    ImageConfig,
)
from modelarts_images.errors import (
    BuildError,
    ConfigError,
    EngineError,
    RegistryError,
    VerifyError,
    WriteError,
)
from modelarts_images.model import Artifact, FetchedFile, FetchedImage, ImageSpec
from modelarts_images.options import BuildOptions, DeviceChoice, VerifyOptions
from tests.support.fake_engine import FakeEngine, image_config


def entry(base_image: str = "ubuntu:22.04") -> ImageSpec:
    return ImageSpec(
        id="cell", default=True, python="3.11", cuda="cpu", torch="2.13.0", torchvision=None, torchaudio=None,
        tag="t", registry="localhost:5999", organization="tests", repository="pipeline", base_image=base_image,
        pip_index="", apt_mirror="http://repo.example",
        installer=Artifact(url="https://x.invalid/installer.sh", sha256="1" * 64), wheels=(),
    )


@pytest.mark.parametrize("error", [BuildError, VerifyError, RegistryError])
def test_a_stage_gives_engine_and_write_failures_its_own_exit_code(error: type[Exception]) -> None:
    for failure in (EngineError("the engine went away"), WriteError("cannot write the x /y: No space left")):
        with pytest.raises(error) as caught, pipeline.stage(error):  # type: ignore[arg-type]
            raise failure
        assert str(caught.value) == str(failure) and caught.value.__cause__ is failure


def test_other_errors_keep_their_own_stage() -> None:
    with pytest.raises(ConfigError), pipeline.stage(BuildError):
        raise ConfigError("versions.yaml: wrong")


def test_no_engine_is_an_error_of_the_stage_that_needed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    for error, code in ((BuildError, 4), (VerifyError, 5), (RegistryError, 6)):
        with pytest.raises(error) as caught:
            pipeline.connect(error)
        assert caught.value.exit_code == code
        assert "no Docker Engine answers at DOCKER_HOST=unix:///nonexistent/docker.sock" in str(caught.value)


class Bases(FakeEngine):
    def __init__(self, source: BaseImageSource, reason: str = "") -> None:
        self.source, self.reason, self.asked = source, reason, list[str]()

    def base_image(self, reference: str) -> BaseImage:
        self.asked.append(reference)
        return BaseImage(reference=reference, source=self.source, reason=self.reason)


def build_options(*, work_dir: Path = Path("/build"), base_prefix: str | None = None) -> BuildOptions:
    return BuildOptions(backend=Backend.BUILDKIT, work_dir=work_dir, base_prefix=base_prefix)


def test_bases_are_checked_once_each_with_the_prefix() -> None:
    engine = Bases(BaseImageSource.REGISTRY)
    pipeline.check_bases_step([entry(), entry(), entry("mirror.example.com/ubuntu:22.04")],
                              build_options(base_prefix="mirror.example.com/library/"), engine)
    assert engine.asked == ["mirror.example.com/library/ubuntu:22.04", "mirror.example.com/ubuntu:22.04"]


@pytest.mark.parametrize(("source", "base", "error", "words"), [
    (BaseImageSource.MISSING, "ubuntu:22.04", ConfigError, "its registry does not have it (manifest unknown)"),
    (BaseImageSource.UNREACHABLE, "ubuntu:22.04", BuildError, "its registry cannot be reached (dial tcp: timeout)"),
    (BaseImageSource.MISSING, "nvidia/cuda:10.2-runtime-ubuntu18.04", ConfigError,
     "use base_image: ubuntu:18.04 for this entry"),
])
def test_a_base_that_is_not_there_stops_the_build_before_any_download(
        source: BaseImageSource, base: str, error: type[Exception], words: str) -> None:
    reason = "dial tcp: timeout" if source is BaseImageSource.UNREACHABLE else "manifest unknown"
    with pytest.raises(error) as caught:
        pipeline.check_bases_step([entry(base)], build_options(), Bases(source, reason))
    assert words in str(caught.value) and f"base image {base}" in str(caught.value)


class FailingBuild(FakeEngine):
    def image(self, reference: str) -> ImageConfig | None:
        return None  # no earlier build of the tag

    def build(self, request: BuildRequest) -> Built:
        raise EngineError(f"build of {request.tag} failed at RUN ...: exit 1")


def test_a_failed_build_is_a_build_error(tmp_path: Path) -> None:
    cached = tmp_path / "blob"
    cached.write_bytes(b"#!/bin/sh\n")
    file = FetchedFile(filename="installer.sh", path=cached, url="https://x.invalid/installer.sh", sha256="1" * 64)
    fetched = FetchedImage(image=entry(), installer=file, wheels=(), closure=())
    with pytest.raises(BuildError, match=r"^build of localhost:5999/tests/pipeline:t failed at RUN"):
        pipeline.build_step(fetched, build_options(work_dir=tmp_path / "build"), FailingBuild())


class NoGpuEngine(FakeEngine):
    """Holds one image; its containers print a passing CPU result; no GPU runtime."""

    def __init__(self) -> None:
        self.runs: list[ContainerRun] = []

    def image(self, reference: str) -> ImageConfig | None:
        return image_config(reference) if reference == "localhost:5999/tests/pipeline:t" else None

    def gpu_support(self, image: str | None = None) -> GpuSupport:
        return GpuSupport(available=False, reason="the engine's runtimes are runc")

    def run(self, spec: ContainerRun) -> ContainerOutput:
        self.runs.append(spec)
        result = {"ok": True, "checks": [], "python": "3.11.2", "torch": "2.13.0+cpu", "torch_cuda": None,
                  "device": "cpu", "uid": 1000, "gid": 100, "cwd": "/home/ma-user",
                  "environment": {"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir"}}
        return ContainerOutput(name="c", exit_code=0, stdout="MODELARTS_VERIFY_RESULT " + json.dumps(result),
                               stderr="", seconds=1.0, timed_out=False)


def test_verify_on_auto_falls_back_to_the_cpu_and_saves_the_report(tmp_path: Path) -> None:
    engine = NoGpuEngine()
    options = VerifyOptions(reports_dir=tmp_path / "verify", device=DeviceChoice.AUTO, timeout=42.0)
    with pytest.MonkeyPatch.context() as patch:  # the conformance probes are the verify tests' business
        patch.setattr("modelarts_images.verify.verifier.conformance.gather", lambda *args, **kwargs: None)
        patch.setattr("modelarts_images.verify.verifier.conformance.evaluate", lambda *args, **kwargs: [])
        verified = pipeline.verify_step(entry(), options, engine)
    assert [str(run.device) for run in verified.report.runs] == ["cpu"]
    assert verified.report.skipped == ("GPU: skipped, no GPU runtime (the engine's runtimes are runc)",)
    assert engine.runs[0].timeout == 42.0  # --timeout reaches the container
    assert verified.path == tmp_path / "verify" / "cell.json"
    assert json.loads(verified.path.read_text("utf-8"))["ok"] is True


def test_a_verification_that_cannot_be_saved_is_a_verify_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the reports directory should be\n")
    options = VerifyOptions(reports_dir=blocker / "verify", device=DeviceChoice.CPU)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("modelarts_images.verify.verifier.conformance.gather", lambda *args, **kwargs: None)
        patch.setattr("modelarts_images.verify.verifier.conformance.evaluate", lambda *args, **kwargs: [])
        with pytest.raises(VerifyError, match=f"^cannot write the verification result {blocker / 'verify'}"):
            pipeline.verify_step(entry(), options, NoGpuEngine())


class RecordingBuild(FailingBuild):
    def __init__(self) -> None:
        self.requests: list[BuildRequest] = []

    def build(self, request: BuildRequest) -> Built:
        self.requests.append(request)
        return super().build(request)


def test_inv_build_labels_the_image_with_the_hash_a_matrix_cell_looks_for(tmp_path: Path) -> None:
    """An image built by `inv build` and pushed by `inv push` is found unchanged by the matrix on any runner."""
    from modelarts_images.inputs import INPUTS_LABEL, image_hash
    from modelarts_images.matrix import runner
    from modelarts_images.options import resolve

    cached = tmp_path / "blob"
    cached.write_bytes(b"#!/bin/sh\n")
    file = FetchedFile(filename="installer.sh", path=cached, url="https://x.invalid/installer.sh", sha256="1" * 64)
    fetched = FetchedImage(image=entry(), installer=file, wheels=(), closure=())
    options = resolve(None, root=tmp_path)
    engine = RecordingBuild()
    with pytest.raises(BuildError):
        pipeline.build_step(fetched, options.build, engine, inputs=pipeline.image_inputs(fetched, options))
    (request,) = engine.requests
    for push in (False, True):
        cell = runner.Runner(runner.MatrixOptions(options=options, push=push), engine=lambda: engine)
        assert (INPUTS_LABEL, image_hash(cell._inputs(fetched))) in request.labels
