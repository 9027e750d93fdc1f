"""What artifact names say, and when they do not fit the image."""

from __future__ import annotations

import pytest

from modelarts_images.wheels import installer_problem, parse_wheel_name, wheel_problem

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
