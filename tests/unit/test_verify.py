"""Verification without an engine: the run spec, the result line, the checks, conformance over canned facts."""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker.types
import pytest

from modelarts_images import contract, paths
from modelarts_images.engine import containers
from modelarts_images.engine.api import ContainerOutput, ContainerRun, GpuSupport, ImageConfig, Mount
from modelarts_images.errors import ConfigError, EngineError, VerifyError
from modelarts_images.model import Artifact, ImageSpec
from modelarts_images.options import Device, DeviceChoice, Flags, VerifyOptions, resolve
from modelarts_images.verify import conformance, probes
from modelarts_images.verify.checks import CheckOutcome, CheckStatus, failure_message
from modelarts_images.verify.report import (
    DeviceRun,
    Expected,
    ImageReport,
    format_report,
    raise_for_reports,
    save_report,
)
from modelarts_images.verify.result import RESULT_PREFIX, VerificationResult, check_against, parse_result
from modelarts_images.verify.runs import resolve_devices, run_spec
from modelarts_images.verify.verifier import verify_image
from tests.support.fake_engine import FakeEngine, image_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "verify" / "pytorch-verification.py"


def entry(**overrides: Any) -> ImageSpec:
    values: dict[str, Any] = dict(
        id="pytorch-2.1.0-cuda11.8", default=True, python="3.10", cuda="11.8", torch="2.1.0", torchvision=None,
        torchaudio=None, tag="2.1.0-cuda11.8", registry="swr.cn-north-4.myhuaweicloud.com",
        organization="deep-learning-demo", repository="pytorch", base_image="ubuntu:22.04", pip_index="",
        apt_mirror="", installer=Artifact(url="https://example.invalid/Miniconda3.sh", sha256=None), wheels=(),
    )
    values.update(overrides)
    return ImageSpec(**values)


CPU_ENTRY = entry(id="pytorch-2.13.0-cpu", cuda="cpu", torch="2.13.0", python="3.11")


def result_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": 1, "ok": True, "python": "3.10.13", "python_executable": "/home/ma-user/miniconda3/bin/python",
        "platform": "Linux", "cwd": "/home/ma-user", "require_gpu": False,
        "environment": {"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "MA_NUM_GPUS": "1"},
        "torch": "2.1.0+cu118", "torch_cuda": "11.8", "cudnn": 8700, "cuda_available": True, "device_count": 1,
        "devices": ["NVIDIA A100-SXM4-40GB"], "device": "cuda:0", "uid": 1000, "gid": 100, "user": "ma-user",
        "groups": [100], "seconds": 3.5, "prefix": "/home/ma-user/miniconda3", "activated": [],
        "modules": {"ssl": "ok", "ctypes": "ok", "zlib": "ok", "sqlite3": "ok", "bz2": "ok", "lzma": "ok"},
        "checks": [{"name": "import-torch", "ok": True, "detail": "torch 2.1.0+cu118"},
                   {"name": "matmul", "ok": True, "detail": "max |difference| 1e-06"}],
    }
    data.update(overrides)
    return data


def log_with(data: dict[str, Any] | str, before: str = "tensor([[0.1, 0.2, 0.3]])\n") -> str:
    line = data if isinstance(data, str) else json.dumps(data)
    return f"{before}[ ok ] import-torch: torch\n{RESULT_PREFIX}{line}\n"


def names(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.name: outcome for outcome in outcomes}


def failed(outcomes: list[CheckOutcome]) -> set[str]:
    return {outcome.name for outcome in outcomes if outcome.blocking}


# --------------------------------------------------------------------------------------------------------------
# The script and the probes stay valid on the oldest Python the matrix ships


@pytest.mark.parametrize("source_name", ["script", "probe"])
def test_in_container_code_parses_as_python_3_7(source_name: str) -> None:
    # the probes as the containers get them: the command line's -c argument (tests/unit/test_probes.py checks
    # every file of verify/probes/ the same way)
    source = {"script": SCRIPT.read_text(encoding="utf-8"),
              "probe": conformance.probe_run("img").command[3]}[source_name]
    ast.parse(source, feature_version=(3, 7))


def test_the_probes_and_their_parsers_agree_on_the_prefixes() -> None:
    assert f'PREFIX = "{conformance.FACTS_PREFIX}"' in probes.probe_source(probes.CONFORMANCE_FACTS)


def test_the_probes_travel_on_the_command_line_from_their_files() -> None:
    probe = conformance.probe_run("img")
    user = contract.DEFAULT_USER
    assert probe.command == (user.boot_python, "-I", "-c", probes.probe_source(probes.CONFORMANCE_FACTS),
                             user.conda_prefix, user.name, "1000", "100")
    assert (probe.user, probe.working_dir, probe.network, probe.mounts) == ("0:0", "/", False, ())
    # beside the boot command's own run, the probes get the CPU only when that run leaves some
    assert probe.background and conformance.setuid_run("base").background
    assert not run_spec("img", device=Device.CPU).background


def test_the_script_and_the_parser_agree_on_the_prefix() -> None:
    assert f'RESULT_PREFIX = "{RESULT_PREFIX}"' in SCRIPT.read_text(encoding="utf-8")
    assert SCRIPT.name == contract.SCRIPT_NAME and SCRIPT.parent == paths.VERIFY_DIR


# --------------------------------------------------------------------------------------------------------------
# The run spec: the container ModelArts would start


def test_cpu_run_spec_is_the_modelarts_boot_command(tmp_path: Path) -> None:
    spec = run_spec("swr.example.com/org/pytorch:1", device=Device.CPU, script_dir=tmp_path)
    assert spec.image == "swr.example.com/org/pytorch:1"
    assert spec.command == ("/home/ma-user/miniconda3/bin/python",
                            "/home/ma-user/modelarts/user-job-dir/code/pytorch-verification.py")
    # the console's boot command with ${MA_JOB_DIR} expanded by the platform, no shell in between
    assert contract.DEFAULT_USER.boot_command == \
        "/home/ma-user/miniconda3/bin/python ${MA_JOB_DIR}/code/pytorch-verification.py"
    assert " ".join(spec.command) == contract.DEFAULT_USER.boot_command.replace("${MA_JOB_DIR}", spec.env["MA_JOB_DIR"])
    assert spec.user == "1000:100"
    assert spec.working_dir == "/home/ma-user"
    assert spec.env == {
        "MA_HOME": "/home/ma-user", "MA_MOUNT_PATH": "/home/ma-user/modelarts",
        "MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir", "MA_LOG_DIR": "/home/ma-user/modelarts/log",
        "MA_NUM_GPUS": "0", "MA_NUM_HOSTS": "1", "MA_TASK_NAME": "worker", "VC_TASK_INDEX": "0",
        "VC_WORKER_NUM": "1", "VC_WORKER_HOSTS": contract.WORKER_HOSTNAME,
    }
    assert spec.mounts == (Mount(source=str(tmp_path.resolve()),
                                 target="/home/ma-user/modelarts/user-job-dir/code", read_only=True),)
    assert spec.gpus == 0 and spec.network


def test_gpu_run_spec_asks_for_a_gpu_and_requires_it() -> None:
    spec = run_spec("img", device=Device.GPU, gpus=2)
    assert spec.command[-1] == "--require-gpu"
    assert spec.gpus == 2 and spec.env["MA_NUM_GPUS"] == "2"
    assert spec.mounts[0].source == str(paths.VERIFY_DIR)


def test_run_spec_takes_the_timeout_into_the_container_run() -> None:
    assert run_spec("img", device=Device.CPU).timeout == contract.VERIFY_TIMEOUT_S
    assert run_spec("img", device=Device.GPU, timeout=42.5).timeout == 42.5


# An unknown device name can no longer reach run_spec (it takes the Device enum): the command line's text is
# rejected where it becomes a device, see test_an_unknown_device_is_rejected_naming_the_choices.
@pytest.mark.parametrize("gpus", [0, -1])
def test_run_spec_rejects_what_it_cannot_mean(gpus: int) -> None:
    with pytest.raises(ConfigError, match=f"gpus: {gpus} must be 1 or more"):
        run_spec("img", device=Device.GPU, gpus=gpus)


def test_container_options_replace_the_entrypoint_and_mount_read_only() -> None:
    options = containers.container_options(run_spec("img", device=Device.CPU))
    assert options["entrypoint"] == ["/home/ma-user/miniconda3/bin/python",
                                     "/home/ma-user/modelarts/user-job-dir/code/pytorch-verification.py"]
    assert "command" not in options  # nothing appended from the image's CMD
    assert options["user"] == "1000:100" and options["working_dir"] == "/home/ma-user"
    assert options["environment"]["MA_JOB_DIR"] == "/home/ma-user/modelarts/user-job-dir"
    (mount,) = options["mounts"]
    assert mount["Type"] == "bind" and mount["ReadOnly"] is True
    assert mount["Target"] == "/home/ma-user/modelarts/user-job-dir/code"
    assert "device_requests" not in options and "network_mode" not in options
    assert options["labels"] == {containers.LABEL: "1"}


def test_container_options_for_a_gpu_use_a_device_request() -> None:
    options = containers.container_options(run_spec("img", device=Device.GPU))
    (request,) = options["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    probe = containers.container_options(conformance.probe_run("img"))
    assert probe["network_mode"] == "none" and probe["user"] == "0:0"


@pytest.mark.parametrize(("requested", "available", "devices", "skipped"), [
    (DeviceChoice.CPU, None, (Device.CPU,), False),
    (DeviceChoice.GPU, None, (Device.GPU,), False),
    (DeviceChoice.BOTH, None, (Device.CPU, Device.GPU), False),
    (DeviceChoice.AUTO, True, (Device.GPU,), False),
    (DeviceChoice.AUTO, False, (Device.CPU,), True),
])
def test_resolve_devices(requested: DeviceChoice, available: bool | None, devices: tuple[Device, ...],
                         skipped: bool) -> None:
    support = None if available is None else GpuSupport(available=available, reason="the engine's runtimes are runc")
    got, notes = resolve_devices(requested, support)
    assert got == devices and all(isinstance(device, Device) for device in got)
    assert bool(notes) == skipped
    if skipped:
        assert notes[0] == "GPU: skipped, no GPU runtime (the engine's runtimes are runc)"


def test_an_unknown_device_is_rejected_naming_the_choices(tmp_path: Path) -> None:
    # resolve_devices takes a DeviceChoice now: --device's text is checked when the options are resolved
    with pytest.raises(ConfigError, match="--device: 'tpu' is not one of cpu, gpu, npu, both, auto"):
        resolve(None, Flags(device="tpu"), root=tmp_path)
    assert resolve(None, Flags(device="both"), root=tmp_path).verify.device is DeviceChoice.BOTH


# --------------------------------------------------------------------------------------------------------------
# parse_result


def test_parse_result_reads_the_last_result_line() -> None:
    older = json.dumps(result_dict(torch="0.0.0"))
    text = log_with(result_dict(), before=f"{RESULT_PREFIX}{older}\nnoise\n")
    result = parse_result(text)
    assert result.torch == "2.1.0+cu118" and result.torch_cuda == "11.8" and result.cudnn == "8700"
    assert result.python == "3.10.13" and result.device == "cuda:0" and result.devices == ("NVIDIA A100-SXM4-40GB",)
    assert (result.uid, result.gid, result.user, result.cwd) == (1000, 100, "ma-user", "/home/ma-user")
    assert dict(result.environment)["MA_NUM_GPUS"] == "1"
    assert [check.name for check in result.checks] == ["import-torch", "matmul"] and result.ok
    assert result.to_json()["checks"][0] == {"name": "import-torch", "status": "pass", "ok": True,
                                             "detail": "torch 2.1.0+cu118"}


def test_parse_result_of_a_script_without_torch() -> None:
    data = result_dict(ok=False, torch=None, torch_cuda=None, cudnn=None, cuda_available=False, device_count=0,
                       devices=[], device=None,
                       checks=[{"name": "import-torch", "ok": False, "detail": "No module named 'torch'"}])
    result = parse_result(log_with(data))
    assert result.torch is None and not result.ok and not result.checks[0].ok


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("tensor([1.])\nTraceback (most recent call last):\nKilled\n", "expected a line starting with "
                                                                   "'MODELARTS_VERIFY_RESULT'", id="killed"),
    pytest.param("tensor([1.])\nTraceback (most recent call last):\nKilled\n",
                 "pytorch-verification.py: expected a line starting with 'MODELARTS_VERIFY_RESULT' and a JSON object, "
                 "found none (the script did not get to its end; last lines: tensor([1.]) | Traceback (most recent "
                 "call last): | Killed)", id="killed-whole-message"),
    pytest.param("", "no output at all", id="empty"),
    pytest.param(log_with("{not json"), "not valid JSON", id="garbled"),
    pytest.param(log_with("[1, 2]"), "holds list, expected a JSON object", id="not-an-object"),
    pytest.param(log_with(json.dumps({"ok": True})), "no 'checks' key", id="no-checks"),
    pytest.param(log_with(json.dumps(result_dict(checks=[{"ok": True}]))), "'checks' must be a list of objects",
                 id="check-without-name"),
    pytest.param(log_with(json.dumps(result_dict(uid="root"))), "'uid' is 'root', expected an integer or null",
                 id="uid-type"),
    pytest.param(log_with(json.dumps(result_dict(devices="gpu0"))), "'devices' a list", id="devices-type"),
])
def test_parse_result_names_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(VerifyError) as raised:
        parse_result(text)
    assert expected in str(raised.value)
    assert raised.value.exit_code == 5


# --------------------------------------------------------------------------------------------------------------
# check_against


def parsed(**overrides: Any) -> VerificationResult:
    return parse_result(log_with(result_dict(**overrides)))


def cpu_result(**overrides: Any) -> VerificationResult:
    values: dict[str, Any] = dict(torch="2.13.0+cpu", torch_cuda=None, cudnn=None, cuda_available=False,
                                  device_count=0, devices=[], device="cpu", python="3.11.2",
                                  environment={"MA_JOB_DIR": "/home/ma-user/modelarts/user-job-dir"})
    values.update(overrides)
    return parsed(**values)


def test_a_matching_cpu_result_passes() -> None:
    outcomes = check_against(cpu_result(), CPU_ENTRY, Device.CPU)
    assert not failed(outcomes)
    assert [outcome.name for outcome in outcomes] == ["torch-version", "torch-build", "python-version", "ma-user",
                                                      "script:import-torch", "script:matmul"]


def test_a_cpu_entry_also_accepts_a_torch_without_local_tag() -> None:
    assert not failed(check_against(cpu_result(torch="2.13.0"), CPU_ENTRY, Device.CPU))


def test_a_cpu_entry_with_a_cuda_build_fails_the_build_check() -> None:
    outcomes = names(check_against(cpu_result(torch="2.13.0", torch_cuda="12.8"), CPU_ENTRY, Device.CPU))
    assert not outcomes["torch-build"].ok and "CUDA 12.8 build" in outcomes["torch-build"].detail


def test_a_mismatched_torch_fails_torch_version() -> None:
    outcomes = names(check_against(cpu_result(torch="2.12.0+cpu"), CPU_ENTRY, Device.CPU))
    assert not outcomes["torch-version"].ok
    assert outcomes["torch-version"].detail == "torch 2.12.0+cpu, expected 2.13.0"
    assert outcomes["torch-build"].ok


def test_a_matching_cuda_result_passes_on_gpu() -> None:
    outcomes = check_against(parsed(), entry(), Device.GPU)
    assert not failed(outcomes)
    assert names(outcomes)["cuda-available"].detail.startswith("1 CUDA device(s): NVIDIA A100")
    assert "+cu118 build, torch.version.cuda 11.8" in names(outcomes)["torch-build"].detail


@pytest.mark.parametrize(("torch", "torch_cuda", "expected"), [
    ("2.1.0", "12.1", "carries no +cu118 build tag"),  # the PyPI wheel: CUDA 12.1, no local tag
    ("2.1.0+cu121", "12.1", "is the +cu121 build, expected +cu118"),
    ("2.1.0+cu118", "12.1", "torch.version.cuda is 12.1, expected 11.8"),
    ("2.1.0+cpu", None, "torch.version.cuda is None (a CPU build)"),
])
def test_a_cuda_entry_needs_the_right_cuda_build(torch: str, torch_cuda: str | None, expected: str) -> None:
    outcomes = names(check_against(parsed(torch=torch, torch_cuda=torch_cuda), entry(), Device.CPU))
    assert not outcomes["torch-build"].ok and expected in outcomes["torch-build"].detail
    assert outcomes["torch-version"].ok


def test_cuda_minor_versions_compare_by_major_minor() -> None:
    outcomes = names(check_against(parsed(torch="1.8.1+cu102", torch_cuda="10.2.89"),
                                   entry(torch="1.8.1", cuda="10.2"), Device.CPU))
    assert outcomes["torch-build"].ok


def test_a_wrong_python_fails_python_version() -> None:
    outcomes = names(check_against(cpu_result(python="3.10.12"), CPU_ENTRY, Device.CPU))
    assert not outcomes["python-version"].ok
    assert outcomes["python-version"].detail == "Python 3.10.12, expected 3.11"


def test_gpu_mode_without_cuda_fails_cuda_available() -> None:
    result = parsed(cuda_available=False, device_count=0, devices=[], device=None)
    outcomes = names(check_against(result, entry(), Device.GPU))
    assert not outcomes["cuda-available"].ok
    assert "CUDA is not available in the container" in outcomes["cuda-available"].detail
    assert "cuda-available" not in names(check_against(result, entry(), Device.CPU))


def test_torch_missing_fails_both_torch_checks_and_the_script_check() -> None:
    result = parsed(ok=False, torch=None, torch_cuda=None,
                    checks=[{"name": "import-torch", "ok": False, "detail": "No module named 'torch'"}])
    assert failed(check_against(result, entry(), Device.CPU)) == {"torch-version", "torch-build",
                                                                  "script:import-torch"}


def test_running_as_another_user_fails_ma_user() -> None:
    outcomes = names(check_against(cpu_result(uid=0, gid=0, user="root"), CPU_ENTRY, Device.CPU))
    assert not outcomes["ma-user"].ok and "ran as 0:0 (root)" in outcomes["ma-user"].detail


def test_failures_become_one_verify_error_naming_each_check() -> None:
    outcomes = check_against(cpu_result(torch="2.12.0+cpu", python="3.10.1"), CPU_ENTRY, Device.CPU)
    warning = CheckOutcome(name="conda-channel", ok=False, warning=True, detail="defaults")
    pairs = [("cpu", outcome) for outcome in outcomes] + [("conformance", warning)]
    message = failure_message("pytorch-2.13.0-cpu (img)", pairs)
    assert message is not None
    assert message.splitlines()[0] == ("pytorch-2.13.0-cpu (img) failed verification (2 check(s): "
                                       "cpu/torch-version, cpu/python-version):")
    assert "  cpu/torch-version: torch 2.12.0+cpu, expected 2.13.0" in message
    assert "conda-channel" not in message  # a warning does not fail
    assert failure_message("x", [("conformance", warning)]) is None  # nothing blocking: no failure
    # a report holding the same outcomes: its failure() is that message, raise_for_reports raises it (exit 5)
    failing = report_with(outcomes, checks=(warning,))
    assert failing.failure() == message and not failing.ok
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([failing])
    assert str(raised.value) == message and raised.value.exit_code == 5
    warned = report_with((), checks=(warning,))
    assert warned.ok and warned.failure() is None
    raise_for_reports([warned])  # nothing blocking: no error


def test_raise_for_reports_names_every_failed_image() -> None:
    bad = CheckOutcome(name="torch-version", ok=False, detail="torch 2.12.0+cpu, expected 2.13.0")
    good = CheckOutcome(name="python-version", ok=True, detail="Python 3.11.2")
    first, second = report_with((bad,)), report_with((bad,), reference="other")
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([first, report_with((good,)), second])
    assert str(raised.value) == f"{first.failure()}\n{second.failure()}"
    raise_for_reports([report_with((good,))])


def report_with(outcomes: Sequence[CheckOutcome], *, checks: Sequence[CheckOutcome] = (),
                reference: str = "img") -> ImageReport:
    """A report of one CPU run with these outcomes (and these conformance checks)."""
    run = DeviceRun(device=Device.CPU, command=run_spec(reference, device=Device.CPU).command, exit_code=0,
                    timed_out=False, seconds=1.0, result=None, outcomes=tuple(outcomes), output_tail=())
    return ImageReport(id=CPU_ENTRY.id, reference=reference, expected=Expected.of(CPU_ENTRY), image_id="sha256:abc",
                       size=3_000_000_000, runs=(run,), skipped=(), conformance=tuple(checks))


# --------------------------------------------------------------------------------------------------------------
# verify_image with a fake engine


GOOD_PROBE: dict[str, Any] = {
    "python": "3.11.2", "user": {"name": "ma-user", "uid": 1000, "gid": 100, "home": "/home/ma-user",
                                 "shell": "/bin/bash", "home_exists": True, "home_owner": 1000},
    "uid_owner": "ma-user", "group": "users", "credential_files": [], "conda_packages": None, "errors": [],
    "setuid_files": ["/usr/bin/passwd", "/usr/bin/su"],
}
# Not the defaults: each container the verification starts must get the options' timeout
OPTIONS = VerifyOptions(reports_dir=Path("reports-not-written") / "verify", timeout=123.0)


def output(stdout: str = "", *, exit_code: int | None = 0, stderr: str = "",
           timed_out: bool = False) -> ContainerOutput:
    return ContainerOutput(name="c", exit_code=exit_code, stdout=stdout, stderr=stderr, seconds=1.0,
                           timed_out=timed_out)


class CannedEngine(FakeEngine):
    """Answers each kind of container from canned output; records what it was asked to run and which image
    configs it was asked for. Anything else (a build, a push, gpu_support) fails the test."""

    def __init__(self, *, verification: ContainerOutput | Exception, images: tuple[str, ...] = ("img", "base"),
                 user: str = "ma-user") -> None:
        self.verification = verification
        self.images = images
        self.user = user
        self.runs: list[ContainerRun] = []
        self.configs_asked: list[str] = []

    def run(self, spec: ContainerRun) -> ContainerOutput:
        self.runs.append(spec)
        if spec.command[:2] == (contract.DEFAULT_USER.boot_python, "-I"):
            return output(conformance.FACTS_PREFIX + json.dumps(GOOD_PROBE))
        if spec.command == conformance.SETUID_COMMAND:
            return output("/usr/bin/su\n/usr/bin/passwd\n")
        if isinstance(self.verification, Exception):
            raise self.verification
        return self.verification

    def image(self, reference: str) -> ImageConfig | None:
        self.configs_asked.append(reference)
        if reference not in self.images:
            return None
        return image_config(reference, user=self.user)


def good_cpu_run() -> ContainerOutput:
    return output(log_with(result_dict(torch="2.13.0+cpu", torch_cuda=None, python="3.11.2", device="cpu",
                                       cuda_available=False)))


def test_verify_image_with_a_good_run_passes_and_reports(tmp_path: Path) -> None:
    engine = CannedEngine(verification=good_cpu_run())
    report = verify_image(engine, CPU_ENTRY, options=OPTIONS, reference="img", devices=(Device.CPU,),
                          skipped=("GPU: skipped, no GPU runtime (none)",))
    assert report.ok, format_report(report)
    assert report.failure() is None
    raise_for_reports([report])
    assert engine.runs[0] == run_spec("img", device=Device.CPU, timeout=OPTIONS.timeout)
    assert {spec.timeout for spec in engine.runs} == {OPTIONS.timeout}  # the probes' containers too
    # the image's config is read once, by the verifier; the conformance checks only ask for the base's
    assert engine.configs_asked == ["img", "base"]
    assert {outcome.name for outcome in report.conformance} >= {"ma-user", "boot-python", "setuid-setgid"}
    path = save_report(report, tmp_path)
    assert path == tmp_path / "pytorch-2.13.0-cpu.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == report.to_json()
    assert saved["ok"] is True and saved["id"] == "pytorch-2.13.0-cpu" and saved["size"] == 3_000_000_000
    assert saved["skipped"] == ["GPU: skipped, no GPU runtime (none)"]
    assert saved["runs"][0]["result"]["torch"] == "2.13.0+cpu"
    assert saved["runs"][0]["command"] == list(run_spec("img", device=Device.CPU).command)
    text = format_report(report)
    assert "GPU: skipped, no GPU runtime (none)" in text and "[pass] torch-version" in text


def test_the_size_budget_of_the_options_is_the_one_checked() -> None:
    engine = CannedEngine(verification=good_cpu_run())
    options = VerifyOptions(reports_dir=OPTIONS.reports_dir, size_budget=2_000_000_000)
    report = verify_image(engine, CPU_ENTRY, options=options, reference="img")
    size = names(list(report.conformance))["image-size"]
    assert size.blocking and size.detail == "3.00 GB uncompressed, over the --size-budget of 2.00 GB"


def test_verify_image_of_a_missing_image_is_an_error() -> None:
    engine = CannedEngine(verification=output())
    with pytest.raises(VerifyError, match="not in the engine"):
        verify_image(engine, CPU_ENTRY, options=OPTIONS, reference="nope")
    assert engine.runs == []


def test_a_timed_out_run_fails_with_its_output() -> None:
    engine = CannedEngine(verification=output("tensor([[1.]])\n", exit_code=None, timed_out=True))
    report = verify_image(engine, CPU_ENTRY, options=OPTIONS, reference="img", check_conformance=False)
    outcomes = names(list(report.runs[0].outcomes))
    assert "timed out after 1 s" in outcomes["run"].detail
    assert not outcomes["result-line"].ok
    with pytest.raises(VerifyError, match="cpu/run"):
        raise_for_reports([report])
    assert "| tensor([[1.]])" in format_report(report)


def test_a_run_that_cannot_start_is_a_failed_check_not_a_crash() -> None:
    # the engine says a container cannot start with an EngineError (it was a VerifyError before the engine
    # became its own layer); the verifier records it as the run's failed check
    engine = CannedEngine(verification=EngineError("a GPU was asked for, but this Docker Engine has no GPU runtime"))
    report = verify_image(engine, entry(), options=OPTIONS, reference="img", devices=(Device.CPU, Device.GPU),
                          check_conformance=False)
    assert [run.device for run in report.runs] == [Device.CPU, Device.GPU]
    assert all(run.exit_code is None and run.result is None for run in report.runs)
    with pytest.raises(VerifyError) as raised:
        raise_for_reports([report])
    assert "gpu/run: a GPU was asked for" in str(raised.value)


def test_a_verify_error_of_the_engine_is_not_taken_for_a_failed_start() -> None:
    # only EngineError means "the container did not start": anything else is not swallowed into the report
    engine = CannedEngine(verification=VerifyError("not the engine's kind of failure"))
    with pytest.raises(VerifyError, match="not the engine's kind of failure"):
        verify_image(engine, entry(), options=OPTIONS, reference="img", check_conformance=False)


def test_a_boot_command_that_cannot_start_fails_boot_python_and_the_probes_still_run(tmp_path: Path) -> None:
    refused = EngineError("container for img did not start: OCI runtime create failed: unable to find user 1000")
    engine = CannedEngine(verification=refused)
    report = verify_image(engine, CPU_ENTRY, options=OPTIONS, reference="img", devices=(Device.CPU,))
    checks = names(list(report.conformance))
    assert checks["boot-python"].blocking
    assert checks["boot-python"].detail == (
        "/home/ma-user/miniconda3/bin/python gave no result as the boot command: cpu: container for img did not "
        "start: OCI runtime create failed: unable to find user 1000")
    assert {"ma-user", "default-user", "setuid-setgid", "credentials", "image-size"} <= set(checks)
    assert all(checks[name].ok for name in ("ma-user", "setuid-setgid"))  # the other probes still ran
    saved = json.loads(save_report(report, tmp_path).read_text(encoding="utf-8"))  # the report can be written
    assert saved["ok"] is False and saved["id"] == CPU_ENTRY.id
    with pytest.raises(VerifyError, match="conformance/boot-python: /home/ma-user/miniconda3/bin/python gave no"):
        raise_for_reports([report])


def test_the_script_exit_status_is_checked_too() -> None:
    engine = CannedEngine(verification=output(log_with(result_dict()), exit_code=1))
    report = verify_image(engine, entry(), options=OPTIONS, reference="img", devices=(Device.GPU,),
                          check_conformance=False)
    assert failed(list(report.runs[0].outcomes)) == {"exit-status"}


# --------------------------------------------------------------------------------------------------------------
# The report as JSON and back


def test_a_report_comes_back_from_its_json() -> None:
    engine = CannedEngine(verification=good_cpu_run())
    report = verify_image(engine, CPU_ENTRY, options=OPTIONS, reference="img", devices=(Device.CPU,),
                          skipped=("GPU: skipped, no GPU runtime (none)",))
    assert report.runs[0].result is not None and report.conformance  # a result and every kind of check in it
    assert {outcome.status for outcome in report.conformance} == {CheckStatus.PASS, CheckStatus.SKIP}
    assert ImageReport.from_json(report.to_json()) == report
    assert ImageReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_a_failed_report_comes_back_from_its_json() -> None:
    # a run without a result, one that timed out, a warning and a failure among the conformance checks
    timed_out = DeviceRun(device=Device.GPU, command=run_spec("img", device=Device.GPU).command, exit_code=None,
                          timed_out=True, seconds=600.25, result=None,
                          outcomes=(CheckOutcome(name="run", ok=False, detail="timed out after 600 s"),),
                          output_tail=("tensor([[1.]])", "Killed"))
    checks = (CheckOutcome(name="conda-channel", ok=False, warning=True, detail="defaults"),
              CheckOutcome(name="credentials", ok=False, detail="/root/.netrc (netrc)"),
              CheckOutcome(name="conda", ok=True, skipped=True, detail="no conda metadata"))
    report = report_with((CheckOutcome(name="result-line", ok=False, detail="no line"),), checks=checks)
    report = dataclasses.replace(report, runs=(*report.runs, timed_out), skipped=("GPU: skipped, no GPU runtime",))
    data = json.loads(json.dumps(report.to_json()))
    assert [check["status"] for check in data["conformance"]] == ["warn", "FAIL", "skip"]
    back = ImageReport.from_json(data)
    assert back == report
    assert back.failure() == report.failure() is not None


# --------------------------------------------------------------------------------------------------------------
# Conformance over canned facts


def facts(**overrides: Any) -> conformance.ImageFacts:
    probe = dict(GOOD_PROBE)
    probe.update(overrides.pop("probe", {}))
    values: dict[str, Any] = dict(
        reference="img", config_user="ma-user", working_dir="/home/ma-user", size=3_000_000_000,
        probe=conformance.parse_probe(conformance.FACTS_PREFIX + json.dumps(probe)), probe_error=None,
        setuid_files=("/usr/bin/passwd", "/usr/bin/su"), setuid_error=None, base_image="ubuntu:22.04",
        base_setuid_files=("/usr/bin/passwd", "/usr/bin/su", "/usr/bin/chsh"), base_error=None,
    )
    values.update(overrides)
    return conformance.ImageFacts(**values)


GOOD_BOOT = conformance.judge_boot(parse_result(log_with(result_dict())))


def evaluated(**overrides: Any) -> dict[str, CheckOutcome]:
    return names(conformance.evaluate(facts(**overrides), boot=GOOD_BOOT))


def test_a_conforming_image_passes_every_rule() -> None:
    outcomes = conformance.evaluate(facts(), boot=GOOD_BOOT)
    assert [outcome.name for outcome in outcomes] == ["ma-user", "boot-python", "default-user", "setuid-setgid",
                                                      "credentials", "image-size", "conda-channel"]
    assert all(outcome.ok for outcome in outcomes)
    conda = names(outcomes)["conda-channel"]
    assert conda.skipped and conda.status is CheckStatus.SKIP and "no conda metadata" in conda.detail


@pytest.mark.parametrize(("user", "expected"), [
    (None, "no user ma-user"),
    ({"uid": 1001}, "uid 1001, not 1000"),
    ({"gid": 1000}, "gid 1000, not 100"),
    ({"home": "/home/work"}, "home /home/work, not /home/ma-user"),
    ({"home_exists": False, "home_owner": None}, "home /home/ma-user does not exist"),
    ({"home_owner": 0}, "owned by uid 0, not 1000"),
])
def test_the_ma_user_rule(user: dict[str, Any] | None, expected: str) -> None:
    probe_user = None if user is None else {**GOOD_PROBE["user"], **user}
    outcome = evaluated(probe={"user": probe_user})["ma-user"]
    assert not outcome.ok and expected in outcome.detail


def test_uid_1000_must_be_ma_user() -> None:
    outcome = evaluated(probe={"uid_owner": "ubuntu"})["ma-user"]
    assert not outcome.ok and "uid 1000 resolves to 'ubuntu' first" in outcome.detail


@pytest.mark.parametrize("user", ["", "root", "0", "0:0", "root:root"])
def test_an_image_running_as_root_fails(user: str) -> None:
    outcome = evaluated(config_user=user)["default-user"]
    assert not outcome.ok and "runs as root by default" in outcome.detail


@pytest.mark.parametrize("user", ["ma-user", "1000", "1000:100", "ma-user:users"])
def test_a_non_root_default_user_passes(user: str) -> None:
    assert evaluated(config_user=user)["default-user"].ok


def test_a_setuid_file_beyond_the_base_fails() -> None:
    outcome = evaluated(setuid_files=("/usr/bin/passwd", "/usr/local/bin/escalate"))["setuid-setgid"]
    assert not outcome.ok and outcome.detail.endswith("not in the base image ubuntu:22.04: /usr/local/bin/escalate")


def test_without_the_base_image_setuid_files_only_warn() -> None:
    outcome = evaluated(base_setuid_files=None, base_error="ubuntu:22.04 is not in the engine")["setuid-setgid"]
    assert not outcome.ok and outcome.warning and not outcome.blocking and outcome.status is CheckStatus.WARN
    assert "/usr/bin/passwd" in outcome.detail


def test_setuid_files_that_could_not_be_listed_fail() -> None:
    outcome = evaluated(setuid_files=None, setuid_error="find exited with 127")["setuid-setgid"]
    assert outcome.blocking and "find exited with 127" in outcome.detail


def credential(path: str, kind: str, *, password: bool = False, url: bool = False) -> dict[str, Any]:
    return {"path": path, "kind": kind, "has_password": password, "has_url_credentials": url}


@pytest.mark.parametrize(("files", "expected"), [
    ([credential("/home/ma-user/.netrc", "netrc")], "/home/ma-user/.netrc (netrc)"),
    ([credential("/root/.docker/config.json", "docker-config")], "/root/.docker/config.json (docker-config)"),
    ([credential("/root/.git-credentials", "git-credentials")], "(git-credentials)"),
    ([credential("/etc/pip.conf", "pip-config", password=True)], "/etc/pip.conf (pip-config with a password)"),
    ([credential("/home/ma-user/.pip/pip.ini", "pip-config", url=True)],
     "/home/ma-user/.pip/pip.ini (pip-config with a URL with user:password@)"),
    ([credential("/root/.pypirc", "pypirc", password=True)], "/root/.pypirc (pypirc with a password)"),
])
def test_credential_files_fail(files: list[dict[str, Any]], expected: str) -> None:
    outcome = evaluated(probe={"credential_files": files})["credentials"]
    assert not outcome.ok and expected in outcome.detail


def test_a_pip_conf_without_secrets_passes() -> None:
    outcome = evaluated(probe={"credential_files": [credential("/etc/pip.conf", "pip-config")]})["credentials"]
    assert outcome.ok and "/etc/pip.conf" in outcome.detail


def test_the_size_budget_warns_unless_the_user_sets_one() -> None:
    assert evaluated()["image-size"].ok
    assert contract.IMAGE_SIZE_BUDGET == 9_500_000_000
    outcome = names(conformance.evaluate(facts(size=12_000_000_000), boot=GOOD_BOOT))["image-size"]
    # only ModelArts' legacy pages state 9.5 GB: over it is a warning, which does not fail the image
    assert not outcome.ok and outcome.warning and not outcome.blocking
    assert outcome.detail.startswith("12.00 GB uncompressed, over the default budget of 9.50 GB (the 9.5 GB limit "
                                     "of ModelArts' legacy custom-image pages")
    chosen = names(conformance.evaluate(facts(size=12_000_000_000), boot=GOOD_BOOT,
                                        size_budget=10_000_000_000))["image-size"]
    assert chosen.blocking and chosen.detail == "12.00 GB uncompressed, over the --size-budget of 10.00 GB"
    assert names(conformance.evaluate(facts(size=12_000_000_000), boot=GOOD_BOOT,
                                      size_budget=20_000_000_000))["image-size"].ok


def package(name: str, channel: str) -> dict[str, str]:
    return {"name": name, "version": "1", "channel": channel}


def test_packages_from_the_defaults_channel_only_warn() -> None:
    packages = [package("python", "https://repo.anaconda.com/pkgs/main/linux-64"),
                package("openssl", "pkgs/main/linux-64"), package("numpy", "https://conda.anaconda.org/conda-forge")]
    outcomes = conformance.evaluate(facts(probe={"conda_packages": packages}), boot=GOOD_BOOT)
    conda = names(outcomes)["conda-channel"]
    assert not conda.ok and conda.warning and not conda.blocking
    assert "2 of 3 conda packages" in conda.detail and "python, openssl" in conda.detail
    assert "Miniforge" in conda.detail
    assert failure_message("x", [("conformance", outcome) for outcome in outcomes]) is None


def test_conda_forge_only_passes() -> None:
    conda = evaluated(probe={"conda_packages": [package("python", "https://conda.anaconda.org/conda-forge/linux-64"),
                                                package("pip", "conda-forge")]})["conda-channel"]
    assert conda.ok and not conda.skipped and "none from Anaconda's `defaults`" in conda.detail


@pytest.mark.parametrize(("channel", "paid"), [
    ("defaults", True), ("pkgs/main", True), ("pkgs/r/linux-64", True), ("https://repo.anaconda.com/pkgs/main", True),
    ("http://repo.continuum.io/pkgs/free/linux-64", True), ("https://conda.anaconda.org/anaconda/linux-64", True),
    ("conda-forge", False), ("https://conda.anaconda.org/conda-forge/noarch", False), ("pytorch", False),
    ("https://mirrors.example.com/anaconda/cloud/conda-forge", False), ("", False),
])
def test_is_defaults_channel(channel: str, paid: bool) -> None:
    assert conformance.is_defaults_channel(channel) is paid


def test_a_probe_that_did_not_run_fails_its_rules() -> None:
    outcomes = names(conformance.evaluate(
        dataclasses.replace(facts(), probe=None, probe_error="conformance probe: no line"), boot=GOOD_BOOT))
    assert outcomes["ma-user"].blocking and outcomes["credentials"].blocking
    assert "the probe did not run: conformance probe: no line" in outcomes["ma-user"].detail
    assert "conda-channel" not in outcomes


def test_every_rule_is_registered_once_and_reported_in_its_order() -> None:
    assert list(conformance.RULES) == list(conformance.Rule)
    every = list(conformance.Rule.names())
    assert [outcome.name for outcome in conformance.evaluate(facts(), boot=GOOD_BOOT, npu=True)] == every
    ascend = [str(rule) for rule in conformance.ASCEND_RULES]
    assert [outcome.name for outcome in conformance.evaluate(facts(), boot=GOOD_BOOT)] == [
        name for name in every if name not in ascend]
    with pytest.raises(ValueError, match="conformance rule image-size is registered twice"):
        conformance.rule(conformance.Rule.IMAGE_SIZE)(conformance.check_size)
    assert conformance.RULES[conformance.Rule.IMAGE_SIZE].judge is conformance.check_size


def test_parse_probe_rejects_garbage() -> None:
    with pytest.raises(VerifyError, match="MODELARTS_CONFORMANCE_FACTS"):
        conformance.parse_probe("Traceback ...\n")
    with pytest.raises(VerifyError, match="unexpected facts"):
        conformance.parse_probe(conformance.FACTS_PREFIX + json.dumps({"user": {"name": "x"}}))


@pytest.mark.parametrize(("boot", "expected"), [
    ({"prefix": "/usr"}, "sys.prefix is '/usr', not /home/ma-user/miniconda3"),
    ({"modules": {"ssl": "ImportError: libssl.so.1.1: cannot open shared object file"}}, "cannot import ssl"),
    ({"uid": 0, "gid": 0}, "ran as 0:0, not 1000:100"),
    ({"modules": {}}, "the script reported no standard modules"),
])
def test_judge_boot_problems(boot: dict[str, Any], expected: str) -> None:
    got = conformance.judge_boot(parse_result(log_with(result_dict(**boot))))
    assert not got.ok and expected in got.detail


def test_judge_boot_without_a_result() -> None:
    got = conformance.judge_boot(None, why="cpu: exit status 127; exec: /home/ma-user/miniconda3/bin/python: no such "
                                           "file")
    assert not got.ok and "gave no result as the boot command: cpu: exit status 127" in got.detail
    good = conformance.judge_boot(parse_result(log_with(result_dict(activated=["VIRTUAL_ENV"], ok=False))))
    # a failed torch check is the runs' business: python itself started as the boot command should
    assert good.ok and "VIRTUAL_ENV set by the image" in good.detail


def test_parse_find() -> None:
    assert conformance.parse_find(output("/usr/bin/su\n/usr/bin/passwd\n")) == ("/usr/bin/passwd", "/usr/bin/su")
    assert conformance.parse_find(output("/usr/bin/su\n", exit_code=1)) == ("/usr/bin/su",)
    with pytest.raises(VerifyError, match="find exited with 127"):
        conformance.parse_find(output("", exit_code=127, stderr="find: not found"))
