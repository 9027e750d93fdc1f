"""What artifact names say, and when they do not fit the image."""

from __future__ import annotations

import pytest
from packaging.tags import Tag

from modelarts_images.config.wheels import distribution_name, installer_problem, parse_wheel_name, wheel_problem

VERSIONS = {"torch": "1.8.1", "torchvision": "0.9.1", "torchaudio": "0.8.1"}


def test_parse_torch_wheel() -> None:
    wheel = parse_wheel_name("torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl")
    assert wheel is not None
    assert (wheel.distribution, wheel.version, wheel.local) == ("torch", "1.8.1", "cu102")
    assert (wheel.python_tags, wheel.abi, wheel.platforms) == (("cp37",), "cp37m", ("linux_x86_64",))


def test_parse_rejects_non_wheels() -> None:
    assert parse_wheel_name("torch-1.8.1.tar.gz") is None
    assert parse_wheel_name("torch.whl") is None


@pytest.mark.parametrize("filename", [
    "torch-1.8.1+cu102-cp37-cp37m-linux_x86_64.whl",
    "torchaudio-0.8.1-cp37-cp37m-linux_x86_64.whl",
    "typing_extensions-4.7.1-py3-none-any.whl",
    "numpy-1.21.6-cp37-cp37m-manylinux_2_12_x86_64.manylinux2010_x86_64.whl",
    "cryptography-41.0.0-cp37-abi3-manylinux_2_28_x86_64.whl",
])
def test_fitting_wheels(filename: str) -> None:
    assert wheel_problem(filename, python="3.7", cuda="10.2", versions=VERSIONS) is None


@pytest.mark.parametrize(("filename", "message"), [
    ("torch-1.8.1-cp37-cp37m-win_amd64.whl", "is a wheel for win_amd64, but images are built for Linux x86_64"),
    ("torch-1.8.1-cp37-cp37m-manylinux2014_aarch64.whl", "is a wheel for manylinux2014_aarch64"),
    ("torch-1.8.0+cu102-cp37-cp37m-linux_x86_64.whl", "is torch 1.8.0, but torch: 1.8.1 is set"),
    ("torch-1.8.1+cpu-cp37-cp37m-linux_x86_64.whl", "is built for cpu, but the image's cuda is 10.2 (cu102)"),
    ("torch-1.8.1+cu102-cp39-cp39-linux_x86_64.whl", "is a wheel for cp39, but the image's python is 3.7"),
    ("torch-1.8.1.zip", "is not a wheel file name"),
])
def test_misfits(filename: str, message: str) -> None:
    problem = wheel_problem(filename, python="3.7", cuda="10.2", versions=VERSIONS)
    assert problem is not None
    assert message in problem


def test_parse_build_tag() -> None:
    wheel = parse_wheel_name("torch-2.1.0+cu121-1build2-cp310-cp310-linux_x86_64.whl")
    assert wheel is not None
    assert (wheel.distribution, wheel.version, wheel.local, wheel.build) == ("torch", "2.1.0", "cu121", (1, "build2"))
    assert (wheel.python_tags, wheel.abi, wheel.platforms) == (("cp310",), "cp310", ("linux_x86_64",))
    assert wheel_problem("torch-2.1.0+cu121-1-cp310-cp310-linux_x86_64.whl", python="3.10", cuda="12.1",
                         versions={"torch": "2.1.0"}) is None


def test_parse_normalises_name_and_version() -> None:
    wheel = parse_wheel_name("Typing.Extensions-04.07.01-py3-none-any.whl")
    assert wheel is not None
    assert (wheel.distribution, wheel.version, wheel.local, wheel.build) == ("typing_extensions", "4.7.1", None, ())
    torch = parse_wheel_name("Torch-1.8.01+CU102-cp37-cp37m-linux_x86_64.whl")
    assert torch is not None
    assert (torch.distribution, torch.version, torch.local) == ("torch", "1.8.1", "cu102")
    assert distribution_name("Typing-Extensions") == "typing_extensions"


def test_parse_compressed_tag_set_keeps_the_name_order() -> None:
    wheel = parse_wheel_name("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert wheel is not None
    assert wheel.platforms == ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
    six = parse_wheel_name("six-1.16.0-py2.py3-none-any.whl")
    assert six is not None
    assert six.python_tags == ("py2", "py3")
    assert six.tags == {Tag("py2", "none", "any"), Tag("py3", "none", "any")}


@pytest.mark.parametrize("filename", [
    "Torch-1.8.01+cu102-cp37-cp37m-linux_x86_64.whl",
    "torch-1.8.1+cu102-1-cp37-cp37m-manylinux1_x86_64.whl",
    "six-1.16.0-py2.py3-none-any.whl",
    "attrs-19.3.0-py36-none-any.whl",
    "markupsafe-2.1.0-cp37-cp37m.abi3-manylinux_2_17_x86_64.whl",
    "charset_normalizer-3.3.2-cp36.cp37-abi3-linux_x86_64.whl",
])
def test_fitting_wheels_packaging_reads(filename: str) -> None:
    assert wheel_problem(filename, python="3.7", cuda="10.2", versions=VERSIONS) is None


@pytest.mark.parametrize(("python", "fits"), [("3.7", False), ("3.8", True), ("3.11", True)])
def test_abi3_wheel_needs_its_python_or_later(python: str, fits: bool) -> None:
    problem = wheel_problem("cryptography-41.0.0-cp38-abi3-manylinux_2_28_x86_64.whl", python=python, cuda="cpu",
                            versions={})
    if fits:
        assert problem is None
    else:
        assert problem is not None and f"is a wheel for cp38, but the image's python is {python}" in problem


@pytest.mark.parametrize(("filename", "message"), [
    ("Torch-1.8.1+CU111-cp37-cp37m-linux_x86_64.whl", "is built for cu111, but the image's cuda is 10.2 (cu102)"),
    ("torch-1.8.2-cp37-cp37m-linux_x86_64.whl", "is torch 1.8.2, but torch: 1.8.1 is set"),
    ("numpy-1.21.6-cp37-cp37m-musllinux_1_1_x86_64.whl", "is a wheel for musllinux_1_1_x86_64, but images are built"),
    ("odd-1.0-cp3x-abi3-linux_x86_64.whl", "is a wheel for cp3x, but the image's python is 3.7"),
    ("numpy-1.21.6-cp37-cp37dm-linux_x86_64.whl", "is a wheel for cp37-cp37dm, but the image's python is 3.7"),
    ("numpy-1.21.6-cp36-cp36m-linux_x86_64.whl", "is a wheel for cp36, but the image's python is 3.7"),
])
def test_misfits_packaging_reads(filename: str, message: str) -> None:
    problem = wheel_problem(filename, python="3.7", cuda="10.2", versions=VERSIONS)
    assert problem is not None
    assert message in problem


@pytest.mark.parametrize(("filename", "reason"), [
    ("torch-not~a~version-cp37-cp37m-linux_x86_64.whl", "invalid version"),
    ("torch-1.8.1-x-cp37-cp37m-linux_x86_64.whl", "build number"),
    ("torch-1.8.1-cp37-cp37m-linux-x86-64.whl", "wrong number of parts"),
    ("tor ch-1.8.1-cp37-cp37m-linux_x86_64.whl", "project name"),
])
def test_invalid_wheel_names_say_why(filename: str, reason: str) -> None:
    assert parse_wheel_name(filename) is None
    problem = wheel_problem(filename, python="3.7", cuda="10.2", versions=VERSIONS)
    assert problem is not None
    assert problem.startswith(f"'{filename}' is not a wheel file name (name-version[-build]-python-abi-platform.whl): ")
    assert reason in problem.lower()


def test_free_threaded_wheel_names_its_abi() -> None:
    filename = "torch-2.6.0-cp313-cp313t-manylinux_2_28_x86_64.whl"
    assert wheel_problem(filename, python="3.13", cuda="cpu", versions={}) == (
        f"'{filename}' is a wheel for cp313-cp313t, but the image's python is 3.13")


def test_architecture_is_a_parameter() -> None:
    aarch64 = "torch-2.1.0-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert wheel_problem(aarch64, python="3.10", cuda="cpu", versions={}, arch="aarch64") is None
    problem = wheel_problem("torch-2.1.0-cp310-cp310-linux_x86_64.whl", python="3.10", cuda="cpu", versions={},
                            arch="aarch64")
    assert problem == ("'torch-2.1.0-cp310-cp310-linux_x86_64.whl' is a wheel for linux_x86_64, "
                       "but images are built for Linux aarch64")


@pytest.mark.parametrize(("filename", "python", "message"), [
    ("Miniconda3-py37_4.12.0-Linux-x86_64.sh", "3.7", None),
    ("Miniconda3-py310_23.5.2-0-Linux-x86_64.sh", "3.10", None),
    ("Miniforge3-24.3.0-0-Linux-x86_64.sh", "3.11", None),
    ("stand-in-installer.sh", "3.11", None),
    ("Miniconda3-py39_4.12.0-Linux-x86_64.sh", "3.10", "installs Python 3.9, but the image's python is 3.10"),
    ("Miniconda3-py39_4.12.0-MacOSX-arm64.sh", "3.9", "is an installer for MacOSX-arm64"),
    ("Miniconda3-py39_4.12.0-Linux-aarch64.sh", "3.9", "is an installer for Linux-aarch64"),
])
def test_installer_names(filename: str, python: str, message: str | None) -> None:
    problem = installer_problem(filename, python=python)
    if message is None:
        assert problem is None
    else:
        assert problem is not None and message in problem
