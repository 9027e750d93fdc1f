"""Cell records from elsewhere: what CI jobs uploaded is checked like configuration before anything uses it.

A record must be a regular file named `<id>.json` after the cell it records, at most RECORD_LIMIT bytes, strict
JSON that matches RECORD_SCHEMA exactly; `read_record()` gives the record or every problem with it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from modelarts_images.config.versions import suggest
from modelarts_images.errors import ConfigError, ModelArtsImagesError
from modelarts_images.matrix.cells import CellRecord, CellStatus
from modelarts_images.options import Device
from modelarts_images.shared import redact
from modelarts_images.shared.files import read_bounded
from modelarts_images.shared.yamlio import key_path
from modelarts_images.verify.checks import CheckStatus

# The largest record a cell may leave. A real one is tens of KB: a few thousand manifest lines (pip, conda and
# dpkg, one package each), 40 lines of output per verification run, the checks; 1 MiB leaves room for a long
# failure reason and refuses a file that is not a record before it is read into memory.
RECORD_LIMIT = 1 << 20
# Containers nested deeper than this are refused before the schema sees them: the runner's records are 7 deep
# (record > verification > runs > run > result > checks > check).
MAX_DEPTH = 16


# Every key CellRecord.to_json() writes, with the type CellRecord.from_json() (and the verification report's
# from_json) reads it as. Unknown keys are refused: the merge runs the commit its cell jobs ran, so a key it does
# not know is a record of another version of the tool, or one edited by hand, whose meaning it cannot vouch for.
_TEXT: dict[str, Any] = {"type": "string"}
_TEXT_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_TEXTS: dict[str, Any] = {"type": "array", "items": _TEXT}
_TEXT_MAP: dict[str, Any] = {"type": "object", "additionalProperties": _TEXT}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}
# Bounds that keep every number to what float() and the report's formatting take without overflowing.
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}  # bytes, as a 64-bit size
_ID_NUMBER: dict[str, Any] = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**32 - 1}  # uid, gid
_EXIT_CODE: dict[str, Any] = {"type": ["integer", "null"], "minimum": -2**31, "maximum": 2**31 - 1}
_SECONDS: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1e9}  # about 30 years


def _object(required: Sequence[str], properties: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": dict(properties),
            "additionalProperties": False}


def _or_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    # required and properties apply to objects only: null passes them
    return {**schema, "type": [schema["type"], "null"]}


_CHECK = _object(("name", "ok"), {"name": _TEXT, "status": {"enum": list(CheckStatus.names())}, "ok": _BOOLEAN,
                                  "detail": _TEXT})
_RESULT = _object(("ok", "checks"), {
    "ok": _BOOLEAN, "python": _TEXT_OR_NULL, "python_executable": _TEXT_OR_NULL, "torch": _TEXT_OR_NULL,
    "torch_cuda": _TEXT_OR_NULL, "cudnn": _TEXT_OR_NULL, "cuda_available": _BOOLEAN,
    "device_count": {**_ID_NUMBER, "maximum": 2**16}, "devices": _TEXTS, "device": _TEXT_OR_NULL,
    "uid": _ID_NUMBER, "gid": _ID_NUMBER, "user": _TEXT_OR_NULL, "cwd": _TEXT_OR_NULL, "environment": _TEXT_MAP,
    "checks": {"type": "array", "items": _CHECK}, "seconds": _or_null(_SECONDS),
    "prefix": _TEXT_OR_NULL, "modules": _TEXT_MAP, "activated": _TEXTS, "platform": _TEXT_OR_NULL,
    "torch_npu": _TEXT_OR_NULL, "npu_available": _BOOLEAN, "npu_device_count": {**_ID_NUMBER, "maximum": 2**16},
    "npu_devices": _TEXTS})
_JOB = _object(("job_id", "name", "region", "flavor", "phase", "exit_code", "message", "queued_seconds",
                "run_seconds", "console_url", "log_bytes"), {
    "job_id": _TEXT, "name": _TEXT, "region": _TEXT, "flavor": _TEXT, "phase": _TEXT, "exit_code": _EXIT_CODE,
    "message": _TEXT, "queued_seconds": _SECONDS, "run_seconds": _SECONDS, "console_url": _TEXT,
    "log_bytes": _object(("read", "full"), {"read": _COUNT, "full": _COUNT})})
_RUN = _object(("device", "command", "exit_code", "timed_out", "seconds", "result", "checks", "output_tail"), {
    "device": {"enum": list(Device.names())}, "ok": _BOOLEAN, "command": _TEXTS, "exit_code": _EXIT_CODE,
    "timed_out": _BOOLEAN, "seconds": _SECONDS, "result": _or_null(_RESULT),
    "checks": {"type": "array", "items": _CHECK}, "output_tail": _TEXTS,
    "job": _or_null(_JOB),
    "worker": _object(("index", "nodes", "procs_per_node", "launcher"), {
        "index": {**_COUNT, "maximum": 2**16}, "nodes": {**_COUNT, "maximum": 2**16},
        "procs_per_node": {**_COUNT, "maximum": 2**16}, "launcher": _TEXT})})
_IMAGE_REPORT = _object(("id", "reference", "expected", "image_id", "size", "runs", "skipped", "conformance"), {
    "schema": {"type": "integer"}, "platform": _TEXT, "id": _TEXT, "reference": _TEXT, "image_id": _TEXT,
    "size": _COUNT, "ok": _BOOLEAN,
    "expected": _object(("python", "cuda", "variant", "packages"), {
        "python": _TEXT, "cuda": _TEXT, "variant": _TEXT, "packages": _TEXT_MAP,
        "user": _object(("name", "uid", "gid"), {"name": _TEXT, "uid": _ID_NUMBER, "gid": _ID_NUMBER})}),
    "boot_command": _TEXT, "runs": {"type": "array", "items": _RUN}, "skipped": _TEXTS,
    "distributed": {"type": "object", "propertyNames": {"enum": list(Device.names())},
                    "additionalProperties": _TEXT},
    "conformance": {"type": "array", "items": _CHECK}, "stack": {"type": "array", "items": _CHECK}})
RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "matrix cell record (reports/matrix/<id>.json)",
    **_object(("id", "reference", "status"), {
        "id": _TEXT, "reference": _TEXT, "status": {"enum": list(CellStatus.names())}, "reason": _TEXT,
        "hash": _TEXT, "inputs": _TEXT_MAP, "changed": _TEXTS,
        "durations": {"type": "object", "additionalProperties": _SECONDS}, "image_id": _TEXT,
        "size": _or_null(_COUNT),
        "layers": {"type": "array", "items": _object(("size", "step", "from_base"), {
            "size": _COUNT, "step": _TEXT, "from_base": _BOOLEAN, "diff_id": _TEXT})},
        "steps_ran": _TEXTS, "steps_cached": _TEXTS, "layers_pulled": _TEXTS,
        "python": _TEXT, "cuda": _TEXT, "torch": _TEXT,
        "verification": _or_null(_IMAGE_REPORT),
        "manifest": {"type": "object", "additionalProperties": _TEXTS},
        "digest": _TEXT_OR_NULL, "pushed": _TEXT_OR_NULL, "training_job": _TEXT_OR_NULL,
        "platform": _or_null(_IMAGE_REPORT), "staged": _TEXT_OR_NULL,
        "finished": _TEXT, "run": _TEXT}),
}


Problems = list[tuple[tuple[str | int, ...], str]]  # (key path, what is wrong)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(RECORD_SCHEMA)


class _NotANumber:
    """What the parser makes of a number Python would turn into something no record holds (NaN, Infinity,
    1e400, an integer of hundreds of digits): a value of no JSON type, which the schema refuses where it is."""

    def __init__(self, text: str) -> None:
        self.text = text


def _number(text: str) -> float | _NotANumber:
    value = float(text)
    return value if math.isfinite(value) else _NotANumber(text)


def _integer(text: str) -> int | _NotANumber:
    # before int(): Python refuses to convert more than 4300 digits, with a message about sys.set_int_max_str_digits
    return int(text) if len(text) <= 20 else _NotANumber(f"an integer of {len(text.lstrip('-'))} digits")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; ValueError on a key given twice (json.loads keeps the last, which another reader of the same
    file may not)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {_quote(key)} is given twice in one object")
        found[key] = value
    return found


def _quote(value: str) -> str:
    """A text from a record as a message quotes it: *** for one that looks like a secret or carries credentials
    (a record's own words, whoever wrote them), else redact.excerpt's short masked excerpt with its control
    characters escaped, so that a record cannot write lines of its own into the message."""
    if redact.has_token(value) or redact.has_credentials(value):
        return redact.MASK
    return redact.excerpt(value)


def _kind(value: object) -> str:
    if isinstance(value, _NotANumber):
        return value.text if value.text.startswith("an integer") else f"{value.text}, which is not a number JSON has"
    names = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "a list"),
             (dict, "a mapping"), (type(None), "null"))
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


def _shown_value(value: object) -> str:
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool | int | float):  # at most 20 digits (load_json), or a finite float
        return json.dumps(value)
    return _kind(value)


def key_names(parts: Sequence[str | int]) -> str:
    """The key path, each key a record chose shown as _quote() shows a value when it is not a plain name."""
    plain = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    return key_path([part if isinstance(part, int) or (part and len(part) <= 40 and set(part) <= plain
                                                      and not redact.has_token(part)) else _quote(part)
                     for part in parts])


def _walk(document: object) -> Iterator[tuple[tuple[str | int, ...], object]]:
    """Each value of the document with its key path, containers before what they hold; without recursion, so no
    depth is too deep for it, and without descending past MAX_DEPTH."""
    pending: list[tuple[tuple[str | int, ...], object]] = [((), document)]
    while pending:
        path, value = pending.pop()
        yield path, value
        if len(path) >= MAX_DEPTH:
            continue
        if isinstance(value, dict):
            pending += [((*path, key), item) for key, item in reversed(value.items())]
        elif isinstance(value, list):
            pending += [((*path, index), item) for index, item in reversed(list(enumerate(value)))]


def _text_problems(document: object) -> Problems:
    """Too deep a document, and text that cannot be written back (a lone UTF-16 surrogate, which JSON's \\u
    escapes can spell and UTF-8 cannot): the checks the schema cannot make."""
    problems: Problems = []
    for path, value in _walk(document):
        if len(path) >= MAX_DEPTH and isinstance(value, dict | list):
            return [(path, f"is nested more than {MAX_DEPTH} levels deep; a record is at most 7")]
        texts = [*value] if isinstance(value, dict) else [value] if isinstance(value, str) else []
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((path, "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is "
                                       "not text"))
    return problems


def _schema_problems(document: object) -> Problems:
    problems: Problems = []
    for error in _validator().iter_errors(document):
        path = tuple(error.absolute_path)
        where = error.schema if isinstance(error.schema, dict) else {}
        got = error.instance
        if error.validator == "additionalProperties":
            allowed = list(where.get("properties", {}))
            problems += [((*path, str(extra)), f"unknown key{suggest(str(extra), allowed)} (a record of another "
                                               "version of the tool? merge the records of one pipeline)")
                         for extra in sorted(set(got) - set(allowed))]
        elif error.validator == "required":
            problems += [(path, f"missing required key '{key}'") for key in error.validator_value
                         if isinstance(got, dict) and key not in got]
        elif error.validator == "type":
            wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            names = {"object": "a mapping", "array": "a list", "integer": "an integer", "null": "null"}
            problems.append((path, f"must be {' or '.join(names.get(kind, f'a {kind}') for kind in wanted)} "
                                   f"(got {_kind(got)})"))
        elif error.validator == "enum":
            problems.append((path, f"must be one of {', '.join(map(str, error.validator_value))} "
                                   f"(got {_shown_value(got)})"))
        elif error.validator in ("minimum", "maximum"):
            bounds = (where.get("minimum"), where.get("maximum"))
            problems.append((path, f"must be between {bounds[0]} and {bounds[1]} (got {_shown_value(got)})"))
        else:  # a rule this function has no words for: its name, never the value (which may be large, or secret)
            problems.append((path, f"breaks the record schema's '{error.validator}' rule"))
    return problems


def _finished_problems(document: object) -> Problems:
    """`finished` decides which of two records of one cell counts: a time that cannot be compared is refused."""
    finished = document.get("finished", "") if isinstance(document, dict) else ""
    if not isinstance(finished, str) or finished == "":
        return []
    try:
        moment: dt.datetime | None = dt.datetime.fromisoformat(finished)
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is not None:
        return []
    return [(("finished",), f"must be a time with its UTC offset as the runner writes it (e.g. "
                            f"2026-01-01T00:00:00+00:00), or empty (got {_quote(finished)})")]


def _sorted(problems: Problems) -> Problems:
    # document order would need the parser's positions: keys by name, list items by index
    return sorted(dict.fromkeys(problems), key=lambda problem: [(0, part, "") if isinstance(part, int) else
                                                                 (1, 0, part) for part in problem[0]])


def _record_problems(document: object) -> tuple[CellRecord | None, Problems]:
    """The record in a document load_json() read, or None and every problem with it."""
    problems = _text_problems(document) or _schema_problems(document) + _finished_problems(document)
    if not problems and isinstance(document, dict):
        try:
            return CellRecord.from_json(document), []
        except (ModelArtsImagesError, KeyError, TypeError, ValueError, AttributeError) as error:  # RECORD_SCHEMA
            problems = [((), f"cannot be read ({type(error).__name__}); a key RECORD_SCHEMA does not check")]
    return None, _sorted(problems)


def _line(path: tuple[str | int, ...], message: str) -> str:
    return f"{key_names(path)}: {message}" if path else message


def load_json(data: bytes) -> object:
    """A record file's bytes as JSON; ValueError saying what they are instead ("is not UTF-8 text ...").

    Strict where json.loads is lenient: NaN, Infinity and numbers past a float's range or 20 digits become values
    of no JSON type (the schema names them where they are), and a key given twice in one object is refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None
    try:
        return json.loads(text, parse_constant=_NotANumber, parse_float=_number, parse_int=_integer,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise ValueError("is JSON nested too deeply for Python to read, far deeper than any record") from None
    except ValueError as error:  # _unique_keys
        raise ValueError(f"is not JSON a record may be: {error}") from None


def load_record(document: object) -> CellRecord:
    """The cell record in a document load_json() read, checked against RECORD_SCHEMA; ValueError naming every
    problem ("key path: what is wrong", separated by '; ') when it is not one."""
    record, problems = _record_problems(document)
    if record is None:
        raise ValueError("; ".join(_line(path, message) for path, message in problems))
    return record


def shown_path(path: Path) -> str:
    text = redact.text(str(path))
    return text if text.isprintable() else ascii(text)


def read_record(path: Path) -> tuple[CellRecord | None, list[str]]:
    """The cell record in the file `path`, when it is one and filed under its own id (the runner writes each as
    <id>.json, and a record under another cell's name would stand in for that cell); else None and every
    problem with it, one line each, naming the file. The file is read as read_bounded() reads (a regular file of
    at most RECORD_LIMIT bytes, links resolved; a FIFO or device is never opened)."""
    shown = shown_path(path)
    if not str(path).isprintable():  # a name with a line break would write a line of its own into the message
        return None, [f"{shown} is not a matrix cell record: its name holds control characters, which no cell id "
                      "does"]
    try:
        document = load_json(read_bounded(path, limit=RECORD_LIMIT, what="matrix cell record"))
    except ConfigError as error:
        return None, [redact.text(str(error))]
    except ValueError as error:
        return None, [f"{shown} is not a matrix cell record: it {error}"]
    record, problems = _record_problems(document)
    cell_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(cell_id, str) and path.name != f"{cell_id}.json":
        record = None
        problems = _sorted([*problems, (("id",), f"is {_quote(cell_id)}, but the file is named {_quote(path.name)}: "
                                                 "the runner files a cell's record as <id>.json, so this one claims "
                                                 "another cell's place; remove the stray file (or name it after "
                                                 "its id)")])
    return record, [f"{shown} is not a matrix cell record: {_line(*problem)}" for problem in problems]


def _record_files(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The files that are records by their place in `paths`: each path that is not a directory, and each *.json
    below a directory (other files are left alone: a CI system's artifact may hold logs beside them); and the
    problems: a path that does not exist, a directory that cannot be listed, a link to a directory below one
    (not followed: it could lead back up, or out of the artifacts)."""
    files: list[Path] = []
    problems: list[str] = []

    def unlisted(error: OSError) -> None:
        problems.append(f"cannot list the directory {shown_path(Path(error.filename))}: {error.strerror or error}")

    for given in paths:
        if not os.path.lexists(given):
            problems.append(f"{shown_path(given)} does not exist")
        elif not given.is_dir():  # a FIFO, a device or a link to one: read_record() refuses it unopened
            files.append(given)
        else:  # a link given on the command line is followed: whoever typed it chose it
            for top, directories, names in os.walk(given, onerror=unlisted):
                base = Path(top)
                problems += [f"{shown_path(base / name)} is a link to a directory, which the search for records does "
                             "not follow; give the directory it points to as a --records of its own"
                             for name in sorted(directories) if (base / name).is_symlink()]
                directories.sort()
                files += [base / name for name in sorted(names) if name.endswith(".json")]
    return files, problems


def _finished(record: CellRecord) -> dt.datetime:
    # read_record() checked it: empty (a record of before the runner wrote it), or a time with its offset
    return dt.datetime.fromisoformat(record.finished) if record.finished else dt.datetime.min.replace(
        tzinfo=dt.timezone.utc)


def collect(paths: Sequence[Path], ids: Sequence[str]) -> tuple[list[CellRecord], list[str]]:
    """The cell records found in `paths` (files, or directories searched for *.json, as a CI system downloads its
    jobs' artifacts) for the cells `ids`, in that order, and the ids with none.

    Every file is checked before any is used (read_record: a regular file, at most RECORD_LIMIT bytes, valid by
    RECORD_SCHEMA, named <id>.json); one ConfigError names every problem of every file. Of two valid records of
    one cell the later finished one counts (a job run again; on a tie the first path in order), so a record that
    claims a cell under another file's name never gets to compete."""
    files, problems = _record_files(paths)
    found: dict[str, CellRecord] = {}
    for path in files:
        record, found_problems = read_record(path)
        problems += found_problems
        if record is None:
            continue
        if record.id not in ids:
            problems.append(f"{shown_path(path)}: {key_names((record.id,))} not among the selected cells of the "
                            "versions file (another versions file's records, or --only leaves them out?)")
        elif record.id not in found or _finished(record) > _finished(found[record.id]):
            found[record.id] = record
    if problems:
        raise ConfigError("\n".join(f"--records: {problem}" for problem in problems)
                          + f"\n--records: nothing was merged ({len(problems)} problem(s) above); fix or remove "
                          "those files (a records directory holds the <id>.json records the cell jobs wrote), then "
                          "run the summary again")
    return [found[cell_id] for cell_id in ids if cell_id in found], [cell_id for cell_id in ids if cell_id not in found]
