"""Files that versions.yaml names (`requirements:`, `checks:`) are hostile input: a pull request can point them
anywhere. Each must be a regular file inside the versions file's folder (links followed and checked), of bounded
size, read without blocking; a refusal names the file and the key and quotes at most a short, masked excerpt."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images.config import versions
from modelarts_images.contract import RunUser
from modelarts_images.errors import ConfigError
from modelarts_images.model import ImageSpec, VersionsFile
from modelarts_images.shared import yamlio
from modelarts_images.verify.stack import check_run
from tests.conftest import ROOT

ENTRY: dict[str, Any] = {
    "id": "cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "registry": "localhost:5999",
    "organization": "tests", "repository": "x", "base_image": "debian:bookworm",
    "installer": {"url": "https://h.example/a.sh"},
}
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def versions_in(folder: Path, entry: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "versions.yaml"
    path.write_text(yaml.safe_dump({"images": [{**ENTRY, **entry}]}))
    return path


def within(seconds: float, call: Callable[[], object]) -> object:
    """The call's result or exception, failing the test (instead of hanging the suite) when it blocks."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # handed to the test, whatever it is
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s: a read blocked"
    return outcome[0]


def refusal(path: Path) -> str:
    caught = within(20, lambda: versions.load_versions(path))
    assert isinstance(caught, ConfigError), caught
    return str(caught)


def loaded(path: Path) -> ImageSpec:
    result = within(20, lambda: versions.load_versions(path))
    assert isinstance(result, VersionsFile), result
    return result.images[0]


# --------------------------------------------------------------------------------------------------------------
# Where a named file may be


@pytest.mark.parametrize("name", ["/etc/shadow", "/proc/self/environ", "/etc/passwd"])
def test_an_absolute_requirements_file_is_refused_unread(tmp_path: Path, name: str) -> None:
    message = refusal(versions_in(tmp_path, {"requirements": name}))
    assert f"versions.yaml: images[0].requirements: {name}: a requirements file is named relative to the " \
           f"versions file's folder ({tmp_path.resolve()}), not absolutely" in message
    assert "root:" not in message and "PATH=" not in message and "HOME=" not in message


def test_a_sibling_folders_env_file_is_outside(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".env").write_text(f"HW_SECRET_KEY={SECRET}\n")
    message = refusal(versions_in(tmp_path / "project", {"requirements": "../other/.env"}))
    assert "images[0].requirements: ../other/.env: resolves to" in message
    assert "outside the versions file's folder" in message and SECRET not in message


def test_a_link_inside_the_folder_is_followed_and_its_target_checked(tmp_path: Path) -> None:
    outside = tmp_path / "home" / ".docker"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text('{"auths": {"swr": {"auth": "' + SECRET + '"}}}\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").symlink_to(outside / "config.json")
    (project / "check.py").symlink_to(outside / "config.json")
    message = refusal(versions_in(project, {"requirements": "requirements.txt", "checks": ["check.py"]}))
    assert f"images[0].requirements: requirements.txt: resolves to {outside / 'config.json'}, outside" in message
    assert "images[0].checks[0]: check.py: resolves to" in message
    assert SECRET not in message


def test_a_link_that_stays_inside_the_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "common.txt").write_text("six==1.17.0\n")
    (tmp_path / "requirements.txt").symlink_to("stacks/common.txt")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "real.py").write_text("print('ok')\n")
    (tmp_path / "check.py").symlink_to(tmp_path / "checks" / "real.py")
    image = loaded(versions_in(tmp_path, {"requirements": "requirements.txt", "checks": ["check.py",
                                                                                        "stacks/../checks/real.py"]}))
    assert [requirement.text for requirement in image.stack.requirements] == ["six==1.17.0"]
    assert image.stack.checks == (tmp_path.resolve() / "checks" / "real.py",)  # one file, named twice


@pytest.mark.parametrize("name", ["../outside.py", "/tmp/x.py", "sub/../../outside.py"])
def test_a_check_outside_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.py").write_text("print('x')\n")
    (tmp_path / "project" / "sub").mkdir(parents=True)
    message = refusal(versions_in(tmp_path / "project", {"checks": [name]}))
    assert f"images[0].checks[0]: {name}: " in message
    assert "outside the versions file's folder" in message or "not absolutely" in message


def test_a_link_loop_is_refused_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "a.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    message = refusal(versions_in(tmp_path, {"requirements": "a.txt"}))
    assert "images[0].requirements: a.txt: " in message


# --------------------------------------------------------------------------------------------------------------
# What a named file may be


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "requirements.txt")
    os.mkfifo(tmp_path / "check.py")
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt", "checks": ["check.py"]}))
    assert "images[0].requirements: requirements.txt: is a FIFO; a requirements file must be a regular file" \
        in message
    assert "images[0].checks[0]: check.py: is a FIFO; a check script must be a regular file" in message


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "reqs").mkdir()
    (tmp_path / "check.py").mkdir()
    message = refusal(versions_in(tmp_path, {"requirements": "reqs", "checks": ["check.py"]}))
    assert "reqs: is a directory" in message and "check.py: is a directory" in message


def test_a_huge_file_is_refused_from_its_size_unread(tmp_path: Path) -> None:
    with (tmp_path / "requirements.txt").open("wb") as sparse:
        sparse.truncate(50 * 1024 * 1024 * 1024)  # 50 GiB of holes: reading it would take minutes and the memory
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt"}))
    assert "requirements.txt: is 53.7 GB; a requirements file may be at most 1.0 MB" in message


def test_a_file_of_nul_bytes_is_not_quoted(tmp_path: Path) -> None:
    environ = f"PATH=/usr/bin\0HW_ACCESS_KEY=AKIDEXAMPLE\0HW_SECRET_KEY={SECRET}\0".encode()
    (tmp_path / "requirements.txt").write_bytes(environ)
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt"}))
    assert "requirements.txt: holds NUL bytes, so it is not a requirements file" in message
    assert SECRET not in message and "AKIDEXAMPLE" not in message


def test_a_binary_file_is_not_quoted(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_bytes(b"six\n\xff\xfe" + SECRET.encode())
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt"}))
    assert "requirements.txt: not a text file (byte 4 is not UTF-8)" in message and SECRET not in message


# --------------------------------------------------------------------------------------------------------------
# What a refusal quotes


def test_a_secrets_file_inside_the_folder_is_refused_with_its_values_masked(tmp_path: Path) -> None:
    lines = [f"HW_SECRET_KEY={SECRET}", "DB_PASSWORD=hunter2hunter2", "api_key: sk-" + "a" * 30,
             "token = ghp_" + "b" * 36, "REGISTRY=https://robot:" + SECRET + "@swr.example/v2/"]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    message = refusal(versions_in(tmp_path, {"requirements": ".env"}))
    for secret in (SECRET, "hunter2hunter2", "a" * 30, "b" * 36):
        assert secret not in message
    quoted = [line for line in message.splitlines() if "(.env line" in line]
    assert len(quoted) == 3  # then only counted
    assert quoted[0].startswith("versions.yaml: images[0].requirements (.env line 1): 'HW_SECRET_KEY=***' is not")
    assert "images[0].requirements: .env: 2 more lines are not requirements; is it a pip requirements file?" \
        in message


def test_a_shadow_line_is_masked(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(
        "root:$6$rounds=5000$saltsalt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5:19000:0:99999:7:::\n")
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt"}))
    assert "(requirements.txt line 1): 'root:***:19000:0:99999:7:::' is not a pip requirement" in message
    assert "saltsalt" not in message


def test_a_long_line_is_quoted_as_a_short_excerpt(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six==1.0 " + "x" * 5000 + "\n")
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt"}))
    line = next(line for line in message.splitlines() if "requirements.txt line 1" in line)
    assert "'six==1.0 " + "x" * 51 + "…'" in line and "x" * 52 not in line


def test_packagings_caret_diagram_is_not_printed(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch>=1.0,<<2\n")
    message = refusal(versions_in(tmp_path, {"requirements": "requirements.txt", "packages": ["six=>1"]}))
    assert all(line.startswith("versions.yaml: ") for line in message.splitlines()), message
    assert "'torch>=1.0,<<2' is not a pip requirement (PEP 508): Expected" in message
    assert "~" not in message and "^" not in message


# --------------------------------------------------------------------------------------------------------------
# Where a check reaches the container


def test_a_check_is_mounted_alone_not_with_its_folder(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    script = tmp_path / "checks" / "smoke.py"
    script.write_text("print('ok')\n")
    (tmp_path / "checks" / ".env").write_text(f"HW_SECRET_KEY={SECRET}\n")
    user = RunUser(name="ma-user", uid=1000, gid=100)
    run = check_run("img:1", user, script, timeout=10)
    assert [(mount.source, mount.target, mount.read_only) for mount in run.mounts] == [
        (str(script), f"{user.code_dir}/smoke.py", True)]
    assert run.command[-1] == f"{user.code_dir}/smoke.py"



# --------------------------------------------------------------------------------------------------------------
# The YAML files themselves


@pytest.mark.parametrize("make", ["fifo", "zero", "huge"])
def test_a_versions_file_or_lock_that_is_not_a_bounded_regular_file_is_refused_unread(tmp_path: Path,
                                                                                       make: str) -> None:
    for name in ("versions.yaml", "versions.lock"):
        path = tmp_path / make / name
        path.parent.mkdir(exist_ok=True)
        if make == "fifo":
            os.mkfifo(path)
        elif make == "zero":
            path.symlink_to("/dev/zero")
        else:
            with path.open("wb") as sparse:
                sparse.truncate(yamlio.MAX_BYTES + 1)
        caught = within(20, lambda: yamlio.read(path))  # noqa: B023 - called before the loop goes on
        assert isinstance(caught, ConfigError), caught
        assert str(path) in str(caught)
        assert {"fifo": "is a named pipe (FIFO)", "zero": "(a link to /dev/zero) is a device",
                "huge": f"has {yamlio.MAX_BYTES + 1} bytes, more than"}[make] in str(caught)


def test_an_invoke_config_file_that_is_a_fifo_exits_2(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "invoke-extra.yaml")
    result = subprocess.run([sys.executable, "-m", "invoke", "-f", str(tmp_path / "invoke-extra.yaml"), "plan"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "is a named pipe (FIFO), not a regular file" in result.stderr and "Traceback" not in result.stderr
