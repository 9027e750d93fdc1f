"""The package's shape: the edges are the only modules that reach the outside, and imports form no cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "modelarts_images"
# Who may import what reaches outside the process: the Docker edge, the HTTP edge, the Huawei Cloud edge (its
# SDKs), and the front ends.
ALLOWED = {
    "docker": ("modelarts_images.engine.",),
    "requests": ("modelarts_images.engine.", "modelarts_images.http."),  # docker-py raises requests' errors
    "urllib3": ("modelarts_images.http.",),
    "subprocess": ("modelarts_images.engine.", "modelarts_images.http."),
    "http": ("modelarts_images.engine.served",),  # the classic builder's file server: the one listening socket
    "invoke": ("modelarts_images.frontend",),
    "huaweicloudsdkcore": ("modelarts_images.cloud.sdk",),
    "huaweicloudsdkmodelarts": ("modelarts_images.cloud.sdk",),
    "obs": ("modelarts_images.cloud.sdk",),
}
STAGES = ("config", "fetch", "build", "verify", "publish", "platform")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool) -> Iterator[str]:
    """Every module a file imports; with top_level_only, those imported when the module itself is imported."""
    tree = ast.parse(path.read_text("utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "modelarts_images" or node.module.startswith("modelarts_images."):
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_edges_reach_the_outside(module: str) -> None:
    for imported in imports(MODULES[module], top_level_only=False):
        root = imported.split(".")[0]
        if root in ALLOWED:
            assert module.startswith(ALLOWED[root]), f"{module} imports {imported}; only {ALLOWED[root]} may"


def test_stages_do_not_import_the_front_ends_or_each_others_steps() -> None:
    for module, path in MODULES.items():
        if not module.startswith(tuple(f"modelarts_images.{stage}." for stage in STAGES)):
            continue
        for imported in imports(path, top_level_only=False):
            assert not imported.startswith(("modelarts_images.frontend", "modelarts_images.matrix",
                                            "modelarts_images.pipeline")), f"{module} imports {imported}"


# The front ends' modules that run the pipeline: they name its steps and call pipeline.execute(), and reach the
# stages through nothing else (matrix/cells.py and report.py hold and render the records the steps give).
RUNNERS = (ROOT / "tasks.py", PACKAGE / "matrix" / "cli.py", PACKAGE / "matrix" / "runner.py")


@pytest.mark.parametrize("path", RUNNERS, ids=lambda path: path.name)
def test_the_front_ends_import_no_stage_module(path: Path) -> None:
    stages = tuple(f"modelarts_images.{stage}" for stage in STAGES)
    for imported in imports(path, top_level_only=False):
        assert not imported.startswith(stages), f"{path.relative_to(ROOT)} imports {imported}: run it as a step"


def test_the_edges_import_no_stage_but_the_configuration() -> None:
    """http/, engine/ and cloud/ serve the stages: they may read the configuration (wheel names, the stack's
    rules), never a stage's own work, or the stages would form a cycle through them."""
    for module, path in MODULES.items():
        if not module.startswith(("modelarts_images.http.", "modelarts_images.engine.", "modelarts_images.cloud.")):
            continue
        for imported in imports(path, top_level_only=False):
            for stage in STAGES[1:]:
                assert not imported.startswith(f"modelarts_images.{stage}"), f"{module} imports {imported}"


def test_imports_form_no_cycle() -> None:
    graph = {module: {name for name in imports(path, top_level_only=True) if name in MODULES and name != module}
             for module, path in MODULES.items()}
    assert "modelarts_images.build.builder" in graph["modelarts_images.pipeline"]  # the graph is the real one
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_python_kept_in_strings() -> None:
    """Programs that run inside an image live in verify/ as files, linted like any other code."""
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count("\n") > 3:
                text = node.value
                assert not ("import " in text and ("print(" in text or "sys." in text)), \
                    f"{module}:{node.lineno} holds a program in a string"
