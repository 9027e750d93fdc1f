"""invoke.yaml's section and flags: precedence and checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelarts_images.config import settings
from modelarts_images.errors import ConfigError


def test_builtins_without_a_section(tmp_path: Path) -> None:
    resolved = settings.resolve(None, root=tmp_path)
    assert resolved.selection == settings.Selection(versions=tmp_path / "versions.yaml", only=(), all_images=False)
    assert resolved.cache_dir == tmp_path / "cache"
    assert resolved.backend == "buildkit"
    assert resolved.fallbacks == {}


def test_invoke_yaml_beats_builtins_and_flags_beat_invoke_yaml(tmp_path: Path) -> None:
    section = {"versions": "other.yaml", "only": "a,b", "cache_dir": "/var/cache/x", "backend": "docker",
               "organization": "team"}
    configured = settings.resolve(section, root=tmp_path)
    assert configured.selection.versions == tmp_path / "other.yaml"
    assert configured.selection.only == ("a", "b")
    assert configured.cache_dir == Path("/var/cache/x")
    assert configured.backend == "docker"
    assert configured.fallbacks == {"organization": "team"}
    flagged = settings.resolve(section, root=tmp_path, versions="mine.yaml", only=["c"])
    assert flagged.selection.versions == Path("mine.yaml").resolve()
    assert flagged.selection.only == ("c",)
    everything = settings.resolve({**section, "all": "1"}, root=tmp_path, all_images=True)
    assert everything.selection.only == ()
    assert everything.selection.all_images


def test_all_from_the_environment_is_a_string(tmp_path: Path) -> None:
    assert settings.resolve({"all": "true"}, root=tmp_path).selection.all_images
    assert not settings.resolve({"all": "0"}, root=tmp_path).selection.all_images


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
