"""Every YAML the tool reads (versions.yaml, versions.lock, invoke config files, its own tables), read one way:
bounded, and with every way it can fail turned into a ConfigError that names the file.

libyaml parses when PyYAML has it (the pure-Python parser costs a tenth of a second per run); a loader of one's
own (versions.yaml's, which refuses duplicate keys) can be passed instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from modelarts_images.errors import ConfigError
from modelarts_images.shared import files, redact

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Nodes a document may hold once its aliases are expanded. Aliases let a few lines stand for billions of nodes
# ("billion laughs"), which anything that walks the document (a schema check, invoke's config merge) would then
# visit one by one; real files here hold a few thousand.
MAX_NODES = 1_000_000
# Collections nested in one another, aliases expanded. libyaml refuses only 1000 levels, but invoke's config merge
# (and any other recursive walk) exhausts Python's stack well before that; real files here nest a few levels.
MAX_DEPTH = 64
# Bytes a YAML file may have: a versions.lock of thousands of wheels is a few megabytes.
MAX_BYTES = 64 * 1024 * 1024


def safe_load(text: str) -> Any:
    """A document from text the tool ships itself (its compatibility table)."""
    return yaml.load(text, Loader=SafeLoader)


def read(path: Path, *, loader: type[yaml.SafeLoader] = SafeLoader, label: str | None = None) -> Any:
    """The document in a YAML file; ConfigError naming the file (`label`, default its name) when it cannot be read
    or parsed."""
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such file")
    # A file a pull request can change may be a link to /dev/zero or to a huge file; the path may be a FIFO.
    data = files.read_bounded(path, limit=MAX_BYTES, what="YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return parse(text, label=label or path.name, loader=loader)


def parse(text: str, *, label: str, loader: type[yaml.SafeLoader] = SafeLoader) -> Any:
    """The document in `text`, or ConfigError starting with `label`: not YAML, a value no Python type can hold
    (a date out of range, a key that is a list, an integer beyond Python's digit limit), or nested too deeply
    (MAX_DEPTH) or too large (MAX_NODES) once its aliases are expanded."""
    try:
        reader = loader(text)
        try:
            node = reader.get_single_node()
            if node is None:
                return None
            size, depth = _expanded_shape(node)
            if size > MAX_NODES:
                raise ConfigError(f"{label}: holds more than {MAX_NODES:,} values once its YAML aliases are "
                                  "expanded; write the values out instead of nesting aliases")
            if depth > MAX_DEPTH:
                raise ConfigError(_too_deep(label))
            try:
                return reader.construct_document(node)
            except (ValueError, TypeError, OverflowError) as error:  # raised by PyYAML's constructors
                raise ConfigError(_unreadable(label, reader, node, error)) from None
        finally:
            reader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{label}: {where}not valid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{label}: not valid YAML: {error}") from None
    except RecursionError:  # PyYAML's pure-Python composer recurses before the depth can be checked
        raise ConfigError(_too_deep(label)) from None


def _too_deep(label: str) -> str:
    return f"{label}: nested too deeply (more than {MAX_DEPTH} levels)"


def _expanded_shape(root: yaml.Node) -> tuple[int, int]:
    """How many nodes the document has with every alias expanded, and how deeply its collections nest then,
    counted without expanding them: each node is visited once, its size and depth remembered (aliases make the
    graph a DAG; a recursive alias counts as too large)."""
    too_large = (MAX_NODES + 1, 0)
    shapes: dict[int, tuple[int, int]] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative: a deeply nested document must not exhaust Python's stack here
        node, children_done = stack.pop()
        key = id(node)
        if key in shapes:
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            below = [shapes[id(child)] for child in children]
            level = 0 if isinstance(node, yaml.ScalarNode) else 1  # a collection is a level; a scalar is none
            shapes[key] = (min(1 + sum(size for size, _ in below), MAX_NODES + 1),
                           level + max((depth for _, depth in below), default=0))
            continue
        if key in in_progress:  # a node that contains itself
            return too_large
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                return too_large
            if id(child) not in shapes:
                stack.append((child, False))
    return shapes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def key_path(parts: Iterable[str | int]) -> str:
    """('images', 2, 'installer', 'sha256') -> 'images[2].installer.sha256'."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _unreadable(label: str, reader: yaml.SafeLoader, root: yaml.Node, error: Exception) -> str:
    """Which value no Python type can hold, where it is (line, column, key path) and what to do: YAML reads
    `2024-02-30` as a date and a long run of digits as an integer, so either is text only when quoted."""
    reader.constructed_objects, reader.recursive_objects = {}, {}  # what the failed construction left behind
    for path, node in _scalars(root):
        try:
            reader.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError) as failed:
            error = failed
        else:
            continue
        mark = node.start_mark
        reason = str(error)
        if "integer string conversion" in reason:
            reason = f"an integer of {len(node.value):,} digits is more than a value here can hold"
        elif node.tag == "tag:yaml.org,2002:timestamp":
            reason = f"YAML reads it as a date, and there is no such date ({reason})"
        return (f"{label}: line {mark.line + 1}, column {mark.column + 1} ({key_path(path) or 'the document'}): "
                f"{redact.excerpt(node.value)} cannot be read: {reason}; quote it if it is text")
    return f"{label}: a value cannot be read: {redact.text(str(error))}"


def _scalars(root: yaml.Node) -> Iterator[tuple[tuple[str | int, ...], yaml.ScalarNode]]:
    """Every scalar node (keys included) with the key path to it, in document order; each node once."""
    seen: set[int] = set()
    stack: list[tuple[tuple[str | int, ...], yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            yield path, node
        elif isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack += [((*path, name), value), ((*path, name), key)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [((*path, index), item) for index, item in reversed(list(enumerate(node.value)))]
