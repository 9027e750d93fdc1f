"""The documentation: the generated reference pages are current, and README.md stays short with working links."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200

# [text](target) and [text]: target, outside code; the target up to a space, a quote or the closing bracket.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`+[^`]*`+")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
PAGES = cast("dict[str, Callable[[], str]]", GENERATOR.PAGES)


def relative_links(markdown: str) -> list[str]:
    """The link targets of markdown that name a file of this project: no URL scheme, no `#anchor` alone."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [target for target in targets
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("#")]


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_generated_page_is_what_the_generator_gives_now(name: str) -> None:
    committed = DOCS / name
    assert committed.is_file(), f"docs/{name} is missing: run `nox -s docs`"
    assert committed.read_text(encoding="utf-8") == PAGES[name](), (
        f"docs/{name} differs from what docs/gen_reference.py gives now: run `nox -s docs`")


def test_the_settings_page_lists_every_shown_setting_once_with_its_front_ends_own_help() -> None:
    from modelarts_images import declared

    page = PAGES["reference/settings.md"]()
    for setting in declared.SETTINGS:
        headings = [line for line in page.splitlines() if line == f"### `{setting.name}`"]
        assert len(headings) == (0 if setting.hidden else 1), setting.name
    assert "&lt;project&gt;@&lt;AK&gt;" in page and "<project>" not in page  # prose outside code is not HTML
    assert "- on the matrix: the old name of --rerun" in page and "- on `inv build`: print each selected" in page
    assert "- set by: `inv lock`, never by a user" in page
    assert ("```yaml\ncpu: ubuntu-latest\ncuda12: [self-hosted, linux, gpu]\nnpu: [self-hosted, arm64, ascend]\n```"
            in page)


def test_every_generated_page_is_in_the_site_navigation() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in PAGES:
        assert f": {name}\n" in mkdocs, f"{name} is not in mkdocs.yml's nav"


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the detail into docs/")


def test_every_relative_link_of_the_readme_names_a_file() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "README.md links into docs/"
    missing = [link for link in links if not (ROOT / link.split("#", 1)[0]).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_the_readme_keeps_the_quick_start_and_the_test_command() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "\nnox -s tests " in readme
    assert "inv fetch build verify" in readme
    assert "MODELARTS_IMAGES_REQUIRE_ENGINE=1" in readme


def test_the_link_finder_sees_relative_links_and_leaves_the_rest() -> None:
    markdown = (
        "[a](docs/a.md) [b](docs/b.md#part) ![c](img/c.png) [d](https://example.invalid/d) [e](#e)\n"
        "`[f](not/a/link.md)`\n"
        "```\n[g](in/a/fence.md)\n```\n"
        "[h]: docs/h.md\n"
    )
    assert relative_links(markdown) == ["docs/a.md", "docs/b.md#part", "img/c.png", "docs/h.md"]


def test_the_exit_code_page_names_every_code() -> None:
    page = PAGES["reference/exit-codes.md"]()
    for code in ("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |", "| 74 |", "| 141 |"):
        assert code in page, code
    assert "`MatrixError`" in page


def test_the_versions_page_names_nested_keys_as_paths() -> None:
    page = PAGES["reference/versions-yaml.md"]()
    for path in ("images[].id", "images[].wheels[].sha256", "images[].installer.url", "defaults.user.uid"):
        assert f"## `{path}`" in page, path
