"""Ascend NPU and aarch64 images on the build, verification and platform side, without an engine: CANN's
environment read from a base's set_env.sh (the probe run with the real /bin/sh against a CANN 8.0 layout made in a
temporary directory), QEMU emulation found in a stand-in binfmt_misc directory, the build's platform, the base's
architecture and the check before any download, the build context's ENV, build arguments and labels of an Ascend
entry, the verification result's NPU facts and their checks (recorded lines and one real run of the verification
script with a stand-in torch_npu), the Ascend conformance rules, the host's NPU devices and driver passed into a
`--device npu` run, the training job and flavour of an Ascend image, and the matrix cells of npu and aarch64
entries with their runners."""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import platform as host_platform
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from modelarts_images import plan
from modelarts_images.build import builder, cann_env, context, emulation
from modelarts_images.cloud.api import Flavor, FlavorType, ModelArts
from modelarts_images.contract import NPU_GROUP, REQUIRE_GPU, REQUIRE_NPU, SCRIPT_NAME
from modelarts_images.engine import containers
from modelarts_images.engine.api import (
    Backend,
    BaseImage,
    BaseImageSource,
    ContainerOutput,
    ContainerRun,
    Mount,
)
from modelarts_images.errors import BuildError, ConfigError
from modelarts_images.matrix import ci
from modelarts_images.matrix.cli import main as matrix_main
from modelarts_images.model import AARCH64, Ascend, FetchedImage, ImageSpec
from modelarts_images.options import Device, DeviceChoice, PlatformOptions
from modelarts_images.paths import CONTEXT_TEMPLATE, VERIFY_DIR
from modelarts_images.platform import flavors
from modelarts_images.platform import verifier as platform_verifier
from modelarts_images.publish import trainingjob
from modelarts_images.verify import conformance
from modelarts_images.verify.checks import CheckOutcome
from modelarts_images.verify.result import check_against, parse_result
from modelarts_images.verify.runs import NpuHost, npu_host, require_npu_host, resolve_devices, run_spec
from tests.support.engine_tier import build_options, image_spec, small_image
from tests.support.fake_engine import FakeEngine
from tests.unit.test_build import RecordingEngine
from tests.unit.test_platform import OFFERED
from tests.unit.test_trainingjob import DIGEST, request_of
from tests.unit.test_verification_npu import ONE_DEVICE, VERSION, stand_in
from tests.unit.test_verification_npu import run as run_verification_with
from tests.unit.test_verify import GOOD_BOOT, GOOD_PROBE, SCRIPT, facts, log_with, result_dict

CANN_BASE = "swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:8.2.rc1-910b-ubuntu22.04-py3.11"
ARM_INSTALLER = "Miniconda3-py311_24.1.2-0-Linux-aarch64.sh"
SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the probe's shell starts with (a container's config environment): nothing of CANN's, and an unrelated
# variable that set_env.sh leaves alone.
BASE_ENVIRONMENT = {"PATH": SHELL_PATH, "HOME": "/root", "LANG": "C.UTF-8", "UNRELATED": "kept"}
# The CANN variables a CANN 8.0 toolkit's set_env.sh exports.
CANN_VARIABLES = ("ASCEND_AICPU_PATH", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH", "ASCEND_TOOLKIT_HOME",
                  "LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "TOOLCHAIN_HOME")


def arm_cpu_image(**changes: Any) -> ImageSpec:
    """A CPU entry for aarch64 (ModelArts' Kunpeng flavours)."""
    spec = image_spec(tag="2.9.1-cpu-aarch64", image_id="pytorch-2.9.1-cpu-aarch64", installer=ARM_INSTALLER,
                      torch="2.9.1")
    return dataclasses.replace(spec, **{"arch": AARCH64, **changes})


def ascend_image(*, set_env: str | None = None, **changes: Any) -> ImageSpec:
    """An Ascend entry as versions.yaml's: torch 2.6.0's CPU build, torch_npu 2.6.0 on CANN 8.2.RC1, 910b."""
    spec = image_spec(tag="2.6.0-cann8.2.RC1-910b-aarch64", image_id="pytorch-2.6.0-cann8.2.rc1-910b",
                      base_image=CANN_BASE, installer=ARM_INSTALLER, torch="2.6.0")
    ascend = Ascend(cann="8.2.RC1", chip="910b", torch_npu="2.6.0", set_env=set_env)
    return dataclasses.replace(spec, **{"arch": AARCH64, "ascend": ascend, "python": "3.11", **changes})


def by_name(outcomes: Sequence[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.name: outcome for outcome in outcomes}


# --------------------------------------------------------------------------------------------------------------
# CANN's environment: the probe run with the real /bin/sh against a CANN 8.0 layout


@dataclasses.dataclass(frozen=True)
class CannLayout:
    ascend: Path  # what /usr/local/Ascend is in a CANN image
    set_env: Path  # <ascend>/ascend-toolkit/set_env.sh

    @property
    def home(self) -> str:
        return f"{self.ascend}/ascend-toolkit/latest"

    def expected(self, environment: Mapping[str, str], conda_bin: str) -> dict[str, str]:
        """What sourcing the file gives in a shell started with `environment`, written out by hand."""
        home, driver, machine = self.home, f"{self.ascend}/driver", host_platform.machine()
        path = f"{environment.get('PATH', SHELL_PATH)}:{conda_bin}"
        libraries = (f"{driver}/lib64:{driver}/lib64/common:{driver}/lib64/driver:"
                     f"{environment.get('LD_LIBRARY_PATH', '')}")
        libraries = (f"{home}/lib64:{home}/lib64/plugin/opskernel:{home}/lib64/plugin/nnengine:"
                     f"{home}/opp/built-in/op_impl/ai_core/tbe/op_tiling/lib/linux/{machine}:{libraries}")
        libraries = f"{home}/tools/aml/lib64:{home}/tools/aml/lib64/plugin:{libraries}"
        return {
            "ASCEND_AICPU_PATH": home,
            "ASCEND_HOME_PATH": home,
            "ASCEND_OPP_PATH": f"{home}/opp",
            "ASCEND_TOOLKIT_HOME": home,
            "LD_LIBRARY_PATH": libraries,
            "PATH": f"{home}/bin:{home}/compiler/ccec_compiler/bin:{home}/tools/ccec_compiler/bin:{path}",
            "PYTHONPATH": (f"{home}/python/site-packages:{home}/opp/built-in/op_impl/ai_core/tbe:"
                           f"{environment.get('PYTHONPATH', '')}"),
            "TOOLCHAIN_HOME": f"{home}/toolkit",
        }


def cann_8_set_env(ascend: Path) -> str:
    """The toolkit's set_env.sh as CANN 8.0's installer writes it, for a CANN installed at `ascend`."""
    return f"""\
export LD_LIBRARY_PATH={ascend}/driver/lib64:{ascend}/driver/lib64/common:{ascend}/driver/lib64/driver:$LD_LIBRARY_PATH
export ASCEND_TOOLKIT_HOME={ascend}/ascend-toolkit/latest
export LD_LIBRARY_PATH=${{ASCEND_TOOLKIT_HOME}}/lib64:${{ASCEND_TOOLKIT_HOME}}/lib64/plugin/opskernel:\
${{ASCEND_TOOLKIT_HOME}}/lib64/plugin/nnengine:\
${{ASCEND_TOOLKIT_HOME}}/opp/built-in/op_impl/ai_core/tbe/op_tiling/lib/linux/$(arch):$LD_LIBRARY_PATH
export LD_LIBRARY_PATH=${{ASCEND_TOOLKIT_HOME}}/tools/aml/lib64:${{ASCEND_TOOLKIT_HOME}}/tools/aml/lib64/plugin:\
$LD_LIBRARY_PATH
export PYTHONPATH=${{ASCEND_TOOLKIT_HOME}}/python/site-packages:\
${{ASCEND_TOOLKIT_HOME}}/opp/built-in/op_impl/ai_core/tbe:$PYTHONPATH
export PATH=${{ASCEND_TOOLKIT_HOME}}/bin:${{ASCEND_TOOLKIT_HOME}}/compiler/ccec_compiler/bin:\
${{ASCEND_TOOLKIT_HOME}}/tools/ccec_compiler/bin:$PATH
export ASCEND_AICPU_PATH=${{ASCEND_TOOLKIT_HOME}}
export ASCEND_OPP_PATH=${{ASCEND_TOOLKIT_HOME}}/opp
export TOOLCHAIN_HOME=${{ASCEND_TOOLKIT_HOME}}/toolkit
export ASCEND_HOME_PATH=${{ASCEND_TOOLKIT_HOME}}
"""


@pytest.fixture
def cann(tmp_path: Path) -> CannLayout:
    ascend = tmp_path / "Ascend"
    for directory in ("driver/lib64/common", "ascend-toolkit/latest/lib64", "ascend-toolkit/latest/bin",
                      "ascend-toolkit/latest/opp"):
        (ascend / directory).mkdir(parents=True)
    set_env = ascend / "ascend-toolkit" / "set_env.sh"
    set_env.write_text(cann_8_set_env(ascend), "utf-8")
    return CannLayout(ascend=ascend, set_env=set_env)


UseBinfmt = Callable[[Path], None]  # the binfmt_at fixture: the builder's emulation check reads this directory


def probe(candidates: Sequence[str], *, environment: Mapping[str, str] = BASE_ENVIRONMENT,
          conda_bin: str = "/home/ma-user/miniconda3/bin", cwd: Path = Path("/")
          ) -> subprocess.CompletedProcess[str]:
    """The probe command run as the base's container runs it: argv without a shell of ours, its environment."""
    return subprocess.run(cann_env.probe_command(conda_bin, candidates), env=dict(environment), cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=30)


def test_the_probe_gives_exactly_what_cann_8_set_env_sets_with_the_values_it_sourced(cann: CannLayout) -> None:
    completed = probe([str(cann.set_env)])
    assert completed.returncode == 0, completed.stderr
    found = cann_env.parse(completed.stdout)
    assert found.set_env == str(cann.set_env)
    assert [name for name, _ in found.variables] == list(CANN_VARIABLES)  # in name order, nothing else
    assert dict(found.variables) == cann.expected(BASE_ENVIRONMENT, "/home/ma-user/miniconda3/bin")
    # $(arch) ran in the sourcing shell, and the PATH the file extends still reaches conda's python
    assert f"/op_tiling/lib/linux/{host_platform.machine()}:" in dict(found.variables)["LD_LIBRARY_PATH"]
    assert dict(found.variables)["PATH"].endswith(f"{SHELL_PATH}:/home/ma-user/miniconda3/bin")


def test_variables_the_base_already_had_are_extended_as_set_env_sh_extends_them(cann: CannLayout) -> None:
    environment = {**BASE_ENVIRONMENT, "LD_LIBRARY_PATH": "/opt/base/lib", "PYTHONPATH": "/opt/base/site"}
    found = cann_env.parse(probe([str(cann.set_env)], environment=environment).stdout)
    variables = dict(found.variables)
    assert variables == cann.expected(environment, "/home/ma-user/miniconda3/bin")
    assert variables["LD_LIBRARY_PATH"].endswith("/lib64/driver:/opt/base/lib")
    assert variables["PYTHONPATH"].endswith("/tbe:/opt/base/site")


def test_a_base_without_a_path_gets_the_usual_one_then_condas_bin(cann: CannLayout) -> None:
    environment = {key: value for key, value in BASE_ENVIRONMENT.items() if key != "PATH"}
    found = cann_env.parse(probe([str(cann.set_env)], environment=environment, conda_bin="/opt/conda/bin").stdout)
    assert dict(found.variables)["PATH"].endswith(f":{SHELL_PATH}:/opt/conda/bin")


def test_what_set_env_sh_leaves_alone_unexports_or_the_shell_sets_itself_is_not_reported(tmp_path: Path) -> None:
    script = tmp_path / "set_env.sh"
    script.write_text("cd /tmp\n"  # PWD and OLDPWD change: the shell's own
                      "export UNRELATED=kept\n"  # the value it had
                      "curpath=/not/exported\n"  # a shell variable, not the environment's
                      "export HOME=/elsewhere\n"  # a shell's own, whatever the file does with it
                      "export ASCEND_HOME_PATH=/usr/local/Ascend/ascend-toolkit/latest\n", "utf-8")
    found = cann_env.parse(probe([str(script)], cwd=tmp_path).stdout)
    assert found.variables == (("ASCEND_HOME_PATH", "/usr/local/Ascend/ascend-toolkit/latest"),)


def test_the_first_candidate_that_exists_is_the_one_sourced(tmp_path: Path) -> None:
    first, second = tmp_path / "cann" / "set_env.sh", tmp_path / "toolkit" / "set_env.sh"
    for path, value in ((first, "first"), (second, "second")):
        path.parent.mkdir()
        path.write_text(f"export ASCEND_TOOLKIT_HOME=/{value}\n", "utf-8")
    found = cann_env.parse(probe([str(tmp_path / "missing" / "set_env.sh"), str(first), str(second)]).stdout)
    assert found.set_env == str(first) and found.variables == (("ASCEND_TOOLKIT_HOME", "/first"),)


def test_a_value_with_a_line_break_comes_through_whole(tmp_path: Path) -> None:
    script = tmp_path / "set_env.sh"
    script.write_text("export ASCEND_SLOG_PRINT_TO_STDOUT='two\nlines'\n", "utf-8")
    found = cann_env.parse(probe([str(script)]).stdout)
    assert found.variables == (("ASCEND_SLOG_PRINT_TO_STDOUT", "two\nlines"),)


def test_a_base_without_set_env_sh_gives_nothing(tmp_path: Path) -> None:
    completed = probe([str(tmp_path / "ascend-toolkit" / "set_env.sh"), str(tmp_path / "cann" / "set_env.sh")])
    assert completed.returncode == 0, completed.stderr
    assert cann_env.parse(completed.stdout) == cann_env.CannEnvironment(set_env=None, variables=())


def test_a_set_env_sh_that_fails_exits_3(tmp_path: Path) -> None:
    script = tmp_path / "set_env.sh"
    script.write_text("export ASCEND_HOME_PATH=/x\nfalse\n", "utf-8")
    assert probe([str(script)]).returncode == 3


def test_the_candidates_are_the_entrys_file_alone_or_where_cann_installs_it() -> None:
    assert cann_env.candidates(None) == cann_env.SET_ENV_CANDIDATES
    assert cann_env.candidates(None)[0] == "/usr/local/Ascend/ascend-toolkit/set_env.sh"
    assert "/usr/local/Ascend/cann/set_env.sh" in cann_env.candidates(None)
    assert cann_env.candidates("/opt/cann/set_env.sh") == ("/opt/cann/set_env.sh",)
    assert cann_env.probe_command("/c/bin", ("/a", "/b"))[-3:] == ("/c/bin", "/a", "/b")


@pytest.mark.parametrize("output", ["", "Traceback ...", "=set_env=\0/x\0", "=set_env=\0/x\0=before=\0A=1\0"])
def test_what_is_not_the_probes_output_is_refused(output: str) -> None:
    with pytest.raises(ValueError, match="not the probe's output"):
        cann_env.parse(output)


def test_changes_are_the_new_and_changed_variables_by_name() -> None:
    before = {"PATH": "/bin", "KEEP": "1", "PWD": "/", "SHLVL": "1"}
    after = {"PATH": "/x/bin:/bin", "KEEP": "1", "PWD": "/tmp", "SHLVL": "2", "B": "2", "A": "a=b"}
    assert cann_env.changes(before, after) == (("A", "a=b"), ("B", "2"), ("PATH", "/x/bin:/bin"))


# --------------------------------------------------------------------------------------------------------------
# The builder: CANN's environment from the base, into the build context


class ShellEngine(RecordingEngine):
    """Records builds, and runs a container's command with the host's /bin/sh: the probe reads the CANN layout
    of the test's temporary directory (the entry's cann_set_env names its set_env.sh)."""

    def __init__(self, environment: Mapping[str, str] = BASE_ENVIRONMENT) -> None:
        super().__init__()
        self.environment = dict(environment)
        self.runs: list[ContainerRun] = []

    def run(self, spec: ContainerRun) -> ContainerOutput:
        self.runs.append(spec)
        completed = subprocess.run(spec.command, env=self.environment, cwd=spec.working_dir, capture_output=True,
                                   text=True, check=False, timeout=spec.timeout)
        return ContainerOutput(name="probe", exit_code=completed.returncode, stdout=completed.stdout,
                               stderr=completed.stderr, seconds=0.1, timed_out=False)


class CannedEngine(FakeEngine):
    """Answers every run with the same output, and records what it was asked to run."""

    def __init__(self, output: ContainerOutput) -> None:
        self.output = output
        self.runs: list[ContainerRun] = []

    def run(self, spec: ContainerRun) -> ContainerOutput:
        self.runs.append(spec)
        return self.output


def test_cann_environment_runs_the_base_once_as_root_offline_for_its_platform(cann: CannLayout) -> None:
    image = ascend_image(set_env=str(cann.set_env))
    engine = ShellEngine()
    variables = builder.cann_environment(image, CANN_BASE, engine)
    assert dict(variables) == cann.expected(BASE_ENVIRONMENT, f"{image.user.conda_prefix}/bin")
    (spec,) = engine.runs
    assert spec.image == CANN_BASE and spec.user == "0:0" and spec.working_dir == "/" and spec.network is False
    assert spec.platform == "linux/arm64"
    assert spec.command == cann_env.probe_command(f"{image.user.conda_prefix}/bin", (str(cann.set_env),))


def test_without_cann_set_env_the_probe_looks_where_cann_installs_it() -> None:
    engine = CannedEngine(ContainerOutput(name="p", exit_code=0, stdout="=no-set_env=\0", stderr="", seconds=0.1,
                                          timed_out=False))
    assert builder.cann_environment(ascend_image(), CANN_BASE, engine) == ()
    (spec,) = engine.runs
    assert spec.command[-len(cann_env.SET_ENV_CANDIDATES):] == cann_env.SET_ENV_CANDIDATES


def test_an_image_that_is_not_ascend_runs_nothing() -> None:
    # FakeEngine fails the test on any run
    assert builder.cann_environment(arm_cpu_image(), "ubuntu:22.04", FakeEngine()) == ()
    assert builder.cann_environment(image_spec(tag="cpu"), "ubuntu:22.04", FakeEngine()) == ()


def test_a_base_without_set_env_sh_warns_and_gives_no_environment(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "usr" / "local" / "Ascend" / "ascend-toolkit" / "set_env.sh")
    with caplog.at_level(logging.WARNING, logger=builder.__name__):
        assert builder.cann_environment(ascend_image(set_env=missing), CANN_BASE, ShellEngine()) == ()
    (record,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    message = record.getMessage()
    assert "has no CANN set_env.sh" in message and CANN_BASE in message and missing in message
    assert "torch_npu cannot load without CANN" in message


def test_a_set_env_sh_that_fails_to_source_is_a_build_error(tmp_path: Path) -> None:
    script = tmp_path / "set_env.sh"
    script.write_text("export ASCEND_HOME_PATH=/x\nfalse\n", "utf-8")
    with pytest.raises(BuildError, match=rf"sourcing CANN's set_env.sh in base image {CANN_BASE} failed \(exit 3\)"):
        builder.cann_environment(ascend_image(set_env=str(script)), CANN_BASE, ShellEngine())


def test_output_that_is_not_the_probes_is_a_build_error_with_the_bases_words() -> None:
    engine = CannedEngine(ContainerOutput(name="p", exit_code=0, stdout="hello\n",
                                          stderr="exec /bin/sh: exec format error\n", seconds=0.1, timed_out=False))
    with pytest.raises(BuildError, match="failed \\(exit 0\\): exec /bin/sh: exec format error"):
        builder.cann_environment(ascend_image(), CANN_BASE, engine)


def ascend_fetched(tmp_path: Path, set_env: Path) -> FetchedImage:
    fetched = small_image(tmp_path, "ascend", "build")
    return dataclasses.replace(fetched, image=ascend_image(set_env=str(set_env), tag=fetched.image.tag))


@pytest.mark.parametrize(("backend", "target"), [(Backend.BUILDKIT, "image-buildkit-env"),
                                                 (Backend.DOCKER, "image-env")])
def test_an_ascend_build_gets_cann_environment_as_env_and_the_npu_group(tmp_path: Path, cann: CannLayout,
                                                                        backend: Backend, target: str) -> None:
    fetched = ascend_fetched(tmp_path, cann.set_env)
    engine = ShellEngine()
    builder.build_image(fetched, build_options(backend, tmp_path / "work"), engine)
    (request,) = engine.requests
    assert request.target == target and request.platform == "linux/arm64"
    args = dict(request.build_args)
    assert (args["NPU_GROUP"], args["NPU_GID"]) == ("HwHiAiUser", "1000") == (NPU_GROUP.name, str(NPU_GROUP.gid))
    labels = dict(request.labels)
    assert labels["modelarts-images.arch"] == "aarch64"
    assert labels["modelarts-images.cann"] == "8.2.RC1" and labels["modelarts-images.npu"] == "910b"
    assert labels["modelarts-images.torch_npu"] == "2.6.0"
    dockerfile = (request.context_dir / "Dockerfile").read_text("utf-8")
    expected = cann.expected(BASE_ENVIRONMENT, f"{fetched.image.user.conda_prefix}/bin")
    env_line = "ENV " + " ".join(f'{name}="{value}"' for name, value in sorted(expected.items()))
    assert [line for line in dockerfile.splitlines() if line.startswith("ENV ") and "ASCEND" in line] == [env_line] * 2
    assert f"FROM {target.removesuffix('-env')} AS {target}\n{env_line}\n" in dockerfile


def test_cann_environment_comes_before_the_stacks_own_env(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "ascend", "order")
    stack = dataclasses.replace(fetched.image.stack, env=(("HCCL_CONNECT_TIMEOUT", "1200"),))
    fetched = dataclasses.replace(fetched, image=dataclasses.replace(ascend_image(), stack=stack))
    directory = context.assemble(fetched, tmp_path / "work", base_env=(("ASCEND_HOME_PATH", "/usr/local/Ascend"),))
    dockerfile = (directory / "Dockerfile").read_text("utf-8")
    assert dockerfile.count('ENV ASCEND_HOME_PATH="/usr/local/Ascend" HCCL_CONNECT_TIMEOUT="1200"\n') == 2


def test_without_any_environment_the_target_is_the_plain_one(tmp_path: Path) -> None:
    fetched = small_image(tmp_path, "x86", "plain")
    inputs = builder.build_inputs(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"))
    assert inputs.target == "image-buildkit"
    assert "NPU_GROUP" not in dict(inputs.build_args) and "NPU_GID" not in dict(inputs.build_args)
    labels = dict(inputs.labels)
    assert labels["modelarts-images.arch"] == "x86_64" and "modelarts-images.cann" not in labels
    with_env = builder.build_inputs(fetched, build_options(Backend.BUILDKIT, tmp_path / "work"),
                                    base_env=(("ASCEND_HOME_PATH", "/x"),))
    assert with_env.target == "image-buildkit-env"


def test_a_cann_value_with_a_line_break_is_refused_before_a_dockerfile_is_written(tmp_path: Path) -> None:
    # an ENV line cannot hold a line break: docker would read the value's second line as an instruction
    fetched = small_image(tmp_path, "ascend", "newline")
    fetched = dataclasses.replace(fetched, image=ascend_image())
    with pytest.raises(BuildError, match=r"^ENV ASCEND_X: its value \(from CANN's set_env.sh"):
        context.assemble(fetched, tmp_path / "work", base_env=(("ASCEND_X", 'two\nlines"'),))
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("Dockerfile"))


def test_the_user_stage_declares_the_npu_arguments_that_user_layer_sh_reads() -> None:
    dockerfile = (CONTEXT_TEMPLATE / "Dockerfile").read_text("utf-8")
    stage = dockerfile.split("FROM system AS user\n", 1)[1].split("\nFROM ", 1)[0]
    run_at = stage.index("RUN sh /tmp/user-layer.sh")
    assert stage.index('ARG NPU_GROUP=""') < run_at and stage.index('ARG NPU_GID=""') < run_at
    script = (CONTEXT_TEMPLATE / "user-layer.sh").read_text("utf-8")
    assert '-G "${NPU_GROUP}"' in script and 'groupadd -g "${NPU_GID}" "${NPU_GROUP}"' in script


# --------------------------------------------------------------------------------------------------------------
# The build's platform, the base's architecture, and the check before any download


@pytest.mark.parametrize(("image", "asked", "platform"), [
    (image_spec(tag="x86"), None, None),  # the engine's own
    (image_spec(tag="x86"), "linux/amd64", "linux/amd64"),
    (arm_cpu_image(), None, "linux/arm64"),
    (arm_cpu_image(), "linux/arm64", "linux/arm64"),
    (ascend_image(), None, "linux/arm64"),
])
def test_the_build_asks_for_the_entrys_platform(tmp_path: Path, image: ImageSpec, asked: str | None,
                                                platform: str | None) -> None:
    assert builder.target_platform(image, build_options(Backend.BUILDKIT, tmp_path, platform=asked)) == platform


@pytest.mark.parametrize(("image", "asked"), [(image_spec(tag="x86"), "linux/arm64"),
                                              (arm_cpu_image(), "linux/amd64")])
def test_a_platform_flag_against_the_entrys_arch_is_refused(tmp_path: Path, image: ImageSpec, asked: str) -> None:
    with pytest.raises(ConfigError, match=f"{image.id}: --platform {asked}, but the entry is for {image.arch} "
                                          rf"\({image.platform}\); set arch in versions.yaml instead"):
        builder.target_platform(image, build_options(Backend.BUILDKIT, tmp_path, platform=asked))


def test_the_dry_run_command_names_the_entrys_platform(tmp_path: Path) -> None:
    shown = builder.build_command_preview(arm_cpu_image(), build_options(Backend.BUILDKIT, tmp_path))
    assert "--platform linux/arm64" in shown
    assert "--platform" not in builder.build_command_preview(image_spec(tag="x86"),
                                                             build_options(Backend.BUILDKIT, tmp_path))


@pytest.mark.parametrize("backend", [Backend.BUILDKIT, Backend.DOCKER])
def test_the_dry_run_of_an_ascend_entry_says_its_target_waits_for_canns_environment(tmp_path: Path,
                                                                                     backend: Backend) -> None:
    shown = builder.build_command_preview(ascend_image(), build_options(backend, tmp_path))
    assert shown.splitlines()[0] == ("# CANN's set_env.sh is read from the base when the build runs; what it sets "
                                     "becomes ENV, and the target is then image-buildkit-env"
                                     if backend is Backend.BUILDKIT else
                                     "# CANN's set_env.sh is read from the base when the build runs; what it sets "
                                     "becomes ENV, and the target is then image-env")
    assert "CANN" not in builder.build_command_preview(arm_cpu_image(), build_options(backend, tmp_path))


def test_the_description_label_names_torch_npu_cann_and_a_machine_other_than_x86_64() -> None:
    def description(image: ImageSpec) -> str:
        return dict(plan.labels(image))["org.opencontainers.image.description"]

    npu = ascend_image()
    assert npu.ascend is not None
    assert description(npu) == (f"PyTorch {npu.torch} (torch_npu {npu.ascend.torch_npu}, Ascend {npu.ascend.chip}, "
                                f"CANN {npu.ascend.cann}, aarch64) on Python {npu.python} for ModelArts training")
    arm = arm_cpu_image()
    assert description(arm) == f"PyTorch {arm.torch} (cpu, aarch64) on Python {arm.python} for ModelArts training"
    x86 = image_spec(tag="x86")
    assert description(x86) == f"PyTorch {x86.torch} ({x86.variant}) on Python {x86.python} for ModelArts training"


def local_base(reference: str, arch: str | None) -> BaseImage:
    return BaseImage(reference=reference, source=BaseImageSource.LOCAL, arch=arch)


@pytest.mark.parametrize(("image", "arch"), [(arm_cpu_image(), "arm64"), (image_spec(tag="x86"), "amd64"),
                                             (arm_cpu_image(), None), (ascend_image(), "arm64")])
def test_a_base_of_the_entrys_architecture_or_of_an_unknown_one_is_fine(image: ImageSpec, arch: str | None) -> None:
    assert builder.architecture_problem(image, local_base(image.base_image, arch)) is None


def test_a_base_of_another_architecture_is_named_with_both() -> None:
    image = ascend_image()
    problem = builder.architecture_problem(image, local_base(CANN_BASE, "amd64"))
    assert isinstance(problem, ConfigError)
    assert str(problem) == (
        f"{image.id}: base image {CANN_BASE} is linux/amd64, but the entry is for aarch64 (linux/arm64): pull the "
        f"base for that platform (docker pull --platform linux/arm64 {CANN_BASE}) or name one built for it")
    x86 = builder.architecture_problem(image_spec(tag="x86"), local_base("ubuntu:22.04", "arm64"))
    assert x86 is not None and "is linux/arm64, but the entry is for x86_64 (linux/amd64)" in str(x86)


class BaseEngine(FakeEngine):
    """Answers base_image() and architecture() as the test sets them; counts what it was asked."""

    def __init__(self, *, arch: str | None = "arm64", machine: str = "x86_64", local: bool = True) -> None:
        self.arch, self.machine, self.local = arch, machine, local
        self.asked: list[str] = []
        self.architecture_asked = 0

    def base_image(self, reference: str) -> BaseImage:
        self.asked.append(reference)
        return local_base(reference, self.arch)

    def architecture(self) -> str:
        self.architecture_asked += 1
        return self.machine


def binfmt(tmp_path: Path, entries: Mapping[str, str] | None = None, *, mounted: bool = True) -> Path:
    """A binfmt_misc directory: register and status (when mounted), and one file per handler."""
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    if mounted:
        (directory / "register").write_bytes(b"")
        (directory / "status").write_text("enabled\n", "ascii")
    for name, text in (entries or {}).items():
        (directory / name).write_text(text, "ascii")
    return directory


def handler_entry(magic: str, *, enabled: bool = True, name: str = "aarch64") -> str:
    """A handler's file as the kernel shows it (Debian's qemu-user-static, registered by scripts/binfmt-up.sh)."""
    return (f"{'enabled' if enabled else 'disabled'}\ninterpreter /usr/libexec/qemu-binfmt/{name}-binfmt-P\n"
            f"flags: POF\noffset 0\nmagic {magic}\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


AARCH64_HANDLER = handler_entry(emulation.ELF_MAGIC["aarch64"])


@pytest.fixture
def binfmt_at(monkeypatch: pytest.MonkeyPatch) -> UseBinfmt:
    """Point the builder's emulation check at a binfmt_misc directory of the test's."""
    def use(directory: Path) -> None:
        monkeypatch.setattr(emulation, "emulation_problem",
                            functools.partial(emulation.emulation_problem, binfmt_dir=directory))
    return use


def test_check_bases_refuses_a_base_of_another_architecture_before_any_download(tmp_path: Path,
                                                                              binfmt_at: UseBinfmt) -> None:
    binfmt_at(binfmt(tmp_path, {"qemu-aarch64": AARCH64_HANDLER}))
    engine = BaseEngine(arch="amd64")
    with pytest.raises(ConfigError) as caught:
        builder.check_bases([ascend_image()], build_options(Backend.BUILDKIT, tmp_path), engine)
    message = str(caught.value)
    assert CANN_BASE in message and "linux/amd64" in message and "aarch64 (linux/arm64)" in message


def test_an_aarch64_entry_on_an_x86_64_engine_without_emulation_is_a_build_error_saying_how_to_enable_it(
        tmp_path: Path, binfmt_at: UseBinfmt) -> None:
    binfmt_at(binfmt(tmp_path))
    image = arm_cpu_image()
    with pytest.raises(BuildError) as caught:
        builder.check_bases([image], build_options(Backend.BUILDKIT, tmp_path), BaseEngine())
    message = str(caught.value)
    assert message.startswith(f"{image.id}: the image is for linux/arm64 and the engine runs on x86_64")
    assert "qemu-user-static" in message and "tonistiigi/binfmt --install arm64" in message


def test_with_the_handler_registered_the_bases_pass_each_asked_once(tmp_path: Path, binfmt_at: UseBinfmt) -> None:
    binfmt_at(binfmt(tmp_path, {"qemu-aarch64": AARCH64_HANDLER}))
    engine = BaseEngine()
    images = [arm_cpu_image(), arm_cpu_image(id="other-arm"), ascend_image()]
    builder.check_bases(images, build_options(Backend.BUILDKIT, tmp_path), engine)
    assert engine.asked == [images[0].base_image, CANN_BASE]
    assert engine.architecture_asked == 1


@pytest.mark.parametrize(("machine", "local"), [("aarch64", True), ("x86_64", False)], ids=["native", "remote"])
def test_a_native_or_remote_engine_needs_no_local_handler(tmp_path: Path, binfmt_at: UseBinfmt, machine: str,
                                                          local: bool) -> None:
    binfmt_at(binfmt(tmp_path))  # no handler at all
    builder.check_bases([ascend_image()], build_options(Backend.BUILDKIT, tmp_path),
                        BaseEngine(machine=machine, local=local))


def test_x86_64_entries_do_not_ask_the_engines_architecture(tmp_path: Path) -> None:
    engine = BaseEngine(arch="amd64")
    builder.check_bases([image_spec(tag="x86")], build_options(Backend.BUILDKIT, tmp_path), engine)
    assert engine.architecture_asked == 0


# --------------------------------------------------------------------------------------------------------------
# QEMU emulation: binfmt_misc handlers


def test_an_enabled_handler_with_the_aarch64_magic_is_found(tmp_path: Path) -> None:
    directory = binfmt(tmp_path, {"python3.11": "enabled\ninterpreter /usr/bin/python3.11\nflags: \noffset 0\n"
                                                "magic a70d0d0a\n",
                                  "qemu-aarch64": AARCH64_HANDLER})
    assert emulation.handler("aarch64", directory) == "qemu-aarch64"
    assert emulation.emulation_problem("aarch64", "x86_64", local_engine=True, binfmt_dir=directory) is None


def test_the_handler_is_found_by_its_magic_not_its_name(tmp_path: Path) -> None:
    directory = binfmt(tmp_path, {"arm64-by-another-name": AARCH64_HANDLER})
    assert emulation.handler("aarch64", directory) == "arm64-by-another-name"


@pytest.mark.parametrize("entries", [
    {"qemu-aarch64": handler_entry(emulation.ELF_MAGIC["aarch64"], enabled=False)},  # disabled
    {},  # mounted, no handler
    {"qemu-arm": handler_entry("7f454c4601010100000000000000000002002800", name="arm")},  # 32-bit ARM
    {"qemu-aarch64_be": handler_entry("7f454c46020201000000000000000000000200b7", name="aarch64_be")},
], ids=["disabled", "absent", "arm", "big-endian"])
def test_without_an_enabled_aarch64_handler_the_problem_says_how_to_enable_it(tmp_path: Path,
                                                                             entries: dict[str, str]) -> None:
    directory = binfmt(tmp_path, entries)
    assert emulation.handler("aarch64", directory) is None
    problem = emulation.emulation_problem("aarch64", "x86_64", local_engine=True, binfmt_dir=directory)
    assert problem is not None
    assert problem.startswith("the image is for linux/arm64 and the engine runs on x86_64, which takes QEMU user "
                              f"emulation, but no binfmt_misc handler for aarch64 is registered ({directory}): ")
    assert "install Debian's qemu-user-static" in problem and "scripts/binfmt-up.sh" in problem
    assert "docker run --privileged --rm tonistiigi/binfmt --install arm64" in problem


@pytest.mark.parametrize("mounted", [False, None], ids=["empty", "missing"])
def test_binfmt_misc_not_mounted_is_said(tmp_path: Path, mounted: bool | None) -> None:
    directory = binfmt(tmp_path, mounted=False) if mounted is False else tmp_path / "no-binfmt_misc"
    problem = emulation.emulation_problem("aarch64", "amd64", local_engine=True, binfmt_dir=directory)
    assert problem is not None and f"({directory}, not mounted)" in problem and "qemu-user-static" in problem


@pytest.mark.parametrize(("image_arch", "engine_arch"), [("aarch64", "aarch64"), ("aarch64", "arm64"),
                                                          ("x86_64", "x86_64"), ("x86_64", "amd64")])
def test_the_engines_own_architecture_needs_no_emulation(tmp_path: Path, image_arch: str, engine_arch: str) -> None:
    assert emulation.emulation_problem(image_arch, engine_arch, local_engine=True,
                                       binfmt_dir=binfmt(tmp_path)) is None


def test_a_remote_engine_answers_for_its_own_handlers(tmp_path: Path) -> None:
    assert emulation.emulation_problem("aarch64", "x86_64", local_engine=False, binfmt_dir=binfmt(tmp_path)) is None


def test_an_x86_64_image_on_an_arm64_engine_takes_the_x86_64_handler(tmp_path: Path) -> None:
    directory = binfmt(tmp_path, {"qemu-x86_64": handler_entry(emulation.ELF_MAGIC["x86_64"], name="x86_64")})
    assert emulation.emulation_problem("x86_64", "aarch64", local_engine=True, binfmt_dir=directory) is None
    assert emulation.handler("x86_64", directory) == "qemu-x86_64"


@pytest.mark.parametrize(("name", "magic"), [("riscv64", "7f454c460201010000000000000000000200f300"),
                                             ("x86_64", emulation.ELF_MAGIC["x86_64"])])
def test_a_handler_for_another_64_bit_machine_is_not_taken_for_aarch64(tmp_path: Path, name: str,
                                                                       magic: str) -> None:
    directory = binfmt(tmp_path, {f"qemu-{name}": handler_entry(magic, name=name)})  # Debian's qemu-<name>
    assert emulation.handler("aarch64", directory) is None
    assert emulation.emulation_problem("aarch64", "x86_64", local_engine=True, binfmt_dir=directory) is not None


# --------------------------------------------------------------------------------------------------------------
# The verification result's NPU facts and their checks


NPU_FACTS = ("platform", "torch_npu", "npu_available", "npu_device_count", "npu_devices", "npu_unavailable",
             "require_npu", "ascend_home")


def npu_result(**overrides: Any) -> dict[str, Any]:
    """The result line of a passing --require-npu run on a 910B, as pytorch-verification.py prints it."""
    data = result_dict(
        python="3.11.10", platform="Linux-5.10.0-182.0.0.95.r1941_123.hce2.aarch64-aarch64-with-glibc2.35",
        require_gpu=False, torch="2.6.0", torch_cuda=None, cudnn=None, cuda_available=False, device_count=0,
        devices=[], device="npu:0", require_npu=True, torch_npu="2.6.0", npu_available=True, npu_device_count=1,
        npu_devices=["Ascend910B3"], npu_unavailable=None, ascend_home="/usr/local/Ascend/ascend-toolkit/latest",
        checks=[{"name": "import-torch", "ok": True, "detail": "torch 2.6.0"},
                {"name": "npu-available", "ok": True, "detail": "1 NPU(s): Ascend910B3 (torch_npu 2.6.0)"},
                {"name": "matmul", "ok": True, "detail": "max |difference| 1e-06"}])
    data.update(overrides)
    return data


def test_the_recorded_line_has_the_npu_facts_the_script_writes() -> None:
    tree = ast.parse(SCRIPT.read_text("utf-8"))
    verify = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "verify")
    literal = next(node.value for node in ast.walk(verify) if isinstance(node, ast.Assign)
                   and any(isinstance(target, ast.Name) and target.id == "result" for target in node.targets)
                   and isinstance(node.value, ast.Dict))
    written = {key.value for key in literal.keys if isinstance(key, ast.Constant)}
    assert set(NPU_FACTS) <= written
    assert set(NPU_FACTS) <= set(npu_result())


def test_the_npu_facts_are_read_from_the_result_line() -> None:
    result = parse_result(log_with(npu_result()))
    assert result.platform is not None and result.platform.endswith("-aarch64-with-glibc2.35")
    assert (result.torch_npu, result.npu_available, result.npu_device_count) == ("2.6.0", True, 1)
    assert result.npu_devices == ("Ascend910B3",) and result.device == "npu:0"
    back = parse_result(log_with(result.to_json()))
    assert back == result


def test_a_line_without_the_npu_facts_reads_as_no_npu() -> None:
    data = {key: value for key, value in npu_result().items() if key not in NPU_FACTS}
    result = parse_result(log_with(data))
    assert (result.platform, result.torch_npu, result.npu_available, result.npu_device_count,
            result.npu_devices) == (None, None, False, 0, ())


def test_a_passing_npu_run_passes_every_check_of_the_ascend_entry() -> None:
    outcomes = check_against(parse_result(log_with(npu_result())), ascend_image(), Device.NPU)
    assert [outcome.name for outcome in outcomes if outcome.blocking] == []
    checks = by_name(outcomes)
    assert checks["arch"].detail == "ran as Linux-5.10.0-182.0.0.95.r1941_123.hce2.aarch64-aarch64-with-glibc2.35"
    assert checks["torch-npu-version"].detail == "torch_npu 2.6.0"
    assert checks["npu-available"].detail == "1 NPU(s): Ascend910B3; the work ran on npu:0"
    assert checks["torch-build"].ok and checks["script:npu-available"].ok


@pytest.mark.parametrize(("overrides", "name", "detail"), [
    ({"platform": "Linux-6.8.0-x86_64-with-glibc2.35"}, "arch",
     "ran as Linux-6.8.0-x86_64-with-glibc2.35, expected aarch64"),
    ({"platform": None}, "arch", "ran as an unknown platform, expected aarch64"),
    ({"torch_npu": "2.5.1"}, "torch-npu-version", "torch_npu 2.5.1, expected 2.6.0"),
    ({"torch_npu": None}, "torch-npu-version", "torch_npu is not installed, expected 2.6.0"),
    ({"npu_available": False, "npu_device_count": 0, "npu_devices": [], "device": None}, "npu-available",
     "no usable NPU in the container (0 visible, work ran on None)"),
    ({"device": "cpu"}, "npu-available", "no usable NPU in the container (1 visible, work ran on cpu)"),
    ({"npu_device_count": 0}, "npu-available", "no usable NPU in the container (0 visible, work ran on npu:0)"),
])
def test_each_npu_check_fails_on_its_own_fact(overrides: dict[str, Any], name: str, detail: str) -> None:
    outcomes = check_against(parse_result(log_with(npu_result(**overrides))), ascend_image(), Device.NPU)
    assert [outcome.name for outcome in outcomes if outcome.blocking] == [name]
    assert by_name(outcomes)[name].detail == detail


def test_a_torch_npu_with_a_local_label_is_the_entrys_release() -> None:
    outcomes = check_against(parse_result(log_with(npu_result(torch_npu="2.6.0+gitb1a4d5c"))), ascend_image(),
                             Device.NPU)
    assert by_name(outcomes)["torch-npu-version"].ok


def test_which_npu_checks_apply_follows_the_entry_and_the_device() -> None:
    def names(image: ImageSpec, device: Device) -> set[str]:
        data = npu_result(device="cpu", require_npu=False)
        return {outcome.name for outcome in check_against(parse_result(log_with(data)), image, device)}

    npu_checks = {"arch", "torch-npu-version", "npu-available"}
    assert names(ascend_image(), Device.NPU) & npu_checks == npu_checks
    assert names(ascend_image(), Device.CPU) & npu_checks == {"arch", "torch-npu-version"}  # a CPU run of it
    assert names(arm_cpu_image(torch="2.6.0", python="3.11"), Device.CPU) & npu_checks == {"arch"}
    assert names(dataclasses.replace(image_spec(tag="x86", torch="2.6.0"), python="3.11"),
                 Device.CPU) & npu_checks == set()


def test_a_real_run_of_the_script_with_a_usable_npu_is_judged_against_the_ascend_entry(
        python_with_torch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCH_DEVICE_BACKEND_AUTOLOAD", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        monkeypatch.delenv(name, raising=False)
    version = subprocess.run([python_with_torch, "-c", "import platform, torch; print(torch.__version__); "
                              "print(platform.python_version()); print(platform.platform())"],
                             capture_output=True, text=True, check=True).stdout.split("\n")
    site = stand_in(tmp_path / "site", ONE_DEVICE)
    _, result, raw = run_verification_with(python_with_torch, tmp_path, site, REQUIRE_NPU)
    assert set(NPU_FACTS) <= set(raw)
    image = ascend_image(torch=version[0].split("+")[0], python=version[1],
                         ascend=Ascend(cann="8.2.RC1", chip="910b", torch_npu=VERSION))
    checks = by_name(check_against(result, image, Device.NPU))
    assert checks["torch-npu-version"].ok and checks["torch-npu-version"].detail == f"torch_npu {VERSION}"
    assert checks["npu-available"].ok, checks["npu-available"].detail
    assert checks["npu-available"].detail == "1 NPU(s): Ascend910B3; the work ran on npu:0"
    # the arch check reads the machine the interpreter ran as: this host's
    assert result.platform == version[2]
    assert checks["arch"].ok is ("aarch64" in version[2])
    assert checks["script:npu-available"].ok


# --------------------------------------------------------------------------------------------------------------
# Conformance: the Ascend rules


CANN_ENV = ("ASCEND_HOME_PATH=/usr/local/Ascend/ascend-toolkit/latest",
            "LD_LIBRARY_PATH=/usr/local/Ascend/ascend-toolkit/latest/lib64:/usr/local/Ascend/driver/lib64",
            "PATH=/usr/bin:/bin")
NPU_PROBE = {"groups": ["users", "HwHiAiUser"], "driver_paths": []}
ASCEND_RULES = ["cann-environment", "npu-driver", "npu-group"]


def ascend_evaluated(*, npu: bool = True, **overrides: Any) -> dict[str, CheckOutcome]:
    probe_overrides = {**NPU_PROBE, **overrides.pop("probe", {})}
    environment = overrides.pop("environment", CANN_ENV)
    return by_name(conformance.evaluate(facts(probe=probe_overrides, environment=environment, **overrides),
                                        boot=GOOD_BOOT, npu=npu))


def test_the_ascend_rules_are_judged_on_ascend_images_only() -> None:
    outcomes = conformance.evaluate(facts(probe=NPU_PROBE, environment=CANN_ENV), boot=GOOD_BOOT, npu=True)
    assert [outcome.name for outcome in outcomes][-3:] == ASCEND_RULES
    assert all(outcome.ok for outcome in outcomes), [o for o in outcomes if not o.ok]
    assert not set(ASCEND_RULES) & set(ascend_evaluated(npu=False))
    assert not set(ASCEND_RULES) & {outcome.name for outcome in conformance.evaluate(facts(), boot=GOOD_BOOT)}


def test_the_environment_the_build_reads_from_set_env_sh_passes_cann_environment(cann: CannLayout) -> None:
    found = cann_env.parse(probe([str(cann.set_env)]).stdout)
    outcome = ascend_evaluated(environment=tuple(f"{name}={value}" for name, value in found.variables))
    assert outcome["cann-environment"].ok
    assert outcome["cann-environment"].detail == (f"ENV sets CANN's home {cann.home} and LD_LIBRARY_PATH "
                                                  "through it")


@pytest.mark.parametrize(("environment", "ok", "words"), [
    (("ASCEND_TOOLKIT_HOME=/opt/cann", "LD_LIBRARY_PATH=/opt/cann/lib64"), True, "CANN's home /opt/cann"),
    (("PATH=/usr/bin",), False, "no ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME"),
    (("ASCEND_HOME_PATH=/opt/cann", "LD_LIBRARY_PATH=/usr/lib"), False, "LD_LIBRARY_PATH does not reach it"),
    (("ASCEND_HOME_PATH=/opt/cann",), False, "LD_LIBRARY_PATH does not reach it"),
])
def test_the_cann_environment_rule(environment: tuple[str, ...], ok: bool, words: str) -> None:
    outcome = ascend_evaluated(environment=environment)["cann-environment"]
    assert outcome.ok is ok and words in outcome.detail
    if not ok:
        assert "set_env.sh is never sourced" in outcome.detail


def test_a_driver_baked_into_the_image_fails_npu_driver_naming_it() -> None:
    outcome = ascend_evaluated(probe={"driver_paths": ["/usr/local/Ascend/driver", "/usr/local/bin/npu-smi"]})
    assert not outcome["npu-driver"].ok
    detail = outcome["npu-driver"].detail
    assert "/usr/local/Ascend/driver" in detail and "/usr/local/bin/npu-smi" in detail and "remove it" in detail
    assert ascend_evaluated()["npu-driver"].detail == "no driver files baked in (the node's are mounted)"


def test_a_training_user_outside_the_npu_group_fails_npu_group() -> None:
    outcome = ascend_evaluated(probe={"groups": ["users"]})["npu-group"]
    assert not outcome.ok
    assert outcome.detail == ("ma-user is not in HwHiAiUser (its groups: users): the host's NPU devices belong to "
                              "that group")
    assert ascend_evaluated()["npu-group"].detail == "ma-user is in HwHiAiUser"


def test_without_the_probe_the_probe_rules_fail_and_cann_environment_is_still_judged() -> None:
    unprobed = dataclasses.replace(facts(environment=CANN_ENV), probe=None, probe_error="conformance probe: no line")
    outcomes = by_name(conformance.evaluate(unprobed, boot=GOOD_BOOT, npu=True))
    assert outcomes["cann-environment"].ok  # from the image's config, not the probe
    assert outcomes["npu-driver"].blocking and outcomes["npu-group"].blocking
    assert "the probe did not run" in outcomes["npu-group"].detail


def test_the_probe_line_carries_groups_and_driver_paths() -> None:
    probe_facts = conformance.parse_probe(conformance.FACTS_PREFIX + json.dumps(
        {**GOOD_PROBE, "groups": ["HwHiAiUser", "users"], "driver_paths": ["/usr/local/dcmi"]}))
    assert probe_facts.groups == ("HwHiAiUser", "users") and probe_facts.driver_paths == ("/usr/local/dcmi",)
    older = conformance.parse_probe(conformance.FACTS_PREFIX + json.dumps(GOOD_PROBE))  # a probe before Ascend's
    assert older.groups == () and older.driver_paths == ()


# --------------------------------------------------------------------------------------------------------------
# The host's NPU for --device npu


HOST_DEVICES = ("dev/davinci0", "dev/davinci1", "dev/davinci_manager", "dev/devmm_svm", "dev/hisi_hdc")
HOST_DRIVER = ("usr/local/Ascend/driver", "usr/local/dcmi")


def ascend_host(root: Path, *, without: Sequence[str] = ()) -> Path:
    """A host root with an Ascend driver installed: device files, the driver's directories and npu-smi."""
    for device in HOST_DEVICES:
        if device not in without:
            (root / device).parent.mkdir(parents=True, exist_ok=True)
            (root / device).write_bytes(b"")
    for directory in HOST_DRIVER:
        if directory not in without:
            (root / directory / "lib64").mkdir(parents=True)
    if "usr/local/bin/npu-smi" not in without:
        (root / "usr/local/bin").mkdir(parents=True)
        (root / "usr/local/bin/npu-smi").write_bytes(b"#!/bin/sh\n")
    return root


def test_npu_host_finds_the_chips_control_devices_and_driver(tmp_path: Path) -> None:
    host = npu_host(ascend_host(tmp_path))
    assert host.devices == ("/dev/davinci0", "/dev/davinci1", "/dev/davinci_manager", "/dev/devmm_svm",
                            "/dev/hisi_hdc")
    assert host.mounts == ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi")
    assert host.missing == () and host.usable
    assert require_npu_host(host) is host


def test_a_device_npu_run_passes_the_devices_and_mounts_the_driver_read_only(tmp_path: Path) -> None:
    host = npu_host(ascend_host(tmp_path))
    image = ascend_image()
    spec = run_spec("img:npu", device=Device.NPU, npu=host, platform=image.platform, user=image.user)
    assert spec.command == (image.user.boot_python, f"{image.user.code_dir}/{SCRIPT_NAME}", REQUIRE_NPU)
    assert spec.devices == host.devices and spec.platform == "linux/arm64" and spec.gpus == 0
    assert spec.mounts[0] == Mount(source=str(VERIFY_DIR.resolve()), target=image.user.code_dir, read_only=True)
    assert spec.mounts[1:] == tuple(Mount(source=path, target=path, read_only=True) for path in host.mounts)
    options = containers.container_options(spec)
    assert options["platform"] == "linux/arm64"
    assert options["devices"] == [f"{device}:{device}:rwm" for device in host.devices]
    assert "device_requests" not in options


@pytest.mark.parametrize(("without", "missing"), [
    (("dev/davinci0", "dev/davinci1"), ("/dev/davinci[0-9]*",)),
    (("dev/hisi_hdc",), ("/dev/hisi_hdc",)),
    (("dev/davinci_manager", "dev/devmm_svm"), ("/dev/davinci_manager", "/dev/devmm_svm")),
    (("usr/local/Ascend/driver",), ("/usr/local/Ascend/driver",)),
    (("usr/local/dcmi", "usr/local/bin/npu-smi"), ("/usr/local/dcmi", "/usr/local/bin/npu-smi")),
])
def test_a_host_missing_a_piece_is_refused_naming_it(tmp_path: Path, without: tuple[str, ...],
                                                     missing: tuple[str, ...]) -> None:
    host = npu_host(ascend_host(tmp_path, without=without))
    assert host.missing == missing and not host.usable
    with pytest.raises(ConfigError) as caught:
        require_npu_host(host)
    message = str(caught.value)
    assert message.startswith(f"--device npu: this host has no usable Ascend NPU (missing: {', '.join(missing)})")
    assert "--device cpu" in message and "--on modelarts" in message
    with pytest.raises(ConfigError, match="no usable Ascend NPU"):
        resolve_devices(DeviceChoice.NPU, None, npu=host)


def test_a_host_without_anything_of_ascend_misses_all_of_it(tmp_path: Path) -> None:
    host = npu_host(tmp_path)
    assert host.devices == () and host.mounts == () and not host.usable
    assert host.missing == ("/dev/davinci[0-9]*", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc",
                            "/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi")


def test_control_devices_alone_are_not_a_chip() -> None:
    host = NpuHost(devices=("/dev/davinci_manager",), mounts=(), missing=())
    assert not host.usable


def test_a_device_npu_run_without_the_host_requires_the_npu_but_passes_nothing() -> None:
    spec = run_spec("img:npu", device=Device.NPU)
    assert spec.command[-1] == REQUIRE_NPU and spec.devices == () and len(spec.mounts) == 1


def test_a_cpu_run_of_an_arm64_image_names_its_platform_and_requires_nothing(tmp_path: Path) -> None:
    spec = run_spec("img:arm", device=Device.CPU, platform="linux/arm64", npu=npu_host(ascend_host(tmp_path)))
    assert spec.platform == "linux/arm64" and spec.devices == () and len(spec.mounts) == 1
    assert REQUIRE_NPU not in spec.command and REQUIRE_GPU not in spec.command


def test_resolve_devices_for_an_ascend_image(tmp_path: Path) -> None:
    usable = npu_host(ascend_host(tmp_path / "ascend"))
    bare = npu_host(tmp_path / "bare")
    assert resolve_devices(DeviceChoice.NPU, None, npu=usable) == ((Device.NPU,), ())
    assert resolve_devices(DeviceChoice.AUTO, None, npu_image=True, npu=usable) == ((Device.NPU,), ())
    devices, notes = resolve_devices(DeviceChoice.AUTO, None, npu_image=True, npu=bare)
    assert devices == (Device.CPU,)
    assert notes == (f"NPU: skipped, no Ascend NPU on this host (missing: {', '.join(bare.missing)})",)
    assert resolve_devices(DeviceChoice.AUTO, None, npu_image=True) == (
        (Device.CPU,), ("NPU: skipped, no Ascend NPU on this host (missing: not asked)",))
    assert resolve_devices(DeviceChoice.CPU, None, npu_image=True, npu=usable) == ((Device.CPU,), ())
    # an image that is not Ascend's is not put on the host's NPU by auto
    devices, notes = resolve_devices(DeviceChoice.AUTO, None, npu=usable)
    assert devices == (Device.CPU,) and notes[0].startswith("GPU: skipped")


# --------------------------------------------------------------------------------------------------------------
# ModelArts: the flavour and the training job of an Ascend image


def test_an_npu_verification_chooses_an_ascend_flavour_of_the_images_architecture() -> None:
    assert flavors.flavor_type(Device.NPU) is FlavorType.ASCEND
    assert flavors.choose(OFFERED, device=Device.NPU, arch="aarch64").id == "modelarts.kat1.xlarge"
    assert flavors.choose(OFFERED, device=Device.NPU, arch="arm64").id == "modelarts.kat1.xlarge"
    with pytest.raises(ConfigError, match="no Ascend flavour for x86 is offered"):
        flavors.choose(OFFERED, device=Device.NPU, arch="x86_64")
    cpu_only = tuple(flavor for flavor in OFFERED if flavor.type is not FlavorType.ASCEND)
    with pytest.raises(ConfigError, match="no Ascend flavour for aarch64 is offered in cn-southwest-2"):
        flavors.choose(cpu_only, device=Device.NPU, arch="aarch64", region="cn-southwest-2")


def test_an_ascend_flavour_without_a_chip_is_not_chosen() -> None:
    empty = Flavor(id="modelarts.kat1.none", type=FlavorType.ASCEND, arch="aarch64", cpus=4, memory_gib=8,
                   accelerators=0)
    chosen = flavors.choose((empty, *OFFERED), device=Device.NPU, arch="aarch64")
    assert chosen.id == "modelarts.kat1.xlarge"


def test_the_training_job_of_an_ascend_image_requires_the_npu_on_an_ascend_flavour() -> None:
    body = trainingjob.training_job_body(ascend_image(), digest=DIGEST)
    assert body["algorithm"]["command"] == ascend_image().user.boot_command + " " + REQUIRE_NPU
    assert body["spec"]["resource"]["flavor_id"] == trainingjob.NPU_FLAVOR
    request_of(body)  # a CreateTrainingJobRequest of Huawei's SDK
    on_cpu = trainingjob.training_job_body(ascend_image(), digest=DIGEST, npu=False)
    assert REQUIRE_NPU not in on_cpu["algorithm"]["command"]
    assert on_cpu["spec"]["resource"]["flavor_id"] == trainingjob.CPU_FLAVOR
    arm = trainingjob.training_job_body(arm_cpu_image(), digest=DIGEST)
    assert arm["algorithm"]["command"] == arm_cpu_image().user.boot_command
    assert arm["spec"]["resource"]["flavor_id"] == trainingjob.CPU_FLAVOR


class FlavorsOnly:
    """The one ModelArts call planning a job makes: the region's flavours of a type."""

    def __init__(self) -> None:
        self.kinds: list[FlavorType] = []

    def flavors(self, kind: FlavorType) -> tuple[Flavor, ...]:
        self.kinds.append(kind)
        return tuple(flavor for flavor in OFFERED if flavor.type is kind)


def test_a_planned_job_of_an_ascend_image_runs_on_the_smallest_ascend_flavour() -> None:
    image = ascend_image()
    devices = platform_verifier.devices_for(image, DeviceChoice.AUTO)
    assert devices == (Device.NPU,)
    api = FlavorsOnly()
    (planned,) = platform_verifier.plan_jobs(
        platform_verifier.Target(image=image, image_url=image.reference, digest=DIGEST), devices,
        api=cast(ModelArts, api), options=PlatformOptions(obs_dir="obs://bucket/ci/"), region="cn-southwest-2",
        script_dir=VERIFY_DIR, token="abc123")
    assert api.kinds == [FlavorType.ASCEND]
    assert planned.device is Device.NPU and planned.flavor.id == "modelarts.kat1.xlarge"
    assert planned.body["algorithm"]["command"].endswith(f"{SCRIPT_NAME} {REQUIRE_NPU}")
    assert planned.body["spec"]["resource"]["flavor_id"] == "modelarts.kat1.xlarge"
    assert planned.body["metadata"]["name"].endswith("-npu-abc123")


# --------------------------------------------------------------------------------------------------------------
# The matrix: npu and aarch64 cells and their runners


def test_npu_and_aarch64_cells_have_their_tags_and_runners_of_their_own() -> None:
    images = [image_spec(tag="cpu", image_id="cpu-cell"), arm_cpu_image(id="arm-cell"),
              ascend_image(id="npu-cell"), dataclasses.replace(image_spec(tag="cu126", image_id="cuda-cell"),
                                                               cuda="12.6")]
    runners = {"npu": ("self-hosted", "ascend"), "aarch64": ("ubuntu-24.04-arm",), "gpu": ("self-hosted", "gpu")}
    cells = {cell.id: cell for cell in ci.ci_cells(images, runners)}
    assert cells["npu-cell"] == ci.CiCell(id="npu-cell", tags=("npu", "aarch64"), gpu=False,
                                          runner=("self-hosted", "ascend"), device=DeviceChoice.NPU)
    assert cells["arm-cell"] == ci.CiCell(id="arm-cell", tags=("cpu", "aarch64"), gpu=False,
                                          runner=("ubuntu-24.04-arm",), device=DeviceChoice.CPU)
    assert cells["cuda-cell"].runner == ("self-hosted", "gpu") and cells["cuda-cell"].device is DeviceChoice.BOTH
    assert cells["cpu-cell"].runner == () and cells["cpu-cell"].tags == ("cpu",)
    assert ci.runner_keys(images[2]) == ["npu", "aarch64"]
    assert ci.runner_keys(images[1]) == ["aarch64", "cpu"]


@pytest.mark.parametrize(("runners", "runner", "device"), [
    ({"aarch64": ("arm",)}, ("arm",), DeviceChoice.CPU),  # an arm64 runner builds it natively, verifies on its CPU
    ({"gpu": ("gpu",), "cpu": ("cpu",)}, (), DeviceChoice.CPU),  # neither a GPU nor a CPU runner is asked
    ({}, (), DeviceChoice.CPU),
])
def test_an_npu_cell_without_an_npu_runner_is_verified_on_the_cpu(runners: dict[str, tuple[str, ...]],
                                                                  runner: tuple[str, ...],
                                                                  device: DeviceChoice) -> None:
    (cell,) = ci.ci_cells([ascend_image()], runners)
    assert cell.runner == runner and cell.device is device


def test_the_matrix_list_of_a_versions_file_maps_npu_and_aarch64_cells(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    common = {"python": "3.11", "registry": "localhost:5999", "organization": "tests", "repository": "ci"}
    arm = {"url": f"https://x.invalid/{ARM_INSTALLER}", "sha256": "1" * 64}
    x86 = {"url": "https://x.invalid/Miniconda3-py311_24.1.2-0-Linux-x86_64.sh", "sha256": "1" * 64}
    versions = tmp_path / "versions.yaml"
    versions.write_text(json.dumps({"images": [
        {**common, "id": "cpu-cell", "torch": "2.9.1", "cuda": "cpu", "base_image": "ubuntu:22.04", "installer": x86},
        {**common, "id": "arm-cell", "torch": "2.9.1", "cuda": "cpu", "arch": "aarch64", "base_image": "ubuntu:22.04",
         "installer": arm},
        {**common, "id": "npu-cell", "torch": "2.6.0", "accelerator": "ascend", "cann": "8.2.RC1", "npu": "910b",
         "base_image": CANN_BASE, "installer": arm},
    ]}), "utf-8")
    config = tmp_path / "invoke.yaml"
    config.write_text(yaml.safe_dump({"modelarts": {
        "reports_dir": str(tmp_path / "reports"), "cache_dir": str(tmp_path / "cache"),
        "ci_runners": {"npu": ["self-hosted", "ascend"], "aarch64": "ubuntu-24.04-arm"}}}), "utf-8")
    assert matrix_main(["--versions", str(versions), "--config", str(config), "--list-json"]) == 0
    listed = {cell["id"]: cell for cell in json.loads(capsys.readouterr().out)["include"]}
    assert listed["npu-cell"] == {"id": "npu-cell", "tags": ["npu", "aarch64"], "gpu": False,
                                  "runner": ["self-hosted", "ascend"], "device": "npu"}
    assert listed["arm-cell"] == {"id": "arm-cell", "tags": ["cpu", "aarch64"], "gpu": False,
                                  "runner": ["ubuntu-24.04-arm"], "device": "cpu"}
    assert listed["cpu-cell"]["runner"] == ["ubuntu-latest"]
    pipeline = ci.gitlab_pipeline(ci.ci_cells([ascend_image(id="npu-cell")], {"npu": ("ascend",)}))
    assert pipeline["cell npu-cell"]["variables"] == {"CELL": "npu-cell", "CELL_DEVICE": "npu",
                                                      "CELL_TAGS": "npu aarch64"}
    assert pipeline["cell npu-cell"]["tags"] == ["ascend"]
