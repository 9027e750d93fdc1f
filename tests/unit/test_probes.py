"""The programs run inside images (verify/probes/) and the shared parser of their tagged JSON lines."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from modelarts_images import paths
from modelarts_images.errors import VerifyError
from modelarts_images.verify import conformance, manifest, probes
from modelarts_images.verify.result import RESULT_PREFIX, parse_result

PREFIX = "TEST_TAG "
PY_PROBES = sorted(paths.PROBES_DIR.glob("*.py"))
SH_PROBES = sorted(paths.PROBES_DIR.glob("*.sh"))
# Linux's limit on one argv string (MAX_ARG_STRLEN, 32 pages): each probe travels as one argument.
MAX_ARG_STRLEN = 32 * 4096


# --------------------------------------------------------------------------------------------------------------
# The files


def test_probes_live_beside_the_verification_script() -> None:
    assert paths.PROBES_DIR == paths.VERIFY_DIR / "probes"
    # the one the probes are read from (the tests below monkeypatch it there)
    assert vars(probes)["PROBES_DIR"] is paths.PROBES_DIR


def test_every_probe_file_is_known_and_every_known_probe_is_there() -> None:
    present = sorted(path.name for path in paths.PROBES_DIR.iterdir() if path.is_file())
    assert present == sorted(probes.PROBES)
    # the parametrized checks below cover them all
    assert sorted(path.name for path in PY_PROBES + SH_PROBES) == present


@pytest.mark.parametrize("path", PY_PROBES, ids=lambda path: path.name)
def test_python_probe_parses_as_python_3_7(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 7))
    docstring = ast.get_docstring(tree) or ""
    # its header says what it prints, how it is run and by whom
    assert "Run by modelarts_images." in docstring and "It prints" in docstring and "Python 3.7" in docstring


def test_the_3_7_grammar_check_rejects_newer_syntax() -> None:
    # what the check above relies on: a walrus (3.8) or an f-string `=` (3.8) does not pass as 3.7
    for newer in ("if (n := 1):\n    pass\n", "x = 1\nprint(f'{x=}')\n"):
        with pytest.raises(SyntaxError):
            ast.parse(newer, feature_version=(3, 7))


@pytest.mark.parametrize("path", SH_PROBES, ids=lambda path: path.name)
def test_shell_probe_is_posix_sh_with_a_header(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    header = source.split("\n\n", 1)[0]
    assert source.startswith("#!/bin/sh\n")
    assert "Run by modelarts_images." in header and "It prints" in header
    # dash is the strictest sh at hand (bash as sh accepts bashisms); -n: parse only
    shell = shutil.which("dash") or "/bin/sh"
    if not Path(shell).exists():
        pytest.skip("no POSIX shell on this machine")
    completed = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize("name", probes.PROBES)
def test_probe_fits_in_one_command_line_argument(name: str) -> None:
    assert len(probes.probe_source(name).encode("utf-8")) < MAX_ARG_STRLEN


def test_the_manifest_script_prints_the_markers_the_report_reads() -> None:
    source = probes.probe_source(probes.MANIFEST)
    for section in manifest.SECTIONS:
        assert f"echo '{manifest._MARK}{section}'" in source


def test_a_missing_probe_file_is_a_verify_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(probes, "PROBES_DIR", tmp_path)
    with pytest.raises(VerifyError) as raised:
        probes.probe_source(probes.STACK_IMPORTS)
    assert str(raised.value) == (f"probe stack_imports.py: cannot read {tmp_path / 'stack_imports.py'} (No such "
                                 "file or directory); it ships with modelarts-images in verify/probes/, restore it "
                                 "from the repository")
    assert raised.value.exit_code == 5 and isinstance(raised.value.__cause__, FileNotFoundError)
    with pytest.raises(VerifyError, match=r"conformance_facts\.py"):
        conformance.probe_run("img")


def test_a_probe_that_is_not_utf_8_is_a_verify_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(probes, "PROBES_DIR", tmp_path)
    (tmp_path / "manifest.sh").write_bytes(b"echo \xff\n")
    with pytest.raises(VerifyError, match=r"probe manifest\.sh: cannot read .*utf-8"):
        probes.probe_source(probes.MANIFEST)


# --------------------------------------------------------------------------------------------------------------
# The Python probes, run or loaded by the host's python


def load_probe(name: str) -> ModuleType:
    """The probe as a module, without running its main(): its parts can be called on a scratch directory.

    Compiled from its text rather than imported, so no __pycache__ lands in verify/probes/."""
    path = paths.PROBES_DIR / name
    module = ModuleType(f"probe_{path.stem}")
    module.__file__ = str(path)
    exec(compile(probes.probe_source(name), str(path), "exec"), module.__dict__)
    return module


def test_conformance_probe_reads_conda_metadata_and_notes_what_it_cannot(tmp_path: Path) -> None:
    # main() walks the whole root filesystem: too much for a unit test, the engine tier runs it whole
    probe = load_probe(probes.CONFORMANCE_FACTS)
    assert probe.PREFIX == conformance.FACTS_PREFIX
    errors: list[str] = []
    assert probe.conda_packages(str(tmp_path), errors) is None and errors == []
    meta = tmp_path / "conda-meta"
    meta.mkdir()
    (meta / "python-3.10.json").write_text(json.dumps({"name": "python", "version": "3.10.13",
                                                        "channel": "https://conda.anaconda.org/conda-forge"}))
    (meta / "broken.json").write_text("{")
    (meta / "history").write_text("not json, not read")
    packages = probe.conda_packages(str(tmp_path), errors)
    assert packages == [{"name": "python", "version": "3.10.13", "channel": "https://conda.anaconda.org/conda-forge"}]
    assert len(errors) == 1 and errors[0].startswith(f"{meta / 'broken.json'}: Expecting")


def test_conformance_probe_reads_at_most_the_start_of_a_file(tmp_path: Path) -> None:
    probe = load_probe(probes.CONFORMANCE_FACTS)
    big = tmp_path / "pip.conf"
    big.write_bytes(b"x" * (probe.READ_LIMIT + 10))
    errors: list[str] = []
    assert len(probe.read(str(big), errors)) == probe.READ_LIMIT and errors == []
    assert probe.read(str(tmp_path / "absent"), errors) == ""
    assert len(errors) == 1 and "No such file" in errors[0]


def test_conformance_probe_user_facts() -> None:
    probe = load_probe(probes.CONFORMANCE_FACTS)
    assert probe.user_facts("no-such-user-modelarts-test") is None
    root = probe.user_facts("root")
    assert root is not None and root["uid"] == 0 and root["name"] == "root"
    assert set(root) == {"name", "uid", "gid", "home", "shell", "home_exists", "home_owner"}


# --------------------------------------------------------------------------------------------------------------
# tagged_json


def test_the_last_tagged_line_wins() -> None:
    text = f'{PREFIX}{{"n": 1}}\nnoise\n  {PREFIX}{{"n": 2}}\n{PREFIX}{{"n": 3}}\ntrailing noise\n'
    assert probes.tagged_json(text, PREFIX, what="probe") == {"n": 3}  # the indented line does not count


def test_a_tagged_line_with_crlf_endings() -> None:
    assert probes.tagged_json(f'noise\r\n{PREFIX}{{"ok": true}}\r\n', PREFIX, what="probe") == {"ok": True}


def test_a_later_garbled_line_is_not_skipped_for_an_earlier_good_one() -> None:
    with pytest.raises(VerifyError, match="not valid JSON"):
        probes.tagged_json(f'{PREFIX}{{"n": 1}}\n{PREFIX}{{"n": \n', PREFIX, what="probe")


def test_garbled_json_names_the_program_the_tag_and_the_text() -> None:
    with pytest.raises(VerifyError) as raised:
        probes.tagged_json(f"{PREFIX}{{not json\n", PREFIX, what="the probe")
    message = str(raised.value)
    assert message.startswith("the probe: the TEST_TAG line is not valid JSON (Expecting property name")
    assert message.endswith("): {not json") and raised.value.exit_code == 5


@pytest.mark.parametrize(("payload", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("null", "NoneType"),
                                               ("3", "int")])
def test_a_json_value_that_is_not_an_object(payload: str, kind: str) -> None:
    with pytest.raises(VerifyError) as raised:
        probes.tagged_json(f"{PREFIX}{payload}\n", PREFIX, what="the probe")
    assert str(raised.value) == f"the probe: the TEST_TAG line holds {kind}, expected a JSON object"


def test_a_missing_line_names_the_prefix_and_shows_the_last_lines() -> None:
    text = "".join(f"line {number}\n" for number in range(1, 8)) + "\n"
    with pytest.raises(VerifyError) as raised:
        probes.tagged_json(text, PREFIX, what="the probe")
    assert str(raised.value) == ("the probe: expected a line starting with 'TEST_TAG' and a JSON object, found none "
                                 "(last lines: line 3 | line 4 | line 5 | line 6 | line 7)")
    with pytest.raises(VerifyError) as raised:
        probes.tagged_json("TEST_TAGx {}\n", PREFIX, what="the probe", hint="it was killed")
    assert str(raised.value).endswith("found none (it was killed; last lines: TEST_TAGx {})")


def test_no_output_at_all() -> None:
    with pytest.raises(VerifyError, match=r"found none \(last lines: no output at all\)$"):
        probes.tagged_json(" \n", PREFIX, what="the probe")


def test_the_parsers_share_it() -> None:
    # a garbled line reads the same whoever parses it
    for parse, prefix in ((parse_result, RESULT_PREFIX),
                          (conformance.parse_probe, conformance.FACTS_PREFIX)):
        with pytest.raises(VerifyError, match=f"the {prefix.strip()} line holds list, expected a JSON object"):
            parse(f"{prefix}[]\n")


def test_conformance_probe_finds_setuid_files_and_credentials_in_one_walk(tmp_path: Path) -> None:
    probe = load_probe(probes.CONFORMANCE_FACTS)
    (tmp_path / "bin").mkdir()
    for name, mode in (("escalate", 0o4755), ("group-tool", 0o2755), ("plain", 0o755)):
        (tmp_path / "bin" / name).write_text("#!/bin/sh\n")
        (tmp_path / "bin" / name).chmod(mode)
    (tmp_path / "bin" / "link").symlink_to(tmp_path / "bin" / "escalate")  # a link is not the file
    (tmp_path / ".netrc").write_text("machine h login u password p\n")
    errors: list[str] = []
    credentials, setuid = probe.scan_files(errors, root=str(tmp_path))
    assert setuid == [str(tmp_path / "bin" / "escalate"), str(tmp_path / "bin" / "group-tool")]
    assert [item["kind"] for item in credentials] == ["netrc"] and errors == []


# --------------------------------------------------------------------------------------------------------------
# The stack's import probe, run by this machine's Python over distributions of its own


def _distribution(site: Path, folder: str, *, top_level: str | None = None, record: tuple[str, ...] = (),
                  files: dict[str, str] | None = None) -> None:
    info = site / folder
    info.mkdir(parents=True)
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in record))
    for path, text in (files or {}).items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)


def test_the_import_probe_reads_module_names_from_the_installed_distribution(tmp_path: Path) -> None:
    import sys

    site = tmp_path / "site"
    # named unlike their projects: PyYAML installs yaml (top_level.txt), python-dateutil dateutil (RECORD only)
    _distribution(site, "PyYAML-6.0.3.dist-info", top_level="_yaml\nyaml\n", files={"yaml/__init__.py": ""})
    _distribution(site, "python_dateutil-2.9.0.dist-info", record=(
        "dateutil/__init__.py", "dateutil/tz/__init__.py", "python_dateutil-2.9.0.dist-info/RECORD"),
        files={"dateutil/__init__.py": "", "dateutil/tz/__init__.py": ""})
    _distribution(site, "broken-1.0.dist-info", record=("broken_mod.py",),
                  files={"broken_mod.py": "raise ImportError('needs libGL.so.1')\n"})
    source = (paths.PROBES_DIR / "stack_imports.py").read_text()
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{source}",
                             "pyyaml", "Python-Dateutil", "broken", "absent"],
                            capture_output=True, text=True, check=True, timeout=60)
    found = probes.tagged_json(result.stdout, "MODELARTS_STACK_IMPORTS ", what="stack import probe")
    assert found == {
        "pyyaml": {"version": "6.0.3", "modules": ["yaml"], "errors": {}},
        "Python-Dateutil": {"version": "2.9.0", "modules": ["dateutil"], "errors": {}},
        "broken": {"version": "1.0", "modules": ["broken_mod"],
                   "errors": {"broken_mod": "ImportError: needs libGL.so.1"}},
        "absent": {"version": None, "modules": [], "errors": {}},
    }
