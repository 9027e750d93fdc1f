"""Messages about hostile values: a value is masked before it is quoted, whichever check refuses it, and every
refusal says where the value came from (the file and key path, the flag, or the environment variable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelarts_images import options
from modelarts_images.config import settings, versions
from modelarts_images.errors import ConfigError
from modelarts_images.shared import redact
from tests.conftest import ROOT

ENTRY: dict[str, Any] = {
    "id": "cell", "python": "3.11", "cuda": "cpu", "torch": "2.13.0", "registry": "localhost:5999",
    "organization": "tests", "repository": "x", "base_image": "debian:bookworm",
    "installer": {"url": "https://h.example/a.sh"},
}
TOKEN = "s3cr3t-t0ken-value"
PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
       "-----END OPENSSH PRIVATE KEY-----\n")


def refused(tmp_path: Path, entry: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    path = tmp_path / "versions.yaml"
    path.write_text(yaml.safe_dump({**({"defaults": defaults} if defaults else {}), "images": [{**ENTRY, **entry}]}))
    with pytest.raises(ConfigError) as caught:
        versions.load_versions(path)
    return str(caught.value)


# --------------------------------------------------------------------------------------------------------------
# Masked before quoted, whichever check fails


@pytest.mark.parametrize(("entry", "where", "secret"), [
    ({"env": {"DEPLOY_KEY": PEM}}, "images[0].env.DEPLOY_KEY: the value must be one line", "b3BlbnNzaC1rZXkt"),
    ({"env": {"SSH": PEM}}, "images[0].env.SSH: '***\\n' must be one line", "b3BlbnNzaC1rZXkt"),
    ({"env": {"DB_PASSWORD": "hunter2hunter2\n"}}, "images[0].env.DB_PASSWORD: the value must be one line",
     "hunter2hunter2"),
    ({"env": {"HUB": "hf_" + "a" * 34 + "\n"}}, "images[0].env.HUB: '***\\n' must be one line", "a" * 34),
    ({"pip_index": f"https://robot:{TOKEN}@pypi.example/simple\n"},
     "images[0].pip_index: 'https://robot:***@pypi.example/simple\\n' must be one line", TOKEN),
    ({"pip_index": f" https://{TOKEN}@pypi.example/simple"}, "images[0].pip_index: ' https://***@pypi.example", TOKEN),
    ({"mirrors": {"https://download.pytorch.org/whl/": f"https://m:{TOKEN}@mirror.example/\n"}},
     "must be one line", TOKEN),
    ({"apt_mirror": f"http://u:{TOKEN}@apt.example\t"}, "images[0].apt_mirror: 'http://u:***@apt.example\\t'", TOKEN),
])
def test_a_secret_in_an_untidy_value_is_masked(tmp_path: Path, entry: dict[str, Any], where: str,
                                               secret: str) -> None:
    message = refused(tmp_path, entry)
    assert where in message and secret not in message


def test_a_secret_in_a_mirrors_key_is_masked_too(tmp_path: Path) -> None:
    message = refused(tmp_path, {"mirrors": {f"https://u:{TOKEN}@a.example/\n": "https://b.example/"}})
    assert TOKEN not in message and "https://u:***@a.example" in message


def test_a_secret_in_a_value_the_schema_refuses_is_masked(tmp_path: Path) -> None:
    message = refused(tmp_path, {"pip_index": f"ftp://u:{TOKEN}@pypi.example/simple",
                                 "env": {"A": ["ghp_" + "c" * 36]}, "tag": "sk-" + "d" * 30 + "!"})
    assert TOKEN not in message and "c" * 36 not in message and "d" * 30 not in message


@pytest.mark.parametrize("value", [f"https://u:{TOKEN}@pypi.example/simple\n", f"https://{TOKEN}@x.example/ "])
def test_invoke_yaml_and_its_variables_mask_an_untidy_secret(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve({"pip_index": value}, root=tmp_path, env={})
    assert TOKEN not in str(caught.value) and "invoke.yaml: modelarts.pip_index: " in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        settings.resolve({"pip_index": value}, root=tmp_path, env={"INVOKE_MODELARTS_PIP_INDEX": value})
    assert TOKEN not in str(caught.value) and "INVOKE_MODELARTS_PIP_INDEX (environment): " in str(caught.value)


def test_a_wrong_type_in_invoke_yaml_is_quoted_masked_and_short(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve({"cache_dir": [f"https://u:{TOKEN}@x.example/" + "y" * 500]}, root=tmp_path, env={})
    message = str(caught.value)
    assert message.startswith("invoke.yaml: modelarts.cache_dir: must be a string (got ['https://u:***@x.example/")
    assert TOKEN not in message and "y" * 100 not in message


def test_excerpt_masks_every_shape_it_knows() -> None:
    shown = redact.excerpt(f"HW_SECRET_KEY={TOKEN} password: {TOKEN}2 \"token\": \"{TOKEN}3\" AKIA" + "A" * 16)
    assert TOKEN not in shown and "AKIAAAAA" not in shown
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nafter"
    assert redact.excerpt(pem) == "'***\\nafter'"
    assert redact.excerpt("x" * 100, limit=10) == "'xxxxxxxxxx…'"
    assert redact.excerpt("torch==2.1") == "'torch==2.1'"  # nothing secret: shown as it is


# --------------------------------------------------------------------------------------------------------------
# Where a value came from


def run_inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.mark.parametrize(("how", "source"), [
    (("--extra-tag", "{sha}"), "--extra-tag: extra tag '{sha}': unknown placeholder {sha}"),
    (("--extra-tag", "latest", "--extra-tag", "a/{tag}"), "--extra-tag: extra tag 'a/{tag}': must be 1-128 "),
    (("--extra-tag", "{date:%Y}"), "--extra-tag: extra tag '{date:%Y}': {date:%Y} has a format spec"),
])
def test_a_bad_extra_tag_flag_is_a_config_error_before_the_engine(how: tuple[str, ...], source: str) -> None:
    result = run_inv("push", *how, env=NO_ENGINE)
    assert result.returncode == 2, result.stderr
    assert f"error: {source}" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_extra_tag_from_the_environment_names_the_variable() -> None:
    result = run_inv("push", env={**NO_ENGINE, "INVOKE_MODELARTS_EXTRA_TAGS": "ok,{tag!r}"})
    assert result.returncode == 2, result.stderr
    assert "error: INVOKE_MODELARTS_EXTRA_TAGS (environment): extra tag '{tag!r}': {tag!r} has a format spec" \
        in result.stderr


def test_a_bad_extra_tag_in_invoke_yaml_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "invoke.yaml"
    config.write_text("modelarts:\n  extra_tags: ['{tag}-{date}', '.hidden']\n")
    result = run_inv("-f", str(config), "push", env=NO_ENGINE)
    assert result.returncode == 2, result.stderr
    assert "error: invoke.yaml: modelarts.extra_tags: extra tag '.hidden': must be 1-128" in result.stderr


def test_good_extra_tags_still_pass_the_settings() -> None:
    resolved = options.resolve({"extra_tags": ["{tag}-{date}", "{revision}", "latest"]})
    assert resolved.push.extra_tags == ("{tag}-{date}", "{revision}", "latest")


@pytest.mark.parametrize("shard", ["", " ", "1", "0/2", "3/2", "a/b", "1/2/3"])
def test_a_shard_that_is_not_k_of_n_is_refused(shard: str) -> None:
    result = subprocess.run([sys.executable, "-m", "modelarts_images.matrix", f"--shard={shard}", "--list-json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout
    assert "--shard: " in result.stderr and "must be K/N with 1 <= K <= N" in result.stderr
    assert result.stdout == ""
