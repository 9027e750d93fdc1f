"""Building the image without an engine: build arguments, labels and secrets decided from the fetched entry,
base-image references, the deleted NVIDIA tags, history entries, BuildKit commands, and an unreachable engine.
The real builds are in tests/engine/test_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelarts_images import options as run_options
from modelarts_images import pipeline, plan
from modelarts_images.build import builder as build
from modelarts_images.contract import DEFAULT_USER
from modelarts_images.engine import adapter, cli, images
from modelarts_images.engine.api import (
    Backend,
    BuildRequest,
    Built,
    ImageConfig,
    ImageSummary,
)
from modelarts_images.errors import BuildError, ConfigError, EngineError
from modelarts_images.options import Flags
from modelarts_images.shared import redact
from tests.support.engine_tier import (
    STAND_IN_INSTALLER,
    TEST_BASE,
    build_options,
    image_spec,
    small_image,
)
from tests.support.fake_engine import FakeEngine


class RecordingEngine(FakeEngine):
    """Takes every build request (and the pip.conf secret while it exists) instead of building."""

    def __init__(self) -> None:
        self.requests: list[BuildRequest] = []
        self.secret_texts: list[str] = []

    def build(self, request: BuildRequest) -> Built:
        self.requests.append(request)
        self.secret_texts += [path.read_text("utf-8") for _, path in request.secrets]
        return Built(image_id="sha256:" + "0" * 64)

    def image(self, reference: str) -> ImageConfig | None:
        return None  # no earlier build of the tag

    def summary(self, image_id: str, *, base_image: str | None) -> ImageSummary:
        return ImageSummary(image_id=image_id, size=1, layers=())


def test_build_arguments_follow_the_fetched_entry(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "x", "args", pip_index="https://robot:t0ken@pypi.example.com/simple")
    inputs = build.build_inputs(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"))
    args = dict(inputs.build_args)
    assert args["BASE_IMAGE"] == TEST_BASE
    assert args["INSTALLER"] == STAND_IN_INSTALLER.name
    assert args["CONDA_PREFIX"] == DEFAULT_USER.conda_prefix
    assert args["GPU_RUNTIME"] == "cpu"
    assert args["HERMETIC"] == "1"
    assert "PIP_INDEX" not in args, "a build argument lands in the image history"
    assert inputs.target == "image-buildkit" and not inputs.needs_secret  # hermetic: the index is not used at all
    assert args["SOURCE_DATE_EPOCH"] == "315532800"  # versions.lock's, or the default
    assert not any("t0ken" in value for _, value in inputs.build_args + inputs.labels)


def test_an_index_with_credentials_needs_the_secret_target(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "x", "secret", pip_index="https://robot:t0ken@pypi.example.com/simple",
                          closure=False)
    inputs = build.build_inputs(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"))
    assert inputs.needs_secret and inputs.target == "image-buildkit"
    assert dict(inputs.build_args)["HERMETIC"] == "0"
    assert dict(inputs.build_args)["INDEX_WITHOUT_CREDENTIALS"] == "https://pypi.example.com/simple"
    assert dict(inputs.labels)["modelarts-images.pip-index"] == "https://pypi.example.com/simple"
    assert not any("t0ken" in value for _, value in inputs.build_args + inputs.labels)
    # What the buildkit backend is asked to run for this entry (a preview takes only an unfetched entry now).
    recorder = RecordingEngine()
    build.build_image(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"), recorder)
    (request,) = recorder.requests
    assert ("BUILDKIT_INLINE_CACHE", "1") in request.build_args, "every BuildKit image carries its cache"
    buildx = cli.BuildKitCli(path="docker", mode=cli.BuildKitMode.BUILDX, version="")
    command, _ = cli.buildkit_command(buildx, request, tmp_path / "iid")
    shown = redact.command(command)
    assert "--target image-buildkit" in shown and "--secret id=pip.conf,src=" in shown and "t0ken" not in shown
    assert "t0ken" not in " ".join(command), "the secret goes in as a file, never on the command line"
    assert recorder.secret_texts and all("t0ken" in text for text in recorder.secret_texts)
    assert not any(path.exists() for _, path in request.secrets), "the secret file is removed after the build"


def test_the_classic_builder_refuses_an_index_with_credentials(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "x", "refused", pip_index="https://robot:t0ken@pypi.example.com/simple",
                          closure=False)
    with pytest.raises(ConfigError, match="--backend buildkit") as caught:
        build.build_image(fetched, build_options(Backend.DOCKER, tmp_path / "work"), FakeEngine())
    assert caught.value.exit_code == 2
    assert "t0ken" not in str(caught.value)
    assert not (tmp_path / "work").exists(), "refused before anything was assembled"


def test_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    # The backend is an enum once options are resolved: a bad name is refused where the flag is read.
    with pytest.raises(ConfigError, match="--backend: must be one of docker, buildkit") as caught:
        run_options.resolve(None, Flags(backend="podman"), root=tmp_path)
    assert caught.value.exit_code == 2


def test_labels_record_every_resolved_artifact(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "x", "labels")
    labels = dict(plan.labels(fetched.image, base_image="mirror.example.com/library/ubuntu:22.04", fetched=fetched))
    assert labels["modelarts-images.torch"] == "2.13.0"
    assert labels["org.opencontainers.image.base.name"] == "mirror.example.com/library/ubuntu:22.04"
    assert labels["modelarts-images.installer"] == (
        f"https://example.invalid/{STAND_IN_INSTALLER.name} sha256:{fetched.installer.sha256}")
    assert labels["modelarts-images.wheel.demo_app-1.0-py3-none-any.whl"].endswith(fetched.wheels[0].sha256)
    assert labels["modelarts-images.hermetic"] == "true"


@pytest.mark.parametrize(("reference", "prefix", "expected"), [
    ("ubuntu:22.04", "mirror.example.com/library/", "mirror.example.com/library/ubuntu:22.04"),
    ("ubuntu:22.04", "mirror.example.com/library", "mirror.example.com/library/ubuntu:22.04"),
    ("nvidia/cuda:12.1.1-runtime-ubuntu22.04", "hub.example.com",
     "hub.example.com/nvidia/cuda:12.1.1-runtime-ubuntu22.04"),
    ("swr.cn-north-4.myhuaweicloud.com/org/ubuntu:22.04", "mirror.example.com/",
     "swr.cn-north-4.myhuaweicloud.com/org/ubuntu:22.04"),
    ("localhost:5000/ubuntu:22.04", "mirror.example.com/", "localhost:5000/ubuntu:22.04"),
    ("ubuntu:22.04", None, "ubuntu:22.04"),
])
def test_base_prefix_applies_only_to_references_without_a_registry(reference: str, prefix: str | None,
                                                                    expected: str, tmp_path: Path) -> None:
    spec = image_spec(tag="t", base_image=reference)
    assert build.effective_base_image(spec, build_options(Backend.BUILDKIT, tmp_path, base_prefix=prefix)) == expected


def test_base_image_override_wins_and_gets_the_prefix_too(tmp_path: Path) -> None:
    spec = image_spec(tag="t", base_image="ubuntu:18.04")
    chosen = build_options(Backend.BUILDKIT, tmp_path, base_image="ubuntu:22.04", base_prefix="m.example.com/library/")
    assert build.effective_base_image(spec, chosen) == "m.example.com/library/ubuntu:22.04"


@pytest.mark.parametrize(("reference", "deleted"), [
    ("nvidia/cuda:10.2-runtime-ubuntu18.04", True),
    ("nvidia/cuda:9.0-base", True),
    ("nvidia/cuda:7.0-runtime", True),
    ("nvidia/cuda:11.2.0-runtime-ubuntu20.04", True),
    ("nvidia/cuda:11.4.0-cudnn8-runtime-ubuntu20.04", True),
    ("nvidia/cuda:11.4.2-base-ubuntu20.04", True),
    ("nvidia/cuda:11.7.0-devel-ubuntu22.04", True),
    # the last patch of each 11.x minor was kept
    ("nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04", False),
    ("nvidia/cuda:11.3.1-runtime-ubuntu20.04", False),
    ("nvidia/cuda:11.4.3-runtime-ubuntu20.04", False),
    ("nvidia/cuda:11.7.1-runtime-ubuntu22.04", False),
    ("nvidia/cuda:12.1.1-runtime-ubuntu22.04", False),
    ("nvidia/cuda:6.5-runtime", False),  # not in NVIDIA's list: the general not-found message
    ("mirror.example.com/nvidia/cuda:10.2-runtime-ubuntu18.04", True),
    ("nvidia/cuda:10.2", True),
    ("ubuntu:18.04", False),
])
def test_deleted_nvidia_tags_are_recognised(reference: str, deleted: bool) -> None:
    assert build.deleted_nvidia_tag(reference) is deleted


def test_nvidia_advice_names_the_matching_ubuntu() -> None:
    advice = build.nvidia_replacement("nvidia/cuda:10.2-runtime-ubuntu18.04")
    assert "NVIDIA deleted" in advice and "ubuntu:18.04" in advice and "NVIDIA_VISIBLE_DEVICES=all" in advice
    assert "issue 209" in advice and "was kept" not in advice


def test_nvidia_advice_names_the_patch_release_that_was_kept() -> None:
    advice = build.nvidia_replacement("nvidia/cuda:11.4.0-cudnn8-runtime-ubuntu20.04")
    assert "ubuntu:20.04" in advice and "the last patch of that CUDA minor, 11.4.3, was kept" in advice


@pytest.mark.parametrize(("created_by", "step"), [
    ("/bin/sh -c #(nop) COPY dir:0a1b in /home/ma-user/miniconda3 ", "COPY dir:0a1b in /home/ma-user/miniconda3"),
    ("|2 APT_MIRROR=http://m CONDA_PREFIX=/x /bin/sh -c set -eu;     apt-get update", "RUN set -eu; apt-get update"),
    ("RUN |1 APT_MIRROR=http://m /bin/sh -c set -eu; apt-get update # buildkit", "RUN set -eu; apt-get update"),
    ("COPY /home/ma-user/miniconda3 /home/ma-user/miniconda3 # buildkit",
     "COPY /home/ma-user/miniconda3 /home/ma-user/miniconda3"),
    ("/bin/sh -c useradd -m ma-user", "RUN useradd -m ma-user"),
    ("/bin/sh -c #(nop) COPY --chown=1000:100dir:0a1b in /home/ma-user/miniconda3 ",
     "COPY --chown=1000:100 dir:0a1b in /home/ma-user/miniconda3"),
])
def test_history_entries_read_as_dockerfile_steps(created_by: str, step: str) -> None:
    assert images.step_of(created_by) == step


def test_buildkit_commands_for_swr(tmp_path: Path) -> None:
    request = BuildRequest(backend=Backend.BUILDKIT, context_dir=tmp_path, target="image", tag="r/o/p:t",
                           build_args=(("A", "1"),), labels=(("l", "v w"),), no_cache=True, platform="linux/amd64")
    buildx = cli.BuildKitCli(path="/usr/bin/docker", mode=cli.BuildKitMode.BUILDX,
                             version="github.com/docker/buildx v0.12.1 x")
    command, env = cli.buildkit_command(buildx, request, tmp_path / "iid")
    assert command[:4] == ["/usr/bin/docker", "buildx", "build", "--load"]
    assert "--provenance=false" in command and "--sbom=false" in command and env == {}
    assert command[command.index("--label"):command.index("--label") + 2] == ["--label", "l=v w"]
    legacy = cli.BuildKitCli(path="/usr/bin/docker", mode=cli.BuildKitMode.LEGACY, version="20.10.24")
    command, env = cli.buildkit_command(legacy, request, tmp_path / "iid")
    assert command[:2] == ["/usr/bin/docker", "build"] and env == {"DOCKER_BUILDKIT": "1"}
    assert "--provenance=false" not in command and "--progress=plain" in command


def test_masked_commands_hide_url_credentials() -> None:
    # The user name stays (it is no secret), the password is masked.
    assert redact.command(["x", "--label", "u=https://robot:t0ken@h.example.com/simple"]) == (
        "x --label u=https://robot:***@h.example.com/simple")


def test_an_unreachable_engine_is_a_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(EngineError, match=r"there is no socket at /nonexistent/docker\.sock") as caught:
        adapter.connect()
    assert "DOCKER_HOST=unix:///nonexistent/docker.sock" in str(caught.value)
    assert "scripts/engine-up.sh" in str(caught.value)
    # Through the build stage's step: a build error, exit 4, with the same message.
    with pytest.raises(BuildError, match=r"there is no socket at /nonexistent/docker\.sock") as step_caught:
        pipeline.connect(BuildError)
    assert step_caught.value.exit_code == 4
    assert "DOCKER_HOST=unix:///nonexistent/docker.sock" in str(step_caught.value)
