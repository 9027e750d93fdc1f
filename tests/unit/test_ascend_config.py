"""Ascend NPU and aarch64 entries, the configuration and wheel side: the torch_npu / CANN / Python / chip table
(data/ascend.yaml) and its refusals, versions.yaml entries with `accelerator: ascend` or `arch: aarch64`, the
installer and wheel checks for an architecture, torch wheels that are CUDA builds, pip's platform tags and markers
for an aarch64 image (a real pip run against local wheels on this x86_64 host), and the lock's `arch` input.

No network: wheels are built in tmp_path or served by the unit tier's loopback `server`."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import Marker
from packaging.version import Version

from modelarts_images.config import ascend, compat, wheels
from modelarts_images.config import versions as config
from modelarts_images.config.references import derived_tag
from modelarts_images.errors import ConfigError, FetchError
from modelarts_images.fetch import fetcher, index, lockfile, sources
from modelarts_images.fetch.fetcher import fetch_images
from modelarts_images.http import pip_resolver
from modelarts_images.model import AARCH64, X86_64, Accelerator, Ascend, FetchedFile, ImageSpec
from modelarts_images.options import FetchOptions
from modelarts_images.shared import yamlio
from tests.conftest import INVOKE_FALLBACKS, ROOT
from tests.support.http_server import FileServer
from tests.support.wheels import make_wheel

TORCH = "2.6.0"
CANN = "8.2.RC1"
CHIP = "910b"
PYTHON = "3.11"
AARCH64_INSTALLER = "Miniconda3-py311_23.5.2-0-Linux-aarch64.sh"
X86_64_INSTALLER = "Miniconda3-py311_23.5.2-0-Linux-x86_64.sh"
INSTALLER_BODY = b"#!/bin/bash\necho stand-in installer\n"
TORCH_AARCH64 = "torch-2.6.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl"
TORCH_X86_64 = "torch-2.6.0+cpu-cp311-cp311-linux_x86_64.whl"
NPU_AARCH64 = "torch_npu-2.6.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
NPU_X86_64 = "torch_npu-2.6.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
SHIPPED_CPU_AARCH64 = "pytorch-2.9.1-cpu-aarch64"
SHIPPED_ASCEND = "pytorch-2.6.0-cann8.2.rc1-910b"

# torch 2.6.0's METADATA on PyPI (the same for its x86_64 and aarch64 wheels): NVIDIA's wheels only on x86_64.
TORCH_2_6_REQUIRES = (
    "filelock",
    "typing-extensions>=4.10.0",
    "networkx",
    "jinja2",
    "fsspec",
    'nvidia-cuda-nvrtc-cu12==12.4.127; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-cuda-runtime-cu12==12.4.127; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-cudnn-cu12==9.1.0.70; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-cublas-cu12==12.4.5.8; platform_system == "Linux" and platform_machine == "x86_64"',
    'triton==3.2.0; platform_system == "Linux" and platform_machine == "x86_64"',
    'setuptools; python_version >= "3.12"',
    'sympy==1.13.1; python_version >= "3.9"',
    'opt-einsum>=3.3; extra == "opt-einsum"',
)
# A torch whose aarch64 wheel is a CUDA build (PyPI's from about 2.10 on): NVIDIA's wheels on every Linux machine.
CUDA_AARCH64_REQUIRES = (
    "filelock",
    'nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"',
    'nvidia-cublas-cu12==12.8.4.1; platform_system == "Linux"',
    'nvidia-nccl-cu12==2.27.3; platform_system == "Linux"',
    'nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux"',
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# data/ascend.yaml and config/ascend.py


def raw_table() -> dict[str, Any]:
    loaded: dict[str, Any] = yamlio.safe_load((ROOT / ascend.TABLE).read_text("utf-8"))
    return loaded


def schema_pattern(name: str) -> re.Pattern[str]:
    return re.compile(config.schema()["$defs"][name]["pattern"])


def test_every_table_row_names_its_torch_cann_pythons_and_source() -> None:
    raw, table = raw_table(), ascend.load_table()
    assert set(table.releases) == set(raw["torch_npu"])
    for name, row in raw["torch_npu"].items():
        assert set(row) == {"torch", "cann", "python", "source"}, name
        assert isinstance(row["source"], str) and row["source"].strip(), name
        release = table.releases[name]
        assert release.source == row["source"] and release.torch_npu == name
        assert Version(name).base_version == release.torch, f"torch_npu {name} pins torch {release.torch}"
        assert release.cann and release.python, name
    assert table.modelarts_source.strip() and table.modelarts_cann and table.modelarts_drivers
    assert CHIP in table.chips


def test_table_values_are_what_versions_yaml_may_spell() -> None:
    """Every release, CANN and chip the table names passes the schema's own pattern for that key, so every row
    can be asked for in versions.yaml."""
    table = ascend.load_table()
    npu, cann, chip = schema_pattern("torch_npu"), schema_pattern("cann"), schema_pattern("npu")
    for release in table.releases.values():
        assert npu.match(release.torch_npu), release.torch_npu
        assert all(cann.match(value) for value in release.cann), release
        assert all(re.fullmatch(r"3\.\d+", python) for python in release.python), release
    assert all(cann.match(value) for value in table.modelarts_cann)
    assert all(chip.match(value) for value in table.chips)


def test_the_shipped_combination_has_no_problem_derived_or_named() -> None:
    assert ascend.check(torch=TORCH, python=PYTHON, cann=CANN, chip=CHIP, torch_npu=None) == []
    assert ascend.check(torch=TORCH, python=PYTHON, cann=CANN, chip=CHIP, torch_npu="2.6.0") == []


def test_every_release_on_a_cann_modelarts_runs_passes_for_each_of_its_pythons_and_chips() -> None:
    table = ascend.load_table()
    checked = 0
    for release in table.releases.values():
        for cann in set(release.cann) & set(table.modelarts_cann):
            for python in release.python:
                for chip in table.chips:
                    assert ascend.check(torch=release.torch, python=python, cann=cann, chip=chip,
                                        torch_npu=release.torch_npu) == [], (release, python, chip)
                    checked += 1
    assert checked, "no torch_npu release in the table is built for a CANN ModelArts runs"


def test_derive_torch_npu_is_the_newest_release_for_torch_and_cann_by_version_not_text() -> None:
    def release(name: str, cann: str) -> ascend.TorchNpuRelease:
        return ascend.TorchNpuRelease(torch_npu=name, torch="2.1.0", cann=(cann,), python=("3.10",), source="test")

    table = ascend.AscendTable(
        releases={name: release(name, cann) for name, cann in
                  (("2.1.0.post2", "8.0.0"), ("2.1.0.post10", "8.0.0"), ("2.1.0.post9", "8.0.0"),
                   ("2.1.0.post13", "8.2.RC1"))},
        modelarts_cann=("8.0.0",), modelarts_drivers=("1",), modelarts_source="test", chips=(CHIP,))
    assert ascend.derive_torch_npu(torch="2.1.0", cann="8.0.0", table=table) == "2.1.0.post10"
    assert ascend.derive_torch_npu(torch="2.1.0", cann="8.2.RC1", table=table) == "2.1.0.post13"
    assert ascend.derive_torch_npu(torch="2.1.0", cann="8.1.RC1", table=table) is None
    assert ascend.derive_torch_npu(torch="2.2.0", cann="8.0.0", table=table) is None


def test_derive_torch_npu_from_the_shipped_table() -> None:
    table = ascend.load_table()
    assert ascend.derive_torch_npu(torch=TORCH, cann=CANN) == "2.6.0"
    for release in table.releases.values():
        for cann in release.cann:
            derived = ascend.derive_torch_npu(torch=release.torch, cann=cann)
            assert derived is not None
            chosen = table.releases[derived]
            assert chosen.torch == release.torch and cann in chosen.cann
            assert Version(derived) >= Version(release.torch_npu)


def test_a_torch_npu_for_another_torch_is_refused_naming_the_torch_it_pins() -> None:
    pinned = ascend.load_table().releases["2.6.0"].torch
    problems = ascend.check(torch="2.5.1", python=PYTHON, cann=CANN, chip=CHIP, torch_npu="2.6.0")
    assert problems == [compat.Problem(key="torch", message=f"torch_npu 2.6.0 pins torch {pinned}, not 2.5.1")]


def test_a_cann_the_torch_npu_was_not_built_for_is_refused_listing_the_releases_for_that_cann() -> None:
    table = ascend.load_table()
    named = "2.6.0.post3"
    assert CANN not in table.releases[named].cann
    (problem,) = ascend.check(torch=TORCH, python=PYTHON, cann=CANN, chip=CHIP, torch_npu=named)
    assert problem.key == "cann"
    assert problem.message.startswith(f"torch_npu {named} is built for CANN {', '.join(table.releases[named].cann)}, "
                                      f"not {CANN} (for CANN {CANN}: ")
    for_cann = [release for release in table.releases.values() if CANN in release.cann]
    assert len(for_cann) > 1
    for release in for_cann:
        assert f"{release.torch_npu} (torch {release.torch}, CANN {'/'.join(release.cann)})" in problem.message
    listed = re.findall(r"(\S+) \(torch ", problem.message)
    assert listed == sorted(listed, key=Version, reverse=True), "newest first"


def test_a_torch_no_torch_npu_pins_for_the_cann_is_refused_listing_both_sides() -> None:
    table = ascend.load_table()
    torch = "2.7.1"
    assert ascend.derive_torch_npu(torch=torch, cann=CANN) is None
    (problem,) = ascend.check(torch=torch, python=PYTHON, cann=CANN, chip=CHIP, torch_npu=None)
    assert problem.key == "torch"
    assert problem.message.startswith(f"no torch_npu release pins torch {torch} for CANN {CANN}")
    for_cann = [release.torch_npu for release in table.releases.values() if CANN in release.cann]
    for_torch = [release.torch_npu for release in table.releases.values() if release.torch == torch]
    assert for_cann and for_torch
    before, after = problem.message.split(f"; for torch {torch}: ")
    assert all(f" {name} (torch " in before for name in for_cann)
    assert all(re.search(rf"(^|, ){re.escape(name)} \(torch ", after) for name in for_torch)
    assert problem.message.endswith(f"see {ascend.TABLE})")


def test_a_torch_no_torch_npu_pins_at_all_says_none() -> None:
    (problem,) = ascend.check(torch="1.0.0", python=PYTHON, cann=CANN, chip=CHIP, torch_npu=None)
    assert "for torch 1.0.0: none;" in problem.message


def test_a_cann_modelarts_drivers_do_not_run_is_refused_naming_what_they_run() -> None:
    table = ascend.load_table()
    named = "2.6.0.post3"  # built for 8.3.RC1: only the platform's drivers are in the way
    (cann,) = table.releases[named].cann
    assert cann not in table.modelarts_cann
    (problem,) = ascend.check(torch=TORCH, python=PYTHON, cann=cann, chip=CHIP, torch_npu=named)
    assert problem.key == "cann"
    assert problem.message.startswith(f"CANN {cann} is not one ModelArts' Ascend drivers run")
    assert f"take CANN {', '.join(table.modelarts_cann)}" in problem.message
    assert all(driver in problem.message for driver in table.modelarts_drivers)
    assert table.modelarts_source in problem.message


def test_a_python_torch_npu_has_no_wheel_for_is_refused_naming_the_pythons_it_has() -> None:
    pythons = ascend.load_table().releases["2.6.0"].python
    assert "3.12" not in pythons
    (problem,) = ascend.check(torch=TORCH, python="3.12", cann=CANN, chip=CHIP, torch_npu=None)
    assert problem == compat.Problem(key="python", message=(
        f"torch_npu 2.6.0 has no wheels for Python 3.12 (available: {compat.span(pythons)})"))
    assert min(pythons, key=Version) in problem.message and max(pythons, key=Version) in problem.message


def test_an_unknown_chip_is_refused_listing_the_chips() -> None:
    chips = ascend.load_table().chips
    (problem,) = ascend.check(torch=TORCH, python=PYTHON, cann=CANN, chip="920", torch_npu=None)
    assert problem.key == "npu"
    assert f"(chips: {', '.join(chips)};" in problem.message and "'920'" in problem.message


def test_an_unknown_torch_npu_is_refused_naming_the_known_range() -> None:
    known = sorted(ascend.load_table().releases, key=Version)
    (problem,) = ascend.check(torch=TORCH, python=PYTHON, cann=CANN, chip=CHIP, torch_npu="9.9.9")
    assert problem.key == "torch_npu"
    assert f"(known: {known[0]} to {known[-1]};" in problem.message


def test_every_problem_of_an_entry_is_reported_at_once() -> None:
    problems = ascend.check(torch="2.5.1", python="3.13", cann="8.3.RC1", chip="920", torch_npu="2.6.0")
    assert [problem.key for problem in problems] == ["npu", "cann", "torch", "cann", "python"]


# --------------------------------------------------------------------------------------------------------------
# versions.yaml: Ascend and aarch64 entries


def ascend_entry(**changes: Any) -> dict[str, Any]:
    """An Ascend entry as versions.yaml has it; a key set to None is left out. Its base is the CANN image of
    its own CANN, chip and Python unless `base_image` says otherwise."""
    entry: dict[str, Any] = {"id": "npu", "accelerator": "ascend", "cann": CANN, "npu": CHIP, "python": PYTHON,
                             "torch": TORCH, "installer": {"url": f"https://repo.anaconda.com/miniconda/"
                                                                 f"{AARCH64_INSTALLER}"}}
    entry.update(changes)
    entry.setdefault("base_image", f"quay.io/ascend/cann:{str(entry.get('cann', CANN)).lower()}-"
                                   f"{entry.get('npu', CHIP)}-ubuntu22.04-py{entry['python']}")
    return {key: value for key, value in entry.items() if value is not None}


def load(tmp_path: Path, *entries: dict[str, Any], defaults: dict[str, Any] | None = None) -> tuple[ImageSpec, ...]:
    document: dict[str, Any] = {"images": list(entries)}
    if defaults:
        document["defaults"] = defaults
    path = tmp_path / "versions.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")
    return config.load_versions(path, fallbacks=INVOKE_FALLBACKS).images


def refused(tmp_path: Path, *entries: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, *entries, defaults=defaults)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_an_ascend_entry_is_aarch64_torch_cpu_and_torch_npu_without_saying_so(tmp_path: Path) -> None:
    (image,) = load(tmp_path, ascend_entry())
    assert (image.arch, image.platform) == (AARCH64, "linux/arm64")
    assert image.is_npu and image.is_cpu and image.cuda == "cpu" and image.variant == "cpu"
    derived = ascend.derive_torch_npu(torch=TORCH, cann=CANN)
    assert image.ascend == Ascend(cann=CANN, chip=CHIP, torch_npu=str(derived), set_env=None)
    assert image.packages == (("torch", TORCH), ("torch_npu", derived))
    assert image.accelerator == Accelerator(cann=CANN, chip=CHIP)
    assert (image.accelerator.label, image.accelerator.cell_tag) == (f"cann{CANN}-{CHIP}", "npu")
    assert image.tag == f"{TORCH}-cann{CANN}-{CHIP}"  # no -aarch64: every Ascend image is aarch64
    assert image.reference.endswith(f"/pytorch:{TORCH}-cann{CANN}-{CHIP}")


def test_an_ascend_entry_keeps_the_torch_npu_and_set_env_it_names(tmp_path: Path) -> None:
    (image,) = load(tmp_path, ascend_entry(torch="2.1.0", torch_npu="2.1.0.post13", python="3.10",
                                           cann_set_env="/opt/cann/set_env.sh",
                                           installer={"url": "https://repo.anaconda.com/miniconda/"
                                                             "Miniconda3-py310_23.5.2-0-Linux-aarch64.sh"}))
    assert image.ascend == Ascend(cann=CANN, chip=CHIP, torch_npu="2.1.0.post13", set_env="/opt/cann/set_env.sh")


@pytest.mark.parametrize("spelling", ["aarch64", "arm64"])
def test_arch_arm64_and_aarch64_are_one_architecture(tmp_path: Path, spelling: str) -> None:
    npu, cpu = load(tmp_path, ascend_entry(arch=spelling),
                    {"id": "cpu", "arch": spelling, "python": PYTHON, "cuda": "cpu", "torch": "2.9.1",
                     "base_image": "ubuntu:22.04", "installer": {"url": f"https://example.org/{AARCH64_INSTALLER}"}})
    assert npu.arch == cpu.arch == AARCH64
    assert cpu.platform == "linux/arm64" and not cpu.is_npu and cpu.ascend is None
    assert cpu.tag == "2.9.1-cpu-aarch64"


@pytest.mark.parametrize("spelling", ["x86_64", "amd64"])
def test_an_ascend_entry_on_x86_64_is_refused(tmp_path: Path, spelling: str) -> None:
    message = refused(tmp_path, ascend_entry(arch=spelling))
    assert message == ("versions.yaml: images[0].arch: ModelArts' Ascend flavours are aarch64: an Ascend entry is "
                       "arch: aarch64 (leave arch out), not x86_64")


def test_an_ascend_entry_ignores_a_cuda_from_defaults_but_refuses_its_own(tmp_path: Path) -> None:
    (image,) = load(tmp_path, ascend_entry(), defaults={"cuda": "12.1"})
    assert image.cuda == "cpu" and image.is_npu
    message = refused(tmp_path, ascend_entry(cuda="12.1"))
    assert message.startswith("versions.yaml: images[0].cuda: an Ascend image has no CUDA")
    assert 'not "12.1"' in message


def test_an_ascend_entry_without_cann_or_npu_is_refused_naming_both(tmp_path: Path) -> None:
    message = refused(tmp_path, ascend_entry(cann=None, npu=None, base_image="ubuntu:22.04"))
    assert "images[0].cann: an Ascend entry needs 'cann'" in message
    assert "images[0].npu: an Ascend entry needs 'npu'" in message


@pytest.mark.parametrize("key", ["cann", "npu", "torch_npu", "cann_set_env"])
def test_ascend_keys_on_another_entry_are_refused(tmp_path: Path, key: str) -> None:
    value = {"cann": CANN, "npu": CHIP, "torch_npu": "2.6.0", "cann_set_env": "/opt/set_env.sh"}[key]
    entry = {"id": "cpu", "python": PYTHON, "cuda": "cpu", "torch": "2.9.1", "base_image": "ubuntu:22.04",
             "installer": {"url": f"https://example.org/{X86_64_INSTALLER}"}, key: value}
    assert refused(tmp_path, entry) == (f"versions.yaml: images[0].{key}: '{key}' is for Ascend images only "
                                        "(accelerator: ascend)")


def test_an_ascend_entry_is_checked_against_the_table_with_its_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, ascend_entry(torch_npu="2.5.1.post1"))
    assert message == "versions.yaml: images[0].torch: torch_npu 2.5.1.post1 pins torch 2.5.1, not 2.6.0"
    assert "images[0].npu: '920' is not an Ascend chip" in refused(tmp_path, ascend_entry(npu="920"))
    assert "images[0].cann: CANN 8.3.RC1 is not one ModelArts' Ascend drivers run" in refused(
        tmp_path, ascend_entry(cann="8.3.RC1", torch_npu="2.6.0.post3"))
    assert "images[0].python: torch_npu 2.6.0 has no wheels for Python 3.12" in refused(
        tmp_path, ascend_entry(python="3.12", installer={"url": "https://example.org/Miniforge3-Linux-aarch64.sh"}))


@pytest.mark.parametrize(("tag", "named"), [
    ("8.3.rc1-910b-ubuntu22.04-py3.11", "CANN 8.3.rc1 (the entry has 8.2.RC1)"),
    ("8.2.rc1-310p-ubuntu22.04-py3.11", "chip 310p (the entry has 910b)"),
    ("8.2.rc1-910b-openeuler22.03-py3.10", "Python 3.10 (the entry has 3.11)"),
    ("8.0.0-a3-ubuntu22.04-py3.9", "CANN 8.0.0 (the entry has 8.2.RC1), chip a3 (the entry has 910b), "
                                   "Python 3.9 (the entry has 3.11)"),
])
def test_a_cann_base_image_naming_another_cann_chip_or_python_is_refused(tmp_path: Path, tag: str,
                                                                         named: str) -> None:
    message = refused(tmp_path, ascend_entry(base_image=f"swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:{tag}"))
    assert message == (f"versions.yaml: images[0].base_image: the base image's tag names {named}: pick the CANN "
                       "image that matches")


@pytest.mark.parametrize("tag", ["8.2.rc1-910b-ubuntu22.04-py3.11", "8.2.RC1-910b-openeuler24.03-py3.11"])
def test_a_cann_base_image_of_the_entrys_own_cann_chip_and_python_loads_in_either_case(tmp_path: Path,
                                                                                        tag: str) -> None:
    (image,) = load(tmp_path, ascend_entry(base_image=f"quay.io/ascend/cann:{tag}"))
    assert image.base_image == f"quay.io/ascend/cann:{tag}"


def test_the_repositorys_aarch64_cpu_and_ascend_entries_load() -> None:
    images = {image.id: image for image in
              config.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS).images}
    cpu, npu = images[SHIPPED_CPU_AARCH64], images[SHIPPED_ASCEND]

    assert (cpu.arch, cpu.platform, cpu.is_npu, cpu.ascend) == (AARCH64, "linux/arm64", False, None)
    assert cpu.tag == f"{cpu.torch}-cpu-aarch64" and cpu.reference.endswith(f":{cpu.torch}-cpu-aarch64")
    assert (cpu.accelerator.label, cpu.accelerator.cell_tag) == ("cpu", "cpu")
    assert cpu.installer.filename.endswith("-Linux-aarch64.sh")
    x86 = next(image for image in images.values() if image.torch == cpu.torch and image.arch == X86_64
               and image.is_cpu and not image.is_npu)
    assert x86.tag != cpu.tag and x86.platform == "linux/amd64"

    assert (npu.arch, npu.platform, npu.is_npu, npu.is_cpu) == (AARCH64, "linux/arm64", True, True)
    assert npu.ascend is not None
    assert npu.ascend.torch_npu == ascend.derive_torch_npu(torch=npu.torch, cann=npu.ascend.cann) == "2.6.0"
    assert (npu.ascend.cann, npu.ascend.chip) == (CANN, CHIP)
    assert (npu.accelerator.label, npu.accelerator.cell_tag) == (f"cann{CANN}-{CHIP}", "npu")
    assert npu.tag == f"2.6.0-cann{CANN}-{CHIP}"
    assert ("torch_npu", "2.6.0") in npu.packages
    assert ascend.check(torch=npu.torch, python=npu.python, cann=npu.ascend.cann, chip=npu.ascend.chip,
                        torch_npu=npu.ascend.torch_npu) == []


def test_derived_tags_name_an_architecture_only_off_x86_64_and_off_the_npu() -> None:
    assert derived_tag(torch="2.9.1", accelerator=Accelerator.of("cpu")) == "2.9.1-cpu"
    assert derived_tag(torch="2.9.1", accelerator=Accelerator.of("cpu"), arch=AARCH64) == "2.9.1-cpu-aarch64"
    assert derived_tag(torch="2.5.1", accelerator=Accelerator.of("12.1"), arch=X86_64) == "2.5.1-cuda12.1"
    assert derived_tag(torch="2.5.1", accelerator=Accelerator.of("12.1"), arch=AARCH64) == "2.5.1-cuda12.1-aarch64"
    assert derived_tag(torch=TORCH, accelerator=Accelerator(cann=CANN, chip=CHIP), arch=AARCH64) == (
        f"{TORCH}-cann{CANN}-{CHIP}")


# --------------------------------------------------------------------------------------------------------------
# config/wheels.py: installers, wheels and markers for an architecture


@pytest.mark.parametrize(("filename", "arch", "refused_for"), [
    (X86_64_INSTALLER, AARCH64, "Linux-x86_64"),
    (AARCH64_INSTALLER, X86_64, "Linux-aarch64"),
    ("Miniconda3-py311_23.5.2-0-MacOSX-arm64.sh", AARCH64, "MacOSX-arm64"),
    (AARCH64_INSTALLER, AARCH64, None),
    ("Miniforge3-24.3.0-0-Linux-aarch64.sh", AARCH64, None),
    (X86_64_INSTALLER, X86_64, None),
])
def test_an_installer_for_another_architecture_is_refused(filename: str, arch: str, refused_for: str | None) -> None:
    problem = wheels.installer_problem(filename, python=PYTHON, arch=arch)
    if refused_for is None:
        assert problem is None
    else:
        assert problem == (f"'{filename}' is an installer for {refused_for}, but the image is built for Linux {arch} "
                           f"(its installer is named ...-Linux-{arch}.sh)")


def test_an_aarch64_entry_with_an_x86_64_installer_is_refused_and_vice_versa(tmp_path: Path) -> None:
    message = refused(tmp_path, ascend_entry(installer={"url": f"https://example.org/{X86_64_INSTALLER}"}))
    assert message.startswith(f"versions.yaml: images[0].installer.url: '{X86_64_INSTALLER}' is an installer for "
                              "Linux-x86_64, but the image is built for Linux aarch64")
    x86 = {"id": "cpu", "python": PYTHON, "cuda": "cpu", "torch": "2.9.1", "base_image": "ubuntu:22.04",
           "installer": {"url": f"https://example.org/{AARCH64_INSTALLER}"}}
    assert "built for Linux x86_64" in refused(tmp_path, x86)


def test_an_aarch64_entrys_wheels_are_checked_for_aarch64_and_its_torch_npu(tmp_path: Path) -> None:
    def listed(*names: str, **changes: Any) -> dict[str, Any]:
        return ascend_entry(wheels=[{"url": f"https://example.org/{name}"} for name in names], **changes)

    assert f"images[0].wheels[0].url: '{TORCH_X86_64}' is a wheel for linux_x86_64, but images are built for Linux " \
           "aarch64" in refused(tmp_path, listed(TORCH_X86_64))
    other = "torch_npu-2.5.1-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert f"images[0].wheels[1].url: '{other}' is torch_npu 2.5.1, but torch_npu: 2.6.0 is set" in refused(
        tmp_path, listed(TORCH_AARCH64, other, torch_npu="2.6.0"))
    assert "images[0].wheels: lists no torch_npu wheel, but torch_npu: 2.6.0 is set" in refused(
        tmp_path, listed(TORCH_AARCH64, torch_npu="2.6.0"))
    (image,) = load(tmp_path, listed(TORCH_AARCH64, NPU_AARCH64, torch_npu="2.6.0"))
    assert [wheel.filename for wheel in image.wheels] == [TORCH_AARCH64, NPU_AARCH64]


def test_listed_wheels_of_an_ascend_entry_must_hold_the_torch_npu_it_derives(tmp_path: Path) -> None:
    # without torch_npu: the image still gets the derived release, so its wheel must be among those listed
    wheels = [{"url": f"https://example.org/{TORCH_AARCH64}"}]
    assert (f"images[0].wheels: lists no torch_npu wheel, but the image gets torch_npu "
            f"{ascend.derive_torch_npu(torch=TORCH, cann=CANN)} (derived from torch and cann)") in refused(
        tmp_path, ascend_entry(wheels=wheels))
    (image,) = load(tmp_path, ascend_entry(wheels=[*wheels, {"url": f"https://example.org/{NPU_AARCH64}"}]))
    assert [wheel.filename for wheel in image.wheels] == [TORCH_AARCH64, NPU_AARCH64]


def test_a_mixed_index_page_gives_an_aarch64_entry_its_aarch64_wheel() -> None:
    page = "https://download.pytorch.org/whl/cpu/torch/"
    x86_64, aarch64 = (f"torch-2.6.0%2Bcpu-cp311-cp311-{platform}.whl"
                       for platform in ("linux_x86_64", "manylinux_2_28_aarch64"))
    links = index.parse_links(f'<a href="/whl/cpu/{x86_64}">a</a>\n<a href="/whl/cpu/{aarch64}">b</a>', page)
    chosen = index.choose_wheel(links, package="torch", version=TORCH, image=shipped(SHIPPED_ASCEND), page_url=page)
    assert chosen.url.endswith(aarch64)
    with pytest.raises(FetchError) as caught:
        index.choose_wheel(links[:1], package="torch", version=TORCH, image=shipped(SHIPPED_ASCEND), page_url=page)
    assert f"no torch=={TORCH} wheel for Python {PYTHON}, cpu, Linux aarch64 at {page}" in str(caught.value)
    assert "the page has no torch 2.6.0 wheel for cpu at all" in str(caught.value)


def test_the_marker_environment_is_the_images_not_this_machines() -> None:
    environment = wheels.marker_environment(python="3.11", arch=AARCH64)
    assert environment == {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                           "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix",
                           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    assert Marker('platform_machine == "aarch64" and python_version >= "3.11"').evaluate(environment)
    assert not Marker('platform_machine == "x86_64"').evaluate(environment)
    assert wheels.marker_environment(python="3.9", arch=X86_64)["platform_machine"] == "x86_64"


def test_torch_2_6s_nvidia_dependencies_are_x86_64_only_so_its_aarch64_wheel_is_no_cuda_build() -> None:
    assert wheels.cuda_build_problem(TORCH_AARCH64, TORCH_2_6_REQUIRES, python=PYTHON, arch=AARCH64) is None
    # The same metadata read for x86_64 is what PyPI's x86_64 torch is: a CUDA build.
    problem = wheels.cuda_build_problem(TORCH_X86_64, TORCH_2_6_REQUIRES, python=PYTHON, arch=X86_64)
    assert problem is not None and problem.startswith(f"'{TORCH_X86_64}' is a CUDA build (on Linux x86_64 it "
                                                      "requires nvidia-cublas-cu12, nvidia-cuda-nvrtc-cu12, "
                                                      "nvidia-cuda-runtime-cu12, ...)")


def test_a_torch_wheel_pulling_nvidia_wheels_on_aarch64_is_a_cuda_build() -> None:
    problem = wheels.cuda_build_problem(TORCH_AARCH64, CUDA_AARCH64_REQUIRES, python=PYTHON, arch=AARCH64)
    assert problem == (f"'{TORCH_AARCH64}' is a CUDA build (on Linux aarch64 it requires nvidia-cublas-cu12, "
                       "nvidia-cuda-runtime-cu12, nvidia-cudnn-cu12, ...); an image without CUDA needs torch's CPU "
                       "build, from PyTorch's CPU index (https://download.pytorch.org/whl/cpu), which torch_npu also "
                       "requires")
    unmarked = wheels.cuda_build_problem(TORCH_AARCH64, ("nvidia-nccl-cu12==2.21.5",), python=PYTHON, arch=AARCH64)
    assert unmarked is not None and "requires nvidia-nccl-cu12)" in unmarked


def test_nvidia_wheels_behind_an_extra_or_in_an_unreadable_line_are_no_cuda_build() -> None:
    requires = ('nvidia-cudnn-cu12; extra == "cuda"', "not a requirement ;;", 'nvidia-nccl-cu12; python_version < "3"')
    assert wheels.cuda_build_problem(TORCH_AARCH64, requires, python=PYTHON, arch=AARCH64) is None


def wheel_file(tmp_path: Path, filename: str, requires: tuple[str, ...] = ()) -> FetchedFile:
    data = make_wheel(filename, requires=requires)
    path = tmp_path / sha(data)  # the cache names a file by its hash, not its name
    path.write_bytes(data)
    return FetchedFile(filename=filename, path=path, url=f"https://example.org/{filename}", sha256=sha(data))


def test_wheel_requires_reads_requires_dist_from_a_real_wheel(tmp_path: Path) -> None:
    assert sources.wheel_requires(wheel_file(tmp_path, TORCH_AARCH64, TORCH_2_6_REQUIRES)) == TORCH_2_6_REQUIRES
    assert sources.wheel_requires(wheel_file(tmp_path, NPU_AARCH64)) == ()


def test_wheel_requires_of_a_broken_wheel_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    not_a_zip = tmp_path / "blob"
    not_a_zip.write_bytes(b"not a zip")
    with pytest.raises(FetchError, match=rf"^{re.escape(TORCH_AARCH64)}: the wheel cannot be read"):
        sources.wheel_requires(FetchedFile(filename=TORCH_AARCH64, path=not_a_zip, url="https://e/x", sha256="0" * 64))
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("torch/__init__.py", "")
    with pytest.raises(FetchError, match=re.escape(f"{TORCH_AARCH64}: the wheel has no .dist-info/METADATA")):
        sources.wheel_requires(FetchedFile(filename=TORCH_AARCH64, path=empty, url="https://e/x", sha256="0" * 64))


def shipped(image_id: str) -> ImageSpec:
    images = config.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS).images
    return next(image for image in images if image.id == image_id)


def test_the_fetcher_refuses_a_cuda_torch_for_an_npu_image_naming_the_wheel(tmp_path: Path) -> None:
    image = shipped(SHIPPED_ASCEND)
    cuda_torch = wheel_file(tmp_path, TORCH_AARCH64, CUDA_AARCH64_REQUIRES)
    npu = wheel_file(tmp_path, NPU_AARCH64, ("nvidia-anything",))  # only torch's metadata is read
    with pytest.raises(ConfigError) as caught:
        fetcher._refuse_cuda_build(image, [npu, cuda_torch])
    assert str(caught.value).startswith(f"{SHIPPED_ASCEND}: '{TORCH_AARCH64}' is a CUDA build (on Linux aarch64")
    assert str(caught.value).endswith(f"(the entry's Ascend {CHIP}, CANN {CANN})")
    fetcher._refuse_cuda_build(image, [npu, wheel_file(tmp_path, TORCH_AARCH64, TORCH_2_6_REQUIRES)])


def test_the_fetcher_leaves_a_cuda_images_torch_alone(tmp_path: Path) -> None:
    cuda = next(image for image in config.load_versions(ROOT / "versions.yaml", fallbacks=INVOKE_FALLBACKS).images
                if not image.is_cpu)
    fetcher._refuse_cuda_build(cuda, [wheel_file(tmp_path, "torch-2.5.1-cp311-cp311-linux_x86_64.whl",
                                                 CUDA_AARCH64_REQUIRES)])


# --------------------------------------------------------------------------------------------------------------
# http/pip_resolver.py: platform tags, and pip with the image's markers


@pytest.mark.parametrize(("base", "glibc"), [
    ("swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:8.2.rc1-910b-ubuntu22.04-py3.11", (2, 35)),
    ("quay.io/ascend/cann:8.2.rc1-910b-ubuntu20.04-py3.10", (2, 31)),
    ("quay.io/ascend/cann:8.2.rc1-910b-openeuler22.03-py3.11", (2, 34)),
    ("quay.io/ascend/cann:8.5.0-a3-openeuler24.03-py3.11", (2, 38)),
    ("debian:bookworm", (2, 36)),
    ("ubuntu:22.04", (2, 35)),
    ("quay.io/ascend/cann:8.2.rc1-910b-kylinv10-py3.11", pip_resolver.DEFAULT_GLIBC),
    ("modelarts-test-base:bookworm", pip_resolver.DEFAULT_GLIBC),
])
def test_glibc_of_reads_ubuntu_debian_and_cann_os_tags(base: str, glibc: tuple[int, int]) -> None:
    assert pip_resolver.glibc_of(base) == glibc


def test_aarch64_platform_tags_are_aarch64_only() -> None:
    tags = pip_resolver.platform_tags("quay.io/ascend/cann:8.2.rc1-910b-ubuntu22.04-py3.11", AARCH64)
    assert tags[0] == "manylinux_2_35_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-2:] == ["manylinux2014_aarch64", "linux_aarch64"]
    assert all(tag.endswith("_aarch64") for tag in tags)
    assert not any("x86_64" in tag or "manylinux1" in tag or "manylinux2010" in tag for tag in tags)


def test_x86_64_platform_tags_are_unchanged() -> None:
    tags = pip_resolver.platform_tags("ubuntu:22.04")
    assert tags == pip_resolver.platform_tags("ubuntu:22.04", X86_64)
    assert tags == [*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)), "manylinux2014_x86_64",
                    "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def test_target_options_name_only_the_images_architecture() -> None:
    options = pip_resolver.target_options(shipped(SHIPPED_ASCEND))
    platforms = [options[i + 1] for i, option in enumerate(options) if option == "--platform"]
    assert platforms == pip_resolver.platform_tags(shipped(SHIPPED_ASCEND).base_image, AARCH64)


def test_pip_for_starts_the_target_module_with_the_images_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELARTS_TEST_KEPT", "yes")
    command, environment = pip_resolver.pip_for(shipped(SHIPPED_ASCEND))
    assert command == [sys.executable, "-m", "modelarts_images.http.pip_for_target"]
    assert json.loads(environment["MODELARTS_IMAGES_TARGET_MARKERS"]) == wheels.marker_environment(python=PYTHON,
                                                                                                   arch=AARCH64)
    assert environment["MODELARTS_TEST_KEPT"] == "yes"  # the host's pip configuration still reaches pip


DEP_FOR = {X86_64: "dep_x86", AARCH64: "dep_arm"}


@pytest.fixture
def find_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only place the host's pip looks: a --find-links directory with a dependency wheel per machine."""
    directory = tmp_path / "links"
    directory.mkdir()
    for name in DEP_FOR.values():
        (directory / f"{name}-1.0-py3-none-any.whl").write_bytes(make_wheel(f"{name}-1.0-py3-none-any.whl"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(directory))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return directory


def top_wheel(tmp_path: Path) -> FetchedFile:
    requires = tuple(f'{name}; platform_machine == "{machine}"' for machine, name in DEP_FOR.items())
    return wheel_file(tmp_path, "top-1.0-py3-none-any.whl", requires)


def test_pip_resolves_an_aarch64_images_dependencies_for_aarch64_on_this_host(tmp_path: Path,
                                                                              find_links: Path) -> None:
    top = top_wheel(tmp_path)
    arm = pip_resolver.resolve(shipped(SHIPPED_CPU_AARCH64), [top], scratch_parent=tmp_path)
    x86 = pip_resolver.resolve(shipped("pytorch-2.9.1-cpu"), [top], scratch_parent=tmp_path)
    assert arm is not None and x86 is not None
    assert [artifact.filename for artifact in arm] == ["dep_arm-1.0-py3-none-any.whl"]
    assert [artifact.filename for artifact in x86] == ["dep_x86-1.0-py3-none-any.whl"]
    assert arm[0].url == (find_links / "dep_arm-1.0-py3-none-any.whl").as_uri()


def test_plain_pip_on_this_host_would_take_the_hosts_dependency(tmp_path: Path, find_links: Path) -> None:
    """What pip_for_target is for: the same target options through `python -m pip` evaluate the markers for
    this machine."""
    image = shipped(SHIPPED_CPU_AARCH64)
    top = top_wheel(tmp_path)
    named = tmp_path / top.filename
    named.write_bytes(top.path.read_bytes())
    report = tmp_path / "report.json"
    command = pip_resolver.pip_command(image, [named], tmp_path / "target", report)
    assert command[:3] == pip_resolver.pip_for(image)[0]
    plain = [sys.executable, "-m", "pip", *command[3:]]
    subprocess.run(plain, check=True, capture_output=True, timeout=60)
    installed = sorted(item["metadata"]["name"] for item in json.loads(report.read_text("utf-8"))["install"])
    host = DEP_FOR.get(platform.machine())
    assert installed == sorted(["top", *([host] if host else [])])
    if platform.machine() == X86_64:
        assert "dep_arm" not in installed


def test_pip_for_target_as_a_script_takes_its_markers_from_the_environment(tmp_path: Path, find_links: Path) -> None:
    top = top_wheel(tmp_path)
    named = tmp_path / top.filename
    named.write_bytes(top.path.read_bytes())
    report = tmp_path / "report.json"
    markers = json.dumps(wheels.marker_environment(python=f"{sys.version_info[0]}.{sys.version_info[1]}",
                                                   arch=AARCH64))
    result = subprocess.run([sys.executable, "-m", "modelarts_images.http.pip_for_target", "install", "--dry-run",
                             "--ignore-installed", "--disable-pip-version-check", "--report", str(report), str(named)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "MODELARTS_IMAGES_TARGET_MARKERS": markers})
    assert result.returncode == 0, result.stderr
    installed = sorted(item["metadata"]["name"] for item in json.loads(report.read_text("utf-8"))["install"])
    assert installed == ["dep_arm", "top"]


def test_torch_npu_is_resolved_for_aarch64_from_the_index_pip_uses(tmp_path: Path, find_links: Path) -> None:
    for name in (NPU_X86_64, NPU_AARCH64):
        (find_links / name).write_bytes(make_wheel(name, requires=("torch==2.6.0",)))
    artifact = pip_resolver.resolve_wheel(shipped(SHIPPED_ASCEND), "torch_npu==2.6.0", scratch_parent=tmp_path)
    assert artifact.filename == NPU_AARCH64
    assert artifact.sha256 == sha((find_links / NPU_AARCH64).read_bytes())


def test_a_torch_npu_the_index_lacks_is_a_config_error_naming_the_aarch64_target(tmp_path: Path,
                                                                                  find_links: Path) -> None:
    (find_links / NPU_X86_64).write_bytes(make_wheel(NPU_X86_64))
    with pytest.raises(ConfigError) as caught:
        pip_resolver.resolve_wheel(shipped(SHIPPED_ASCEND), "torch_npu==2.6.0", scratch_parent=tmp_path)
    assert "torch_npu==2.6.0" in str(caught.value)
    assert f"Python {PYTHON}, Linux aarch64, cpu, torch {TORCH}" in str(caught.value)


# --------------------------------------------------------------------------------------------------------------
# fetch end to end on loopback, and the lock's inputs


def test_the_lock_inputs_name_an_architecture_other_than_x86_64() -> None:
    aarch64, x86, npu = (lockfile.inputs_of(shipped(name))
                         for name in (SHIPPED_CPU_AARCH64, "pytorch-2.9.1-cpu", SHIPPED_ASCEND))
    assert aarch64.endswith("; arch aarch64") and "arch" not in x86
    assert npu.endswith("; arch aarch64") and "torch==2.6.0 torchvision==0.21.0 torch_npu==2.6.0;" in npu


def served_ascend_image(tmp_path: Path, server: FileServer, torch_requires: tuple[str, ...],
                        *, listed: bool) -> ImageSpec:
    """The Ascend entry of versions.yaml, its installer and (when `listed`) its wheels served on loopback."""
    torch = make_wheel(TORCH_AARCH64, requires=torch_requires)
    npu = make_wheel(NPU_AARCH64, requires=("torch==2.6.0",))
    installer = server.add(f"/files/{AARCH64_INSTALLER}", INSTALLER_BODY)
    server.add("/files/torch-2.6.0%2Bcpu-cp311-cp311-manylinux_2_28_aarch64.whl", torch)
    server.add(f"/files/{NPU_AARCH64}", npu)
    wheels_listed = [{"url": server.url("/files/torch-2.6.0%2Bcpu-cp311-cp311-manylinux_2_28_aarch64.whl"),
                      "sha256": sha(torch)},
                     {"url": server.url(f"/files/{NPU_AARCH64}"), "sha256": sha(npu)}]
    entry = ascend_entry(id=SHIPPED_ASCEND, installer={"url": installer, "sha256": sha(INSTALLER_BODY)},
                         **({"torch_npu": "2.6.0", "wheels": wheels_listed} if listed else {}))
    (image,) = load(tmp_path, entry)
    return image


def fetch_options(tmp_path: Path, server: FileServer) -> FetchOptions:
    return FetchOptions(cache_dir=tmp_path / "cache", lock_path=tmp_path / "versions.lock", closure=False,
                        mirrors={"https://download.pytorch.org/whl/": server.url("/whl/")})


def test_fetch_refuses_a_cuda_torch_for_an_ascend_entry_before_pinning_it(tmp_path: Path, server: FileServer) -> None:
    image = served_ascend_image(tmp_path, server, CUDA_AARCH64_REQUIRES, listed=True)
    options = fetch_options(tmp_path, server)
    with pytest.raises(ConfigError) as caught:
        fetch_images([image], options)
    assert str(caught.value).startswith(f"{SHIPPED_ASCEND}: '{TORCH_AARCH64}' is a CUDA build")
    assert caught.value.exit_code == 2
    assert not options.lock_path.exists()


def test_fetch_pins_an_ascend_entrys_listed_wheels_with_the_architecture_in_its_inputs(tmp_path: Path,
                                                                                        server: FileServer) -> None:
    image = served_ascend_image(tmp_path, server, TORCH_2_6_REQUIRES, listed=True)
    options = fetch_options(tmp_path, server)

    (fetched,), _ = fetch_images([image], options)

    assert [wheel.filename for wheel in fetched.wheels] == [TORCH_AARCH64, NPU_AARCH64]
    entry = yaml.safe_load(options.lock_path.read_text("utf-8"))["images"][SHIPPED_ASCEND]
    assert entry["inputs"] == lockfile.inputs_of(image)
    assert entry["inputs"].endswith("; arch aarch64") and "torch_npu==2.6.0" in entry["inputs"]
    assert [wheel["sha256"] for wheel in entry["wheels"]] == [wheel.sha256 for wheel in image.wheels]
