"""Loading a valid versions file: inheritance, derived values, selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelarts_images.config import versions as config
from modelarts_images.errors import ConfigError
from modelarts_images.model import Accelerator, Artifact
from modelarts_images.shared import yamlio
from tests.conftest import INVOKE_FALLBACKS, ROOT

TWO_IMAGES = """
defaults:
  base_image: ubuntu:20.04
  organization: team-a
  python: "3.9"
  installer:
    url: https://repo.anaconda.com/miniconda/Miniconda3-py39_4.12.0-Linux-x86_64.sh
    sha256: 78f39f9bae971ec1ae7969f0516017f2413f17796670f7040725dd83fcff5689
images:
  - id: gpu
    cuda: "11.7"
    torch: "1.13.1"
    torchvision: "0.14.1"
  - id: cpu
    default: true
    cuda: cpu
    torch: "1.13.1"
    base_image: ubuntu:22.04
    organization: team-b
    repository: torch-cpu
    tag: latest-cpu
    wheels:
      - url: file:///srv/wheels/torch-1.13.1%2Bcpu-cp39-cp39-linux_x86_64.whl
        sha256: null
"""


def test_shipped_versions_file_loads() -> None:
    versions = config.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS)
    assert len(versions.images) >= 6
    default = versions.default_image
    assert default is not None
    assert default.id == "pytorch-1.8.1-cuda10.2"
    assert default.reference == "swr.cn-north-4.myhuaweicloud.com/deep-learning-demo/pytorch:1.8.1-cuda10.2"
    assert (default.python, default.cuda, default.torch) == ("3.7", "10.2", "1.8.1")
    assert (default.torchvision, default.torchaudio) == ("0.9.1", "0.8.1")
    assert default.installer.sha256 == "4dc4214839c60b2f5eb3efbdee1ef5d9b45e74f2c09fcae6c8934a13f36ffc3e"
    assert any(image.is_cpu for image in versions.images)
    assert not any(image.base_image.startswith("nvidia/cuda:10.2") for image in versions.images)


def test_defaults_are_inherited_and_overridden(write_versions) -> None:  # type: ignore[no-untyped-def]
    gpu, cpu = config.load_versions(write_versions(TWO_IMAGES), fallbacks=INVOKE_FALLBACKS).images
    assert gpu.base_image == "ubuntu:20.04"
    assert gpu.python == cpu.python == "3.9"
    assert gpu.reference == "swr.cn-north-4.myhuaweicloud.com/team-a/pytorch:1.13.1-cuda11.7"
    assert gpu.tag == "1.13.1-cuda11.7"
    assert gpu.variant == "cu117"
    assert gpu.wheels == ()
    assert gpu.torchaudio is None
    assert gpu.packages == (("torch", "1.13.1"), ("torchvision", "0.14.1"))
    assert cpu.reference == "swr.cn-north-4.myhuaweicloud.com/team-b/torch-cpu:latest-cpu"
    assert cpu.base_image == "ubuntu:22.04"
    assert cpu.variant == "cpu"
    assert cpu.wheels == (Artifact(url="file:///srv/wheels/torch-1.13.1%2Bcpu-cp39-cp39-linux_x86_64.whl",
                                   sha256=None),)
    assert cpu.wheels[0].filename == "torch-1.13.1+cpu-cp39-cp39-linux_x86_64.whl"


def test_builtin_mirrors_apply_when_nobody_sets_them(write_versions) -> None:  # type: ignore[no-untyped-def]
    gpu, _ = config.load_versions(write_versions(TWO_IMAGES), fallbacks=INVOKE_FALLBACKS).images
    assert gpu.pip_index == "https://repo.huaweicloud.com/repository/pypi/simple"
    assert gpu.apt_mirror == "http://repo.huaweicloud.com"


def test_versions_file_beats_invoke_yaml(write_versions) -> None:  # type: ignore[no-untyped-def]
    fallbacks = {**INVOKE_FALLBACKS, "organization": "from-invoke", "pip_index": "https://pypi.example/simple"}
    gpu, _ = config.load_versions(write_versions(TWO_IMAGES), fallbacks=fallbacks).images
    assert gpu.organization == "team-a"
    assert gpu.pip_index == "https://pypi.example/simple"


def test_missing_organization_points_at_invoke_yaml(write_versions) -> None:  # type: ignore[no-untyped-def]
    text = TWO_IMAGES.replace("  organization: team-a\n", "")
    with pytest.raises(ConfigError) as caught:
        config.load_versions(write_versions(text), fallbacks={})
    assert str(caught.value) == (
        "versions.yaml: images[0]: missing key 'organization' (set it on the image, under defaults or in invoke.yaml)"
    )


def test_all_problems_are_reported_at_once(write_versions) -> None:  # type: ignore[no-untyped-def]
    text = TWO_IMAGES.replace('cuda: "11.7"', 'cuda: "10.2"').replace("tag: latest-cpu", "tag: .bad")
    with pytest.raises(ConfigError) as caught:
        config.load_versions(write_versions(text), fallbacks=INVOKE_FALLBACKS)
    assert str(caught.value).splitlines() == [
        "versions.yaml: images[1].tag: must be 1-128 characters of letters, digits, '.', '_' or '-', "
        "not starting with '.' or '-' (SWR's tag rule)",
    ]
    text = TWO_IMAGES.replace('cuda: "11.7"', 'cuda: "10.2"').replace('torchvision: "0.14.1"', 'torchvision: "0.9.1"')
    with pytest.raises(ConfigError) as caught:
        config.load_versions(write_versions(text), fallbacks=INVOKE_FALLBACKS)
    assert str(caught.value).splitlines() == [
        "versions.yaml: images[0].cuda: torch 1.13.1 has no wheels for CUDA 10.2 (available: 11.6, 11.7, cpu)",
        "versions.yaml: images[0].torchvision: torch 1.13.1 goes with torchvision 0.14.1, not 0.9.1",
    ]


@pytest.fixture
def loaded(write_versions):  # type: ignore[no-untyped-def]
    return config.load_versions(write_versions(TWO_IMAGES), fallbacks=INVOKE_FALLBACKS)


def test_select_default(loaded) -> None:  # type: ignore[no-untyped-def]
    assert [image.id for image in config.select(loaded)] == ["cpu"]


def test_select_only_keeps_file_order(loaded) -> None:  # type: ignore[no-untyped-def]
    assert [image.id for image in config.select(loaded, only=["cpu", "gpu"])] == ["gpu", "cpu"]


def test_select_all(loaded) -> None:  # type: ignore[no-untyped-def]
    assert [image.id for image in config.select(loaded, all_images=True)] == ["gpu", "cpu"]


def test_select_unknown_id_suggests(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        config.select(loaded, only=["gpus"])
    assert str(caught.value) == "versions.yaml: no image has id 'gpus'; did you mean 'gpu'? (ids: gpu, cpu)"


def test_select_all_and_only_conflict(loaded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="--all and --only exclude each other"):
        config.select(loaded, only=["gpu"], all_images=True)


def test_select_without_default(write_versions) -> None:  # type: ignore[no-untyped-def]
    versions = config.load_versions(write_versions(TWO_IMAGES.replace("default: true", "default: false")),
                                    fallbacks=INVOKE_FALLBACKS)
    with pytest.raises(ConfigError, match="no image is marked 'default: true'; choose with --only ID or --all"):
        config.select(versions)


def test_a_single_image_is_the_default(write_versions) -> None:  # type: ignore[no-untyped-def]
    single = TWO_IMAGES.split("  - id: cpu")[0]
    versions = config.load_versions(write_versions(single), fallbacks=INVOKE_FALLBACKS)
    assert [image.id for image in config.select(versions)] == ["gpu"]


@pytest.mark.parametrize(("text", "ids"), [
    (None, ()), ("", ()), ("a", ("a",)), ("a,b", ("a", "b")), (" a , b c", ("a", "b", "c")),
    (["a,b", "c"], ("a", "b", "c")),
])
def test_split_ids(text: str | list[str] | None, ids: tuple[str, ...]) -> None:
    assert config.split_ids(text) == ids


def test_schema_file_is_beside_versions_yaml() -> None:
    beside = ROOT / "versions.schema.json"
    assert beside.is_file()
    packaged = ROOT / "modelarts_images" / "config" / "data" / "versions.schema.json"
    assert beside.read_text("utf-8") == packaged.read_text("utf-8")
    modeline = "# yaml-language-server: $schema=versions.schema.json"
    assert (ROOT / "versions.yaml").read_text("utf-8").startswith(modeline)


def test_a_misspelt_key_in_defaults_is_suggested(write_versions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        config.load_versions(write_versions(TWO_IMAGES.replace("base_image: ubuntu:20.04", "base_imge: x")))
    assert str(caught.value) == "versions.yaml: defaults.base_imge: unknown key; did you mean 'base_image'?"


def test_paths_in_messages(tmp_path: Path) -> None:
    assert yamlio.key_path(("images", 2, "installer", "sha256")) == "images[2].installer.sha256"
    assert yamlio.key_path(()) == ""


def test_the_user_defaults_to_ma_user_and_merges_key_by_key(write_versions) -> None:  # type: ignore[no-untyped-def]
    text = TWO_IMAGES.replace("defaults:\n", "defaults:\n  user: {uid: 1101}\n").replace(
        "    tag: latest-cpu\n", "    tag: latest-cpu\n    user: {name: work, gid: 1101}\n")
    gpu, cpu = config.load_versions(write_versions(text), fallbacks=INVOKE_FALLBACKS).images
    assert (gpu.user.name, gpu.user.uid, gpu.user.gid) == ("ma-user", 1101, 100)
    assert (cpu.user.name, cpu.user.uid, cpu.user.gid) == ("work", 1101, 1101)
    assert cpu.user.home == "/home/work" and cpu.user.conda_prefix == "/home/work/miniconda3"
    assert cpu.user.boot_command == "/home/work/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py"
    assert dict(cpu.user.job_environment(gpus=0))["MA_JOB_DIR"] == "/home/work/modelarts/user-job-dir"
    plain = config.load_versions(write_versions(TWO_IMAGES), fallbacks=INVOKE_FALLBACKS).images[0]
    assert (plain.user.name, plain.user.uid, plain.user.gid) == ("ma-user", 1000, 100)


@pytest.mark.parametrize(("user", "message"), [
    ("{uid: 0}", "images[0].user.uid: must be a whole number from 1 to 65533 (0 is root, 65534 is nobody)"),
    ("{gid: 65534}", "images[0].user.gid: must be a whole number from 1 to 65533"),
    ("{name: root}", "images[0].user.name: must be a Linux user name other than root"),
    ("{name: Ma User}", "images[0].user.name: must be a Linux user name other than root"),
    ("{uid: '1000'}", "images[0].user.uid: must be"),
    ("{home: /srv}", "images[0].user.home: unknown key"),
])
def test_a_user_that_cannot_be_is_refused(write_versions, user: str, message: str) -> None:  # type: ignore[no-untyped-def]
    text = TWO_IMAGES.replace("    cuda: \"11.7\"\n", f"    cuda: \"11.7\"\n    user: {user}\n", 1)
    with pytest.raises(ConfigError) as caught:
        config.load_versions(write_versions(text), fallbacks=INVOKE_FALLBACKS)
    assert message in str(caught.value)


def test_the_shipped_modelarts_preset_is_the_preset_it_names() -> None:
    # ModelArts' preset pytorch_2.1.0-cuda_12.1-py_3.10.6-ubuntu_22.04-x86_64
    images = {image.id: image for image in config.load_versions(ROOT / "versions.yaml",
                                                                fallbacks=INVOKE_FALLBACKS).images}
    preset = images["pytorch-2.1.0-cuda12.1"]
    assert (preset.torch, preset.cuda, preset.python, preset.base_image) == ("2.1.0", "12.1", "3.10", "ubuntu:22.04")
    assert "pytorch_2.1.0-cuda_12.1-py_3.10.6-ubuntu_22.04" in (ROOT / "versions.yaml").read_text()


@pytest.mark.parametrize(("cuda", "tag", "cell_tag", "label", "runtime"), [
    ("cpu", "cpu", "cpu", "cpu", "cpu"),
    ("10.2", "cu102", "cuda10", "cuda10.2", "cuda"),
    ("12.1", "cu121", "cuda12", "cuda12.1", "cuda"),
    ("11.8", "cu118", "cuda11", "cuda11.8", "cuda"),
])
def test_every_spelling_of_a_build_comes_from_its_cuda_value(cuda: str, tag: str, cell_tag: str, label: str,
                                                             runtime: str) -> None:
    accelerator = Accelerator.of(cuda)
    assert (accelerator.tag, accelerator.cell_tag, accelerator.label, accelerator.runtime) == (
        tag, cell_tag, label, runtime)
    assert accelerator.is_cpu is (cuda == "cpu") and Accelerator.is_tag(tag)


@pytest.mark.parametrize("label", ["cpu", "cu121", "cu102"])
def test_wheel_local_labels_that_name_a_build(label: str) -> None:
    assert Accelerator.is_tag(label)


@pytest.mark.parametrize("label", ["rocm6.1", "cuda12", "cu", "cpu.cxx11.abi", "xpu", ""])
def test_wheel_local_labels_that_name_no_build(label: str) -> None:
    assert not Accelerator.is_tag(label)
