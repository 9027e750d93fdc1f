"""invoke.yaml's section and flags: precedence and checks, merged once into the run's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelarts_images.config import settings
from modelarts_images.engine.api import Backend
from modelarts_images.errors import ConfigError
from modelarts_images.options import DeviceChoice, Flags, Selection, resolve


def test_builtins_without_a_section(tmp_path: Path) -> None:
    resolved = resolve(None, root=tmp_path)
    assert resolved.selection == Selection(versions=tmp_path / "versions.yaml", only=(), all_images=False)
    assert resolved.fetch.cache_dir == tmp_path / "cache"
    assert resolved.fetch.lock_path == tmp_path / "versions.lock"
    assert resolved.build.backend is Backend.BUILDKIT
    assert resolved.build.base_prefix is None  # not "": no `or None` anywhere downstream
    assert resolved.verify.device is DeviceChoice.AUTO
    assert resolved.verify.reports_dir == tmp_path / "reports" / "verify"
    assert resolved.fallbacks == {}


def test_invoke_yaml_beats_builtins_and_flags_beat_invoke_yaml(tmp_path: Path) -> None:
    section = {"versions": "other.yaml", "only": "a,b", "cache_dir": "/var/cache/x", "backend": "docker",
               "organization": "team", "base_prefix": "mirror.example.com/library/", "jobs": "2",
               "extra_tags": "{tag}-{date}"}
    configured = resolve(section, root=tmp_path)
    assert configured.selection.versions == tmp_path / "other.yaml"
    assert configured.fetch.lock_path == tmp_path / "other.lock"
    assert configured.selection.only == ("a", "b")
    assert configured.fetch.cache_dir == Path("/var/cache/x")
    assert configured.fetch.jobs == 2
    assert configured.build.backend is Backend.DOCKER
    assert configured.build.base_prefix == "mirror.example.com/library/"
    assert configured.push.extra_tags == ("{tag}-{date}",)
    assert configured.push.project is None  # the region's own project
    assert resolve({**section, "swr_project": "cn-north-4_team"}, root=tmp_path).push.project == "cn-north-4_team"
    assert resolve({**section, "swr_project": "cn-north-4_team"}, Flags(project="cn-north-4_ml"),
                   root=tmp_path).push.project == "cn-north-4_ml"
    assert configured.fallbacks == {"organization": "team"}
    flagged = resolve(section, Flags(versions="mine.yaml", only=["c"], backend="buildkit", base_prefix="",
                                     jobs="8", extra_tags=["{revision}"], replace_tags=True), root=tmp_path)
    assert flagged.selection.versions == Path("mine.yaml").resolve()
    assert flagged.selection.only == ("c",)
    assert flagged.build.backend is Backend.BUILDKIT
    assert flagged.build.base_prefix is None  # an empty flag turns the configured prefix off
    assert flagged.fetch.jobs == 8
    assert flagged.push.extra_tags == ("{revision}",) and flagged.push.replace_tags
    everything = resolve({**section, "all": "1"}, Flags(all_images=True), root=tmp_path)
    assert everything.selection.only == ()
    assert everything.selection.all_images


def test_all_from_the_environment_is_a_string(tmp_path: Path) -> None:
    assert resolve({"all": "true"}, root=tmp_path).selection.all_images
    assert not resolve({"all": "0"}, root=tmp_path).selection.all_images


@pytest.mark.parametrize(("flags", "message"), [
    (Flags(jobs="two"), "--jobs: 'two' is not a whole number"),
    (Flags(timeout="0"), "--timeout: must be above 0, got 0"),
    (Flags(size_budget="nan"), "--size-budget: must be above 0, got nan"),
    (Flags(device="gpus"), "--device: 'gpus' is not one of cpu, gpu, npu, both, auto; did you mean 'gpu'?"),
    (Flags(backend="buildkitt"), "--backend: must be one of docker, buildkit; did you mean 'buildkit'?"),
])
def test_bad_flags_name_the_flag(tmp_path: Path, flags: Flags, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(None, flags, root=tmp_path)
    assert str(caught.value) == message


def test_numbers_and_paths_from_flags(tmp_path: Path) -> None:
    resolved = resolve(None, Flags(timeout="2.5", size_budget="1.5", verify_reports="out", reports_dir="pushes"),
                       root=tmp_path)
    assert resolved.verify.timeout == 2.5 and resolved.verify.size_budget == 1_500_000_000
    assert resolved.verify.reports_dir == tmp_path / "out"
    assert resolved.push.reports_dir == tmp_path / "pushes"


def test_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invoke.yaml: modelarts.registy: unknown key; did you mean 'registry'\?$"):
        settings.resolve({"registy": "x"}, root=tmp_path)


def test_bad_organization(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invoke.yaml: modelarts.organization: must be 1-64 characters"):
        settings.resolve({"organization": "Team"}, root=tmp_path)


def test_bad_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invoke.yaml: modelarts.backend: must be one of docker, buildkit; "
                                          r"did you mean 'buildkit'\?$"):
        settings.resolve({"backend": "buildkitt"}, root=tmp_path)


@pytest.mark.parametrize(("section", "message"), [
    ({"only": 5}, "invoke.yaml: modelarts.only: must be a list of strings or one comma-separated string (got 5)"),
    ({"extra_tags": [1]}, "invoke.yaml: modelarts.extra_tags: must be a list of strings"),
    ({"cache_dir": {"a": 1}}, "invoke.yaml: modelarts.cache_dir: must be a string (got {'a': 1})"),
    ({"versions": ["a.yaml"]}, "invoke.yaml: modelarts.versions: must be a string"),
])
def test_wrong_types_are_named(tmp_path: Path, section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.resolve(section, root=tmp_path)
    assert str(caught.value).startswith(message)


def test_list_keys_take_a_comma_separated_string(tmp_path: Path) -> None:
    resolved = settings.resolve({"extra_tags": "{tag}-{date}, {revision}"}, root=tmp_path)
    assert resolved.extra_tags == ("{tag}-{date}", "{revision}")
