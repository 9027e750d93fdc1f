"""Hostile records and outputs: JSON nested past Python's recursion limit (the matrix's state and reports, a
registry's replies), YAML nested just short of libyaml's own limit, a -f file's bad value, an SWR AK quoted by a
failing engine login, and the matrix's output going nowhere. Each is one clear message (or a warning where the
file is only a memory), never a traceback."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import pytest
import requests

from modelarts_images.engine import publishing
from modelarts_images.engine.api import RegistryAuth, RegistryLogin
from modelarts_images.errors import ConfigError, EngineError, RegistryError
from modelarts_images.http import registry
from modelarts_images.matrix import report
from modelarts_images.matrix.cells import CellStatus
from modelarts_images.matrix.state import STATE_FILE, State
from modelarts_images.publish import publisher, swr
from modelarts_images.shared import retry
from tests.conftest import ROOT
from tests.support.fake_engine import FakeEngine
from tests.support.matrix_harness import spec
from tests.unit.test_hostile_input import run_inv

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError, not ValueError
SWR_HOST = "swr.cn-north-4.myhuaweicloud.com"
AK, SK = "HPUAEXAMPLEKEY0000001", "example-secret-key-1234567890"


# --------------------------------------------------------------------------------------------------------------
# The matrix's own files


def test_a_deeply_nested_state_file_is_ignored_with_a_warning(harness: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    harness.reports.mkdir(parents=True, exist_ok=True)
    (harness.reports / STATE_FILE).write_text(DEEP_JSON)
    records = harness.run([spec("a")])
    assert [r.status for r in records] == [CellStatus.PASSED] and harness.calls == ["a"]
    assert "matrix state" in caplog.text and "every cell runs" in caplog.text
    assert State(harness.reports).read().keys() == {"a"}  # rewritten whole


def test_a_state_file_that_is_a_directory_warns_once_and_the_run_goes_on(
        harness: Any, caplog: pytest.LogCaptureFixture) -> None:
    (harness.reports / STATE_FILE).mkdir(parents=True)
    records = harness.run([spec("a"), spec("b")])
    assert [r.status for r in records] == [CellStatus.PASSED] * 2 and harness.calls == ["a", "b"]
    written = [r.getMessage() for r in caplog.records if "cannot write the matrix state" in r.getMessage()]
    assert len(written) == 1 and "the matrix goes on" in written[0], caplog.text
    assert all(r.levelno == logging.WARNING for r in caplog.records if "matrix state" in r.getMessage())


def test_a_deeply_nested_cell_record_is_left_out_of_the_report(tmp_path: Path) -> None:
    (tmp_path / report.CELLS_DIR).mkdir()
    (tmp_path / report.CELLS_DIR / "a.json").write_text(DEEP_JSON)
    assert report.read_cells(tmp_path, ["a"]) == [] and report.read_cells(tmp_path) == []


def test_a_deeply_nested_record_for_the_merge_is_named(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(DEEP_JSON)
    with pytest.raises(ConfigError, match=r"--records: .*deep.json is not a matrix cell record") as caught:
        report.merge(tmp_path / "merged", [tmp_path / "deep.json"], ["a"])
    assert caught.value.exit_code == 2


def test_a_deeply_nested_matrix_report_is_named_by_the_summary(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / report.JSON_NAME).write_text(DEEP_JSON)
    assert report.print_summary(tmp_path) == 1
    assert capsys.readouterr().out.startswith(f"the matrix report {tmp_path / report.JSON_NAME} cannot be read (")


# --------------------------------------------------------------------------------------------------------------
# A registry's replies


def _response(status: int, body: str, headers: Mapping[str, str] | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code, answer.reason, answer._content = status, "answer", body.encode()
    answer._content_consumed = True  # type: ignore[attr-defined]  # read already, as requests leaves one it read
    answer.headers.update(headers or {})
    return answer


class Replies(requests.Session):
    """A registry that answers each path with a canned response (no socket)."""

    def __init__(self, answers: Mapping[str, requests.Response]) -> None:
        super().__init__()
        self.answers = answers

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        path = str(url).split("://", 1)[1].split("/", 1)[1]
        return self.answers[path.split("?")[0]]


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="https://auth.example/token",service="test"'}


@pytest.mark.parametrize(("answers", "message"), [
    ({"v2/o/r/manifests/t": _response(401, "", CHALLENGE), "token": _response(200, DEEP_JSON)},
     "the token service https://auth.example/token answered without a token"),
    ({"v2/o/r/manifests/t": _response(200, DEEP_JSON)}, "o/r:t: the manifest is not JSON"),
    ({"v2/o/r/manifests/t": _response(403, DEEP_JSON)}, "denied anonymous reading o/r:t (HTTP 403)"),
])
def test_deeply_nested_registry_replies_are_registry_errors(answers: Mapping[str, requests.Response],
                                                            message: str) -> None:
    with registry.Registry("registry.example", None, session=Replies(answers), retries=0) as api, \
            pytest.raises(RegistryError, match=re.escape(message)):
        api.manifest("o/r", "t")


def test_a_deeply_nested_image_config_is_a_registry_error() -> None:
    config = "sha256:" + hashlib.sha256(DEEP_JSON.encode()).hexdigest()
    manifest = registry.Manifest(digest="sha256:m", media_type=registry.DOCKER_MANIFEST, size=1,
                                 config_digest=config, content_size=1)
    answers = {f"v2/o/r/blobs/{config}": _response(200, DEEP_JSON)}
    with registry.Registry("registry.example", None, session=Replies(answers), retries=0) as api, \
            pytest.raises(RegistryError, match=f"the image config {config} is not an image config"):
        api.image_labels("o/r", manifest)


# --------------------------------------------------------------------------------------------------------------
# The AK of SWR's long-term login, quoted by a failing login


class QuotingClient:
    """The docker SDK's client where the engine's login fails and its error quotes the user name."""

    def __init__(self, explanation: str) -> None:
        self.explanation = explanation
        self.attempts = 0

    def login(self, username: str, password: str, **_: Any) -> Any:
        self.attempts += 1
        raise docker.errors.APIError("engine error", explanation=self.explanation.format(user=username))


@pytest.mark.parametrize(("explanation", "attempts", "quoted"), [
    ("500 Internal Server Error: registry busy (as {user})", 3, True),  # retried, then EngineError
    ("unauthorized: user {user} is not allowed", 1, True),  # refused: RegistryRefusedError
    # A connection failure is said in the tool's own words (http/failures.py), which quote no user at all.
    ("Get https://swr.example/v2/: dial tcp 192.0.2.1:443: i/o timeout (as {user})", 3, False),
])
def test_the_engine_login_never_shows_the_ak(explanation: str, attempts: int, quoted: bool,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = QuotingClient(explanation)
    credentials = RegistryLogin(registry=SWR_HOST, username=f"cn-north-4@{AK}", password="pw-1234567890")
    with pytest.raises(EngineError) as caught:
        publishing.login(cast(docker.DockerClient, client), credentials, backoff=retry.Backoff(retries=2, base=0))
    shown = caplog.text + str(caught.value) + str(getattr(caught.value, "detail", ""))
    assert AK not in shown and "pw-1234567890" not in shown
    assert client.attempts == attempts
    if quoted:
        assert "cn-north-4@HPUA…" in str(caught.value)
        assert caplog.text.count("cn-north-4@HPUA…") == attempts - 1  # each retry's warning
    else:
        assert "no connection to 192.0.2.1:443 (" in str(caught.value) and "cn-north-4@" not in shown


class FailingLogin(FakeEngine):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def login(self, login: RegistryLogin) -> RegistryAuth:
        raise self.error


@pytest.mark.parametrize("error", [
    EngineError(f"login to {SWR_HOST} failed after 3 attempt(s): EOF talking as cn-north-4@{AK}"),
    EngineError(f"the engine refused the login of cn-north-4@{AK}"),
])
def test_the_publisher_never_shows_the_ak_of_a_failed_login(error: Exception,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    with pytest.raises(EngineError) as caught:
        publisher.login(SWR_HOST, engine=FailingLogin(error), env=env)
    shown = caplog.text + str(caught.value)
    assert AK not in shown and swr.login_key(AK, SK) not in shown
    assert "cn-north-4@HPUA…" in str(caught.value)


# --------------------------------------------------------------------------------------------------------------
# invoke config files nested deeply, and a -f file's bad value


def _deep_yaml(depth: int) -> str:
    return "modelarts: {}\nother: " + "{a: " * depth + "1" + "}" * depth + "\n"


def test_a_config_file_nested_short_of_libyamls_limit_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text(_deep_yaml(700))
    result = run_inv("-f", str(config), "plan")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {config}: nested too deeply (more than 64 levels)"


def test_aliases_cannot_nest_a_config_file_deeper() -> None:
    from modelarts_images.shared import yamlio

    level = "[" * 40 + "]" * 40
    text = f"a: &a {level}\nb: &b [*a]\nc: [*b, [[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    with pytest.raises(ConfigError, match=r"^f.yaml: nested too deeply \(more than 64 levels\)$"):
        yamlio.parse(text, label="f.yaml")
    assert yamlio.parse(f"a: {level}\n", label="f.yaml") is not None  # 41 levels: fine


def test_a_bad_value_in_a_runtime_file_names_that_file(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("modelarts:\n  jobs: many\n")
    result = run_inv("-f", str(config), "plan")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {config}: modelarts.jobs: must be a whole number of at least 1 " \
                                    "(got 'many')"


def test_the_matrix_config_file_names_its_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelarts_images.matrix import cli

    config = tmp_path / "site.yaml"
    config.write_text("modelarts:\n  mirrors: [a]\n")
    assert cli.main(["--config", str(config), "--summary"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --config {config}: modelarts.mirrors: must map URL prefixes")


# --------------------------------------------------------------------------------------------------------------
# The matrix's output going nowhere: the exit codes of the tasks


def _matrix(*args: str, stdout: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelarts_images.matrix", *args], cwd=ROOT, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, check=False, timeout=60)


def test_matrix_output_to_a_full_device_is_one_message_and_exit_74() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with Path("/dev/full").open("w") as full:
        result = _matrix("--list-json", stdout=full)
    assert (result.returncode, result.stderr.strip()) == (74, "error: cannot write the output: No space left on "
                                                              "device")


def test_matrix_output_to_a_closed_pipe_stops_quietly_with_141() -> None:
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the matrix writes: as `| head -c0`, without the race
    try:
        result = _matrix("--list-json", stdout=writer)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (141, "")


def test_matrix_output_into_head_stops_quietly() -> None:
    result = subprocess.run(f"{sys.executable} -m modelarts_images.matrix --list-json | head -c0; "
                            "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode in (0, 141) and "Traceback" not in result.stderr, result.stderr
