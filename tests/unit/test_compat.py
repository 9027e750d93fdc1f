"""The compatibility table: known anchors, and the messages for combinations that do not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelarts_images.config import compat

TABLE = {
    "2.1.2": compat.Release(torch="2.1.2", torchvision="0.16.2", torchaudio="2.1.2",
                            python=("3.8", "3.9", "3.10", "3.11"), cuda=("11.8", "12.1"), index="simple"),
    "9.9.9": compat.Release(torch="9.9.9", torchvision="0.99.0", torchaudio=None,
                            python=("3.12",), cuda=(), index="simple"),
}


def test_table_anchors() -> None:
    table = compat.load_table()
    assert table["1.8.1"].torchvision == "0.9.1" and table["1.8.1"].torchaudio == "0.8.1"
    assert set(table["1.8.1"].cuda) >= {"10.1", "10.2", "11.1"}
    assert table["1.8.1"].python == ("3.6", "3.7", "3.8", "3.9")
    assert table["2.1.2"].python == ("3.8", "3.9", "3.10", "3.11")
    assert "2.13.0" in table  # the release the engine tests install


def test_cuda_10_2_ends_at_1_12_1() -> None:
    table = compat.load_table()
    with_cu102 = [torch for torch, release in table.items() if "10.2" in release.cuda]
    assert max(with_cu102, key=compat.version_key) == "1.12.1"


def test_python_3_7_ends_at_1_13() -> None:
    table = compat.load_table()
    with_py37 = [torch for torch, release in table.items() if "3.7" in release.python]
    assert max(with_py37, key=compat.version_key).startswith("1.13.")


def test_every_release_is_well_formed() -> None:
    for torch, release in compat.load_table().items():
        assert release.torch == torch
        assert release.python, torch
        assert release.index in ("flat", "simple")
        assert all(compat.version_key(v) for v in (*release.python, *release.cuda))


def test_a_published_combination_has_no_problem() -> None:
    assert compat.check(torch="2.1.2", python="3.10", cuda="12.1", torchvision="0.16.2", torchaudio="2.1.2",
                        table=TABLE) == []
    assert compat.check(torch="2.1.2", python="3.10", cuda="cpu", torchvision=None, torchaudio=None,
                        table=TABLE) == []


@pytest.mark.parametrize(("kwargs", "key", "message"), [
    ({"python": "3.7"}, "python", "torch 2.1.2 has no wheels for Python 3.7 (available: 3.8–3.11)"),
    ({"cuda": "10.2"}, "cuda", "torch 2.1.2 has no wheels for CUDA 10.2 (available: 11.8, 12.1, cpu)"),
    ({"torchvision": "0.16.0"}, "torchvision", "torch 2.1.2 goes with torchvision 0.16.2, not 0.16.0"),
    ({"torchaudio": "2.1.0"}, "torchaudio", "torch 2.1.2 goes with torchaudio 2.1.2, not 2.1.0"),
    ({"torch": "1.0.0"}, "torch", "torch 1.0.0 is not a release this tool knows (known: 2.1.2 to 9.9.9; "
                                  "see modelarts_images/config/data/compat.yaml)"),
])
def test_problems(kwargs: dict[str, str], key: str, message: str) -> None:
    asked = {"torch": "2.1.2", "python": "3.10", "cuda": "12.1", "torchvision": None, "torchaudio": None, **kwargs}
    assert compat.check(**asked, table=TABLE) == [compat.Problem(key=key, message=message)]  # type: ignore[arg-type]


def test_missing_torchaudio_release() -> None:
    problems = compat.check(torch="9.9.9", python="3.12", cuda="cpu", torchvision=None, torchaudio="9.9.9",
                            table=TABLE)
    assert problems == [compat.Problem(key="torchaudio",
                                       message="torch 9.9.9 has no matching torchaudio release; leave torchaudio out")]


@pytest.mark.parametrize(("versions", "text"), [
    (("3.8", "3.9", "3.10", "3.11"), "3.8–3.11"),
    (("3.10", "3.8", "3.9"), "3.8–3.10"),
    (("3.8", "3.10"), "3.8, 3.10"),
    (("3.8", "3.9"), "3.8, 3.9"),
    ((), "none"),
])
def test_span(versions: tuple[str, ...], text: str) -> None:
    assert compat.span(versions) == text


@pytest.mark.parametrize("torch", ["2.9.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0"])
def test_cuda_12_9_wheels_that_were_published_are_allowed(torch: str) -> None:
    # whl/cu129/torch-<version>%2Bcu129-... exist for Linux beside the release matrix's variants
    assert compat.check(torch=torch, python="3.12", cuda="12.9", torchvision=None, torchaudio=None) == []


@pytest.mark.parametrize("torch", ["2.12.0", "2.14.0", "2.14.1"])
def test_releases_without_cuda_12_8_or_12_9_refuse_them(torch: str) -> None:
    for cuda in ("12.8", "12.9"):
        (problem,) = compat.check(torch=torch, python="3.12", cuda=cuda, torchvision=None, torchaudio=None)
        assert problem.key == "cuda" and problem.message.startswith(f"torch {torch} has no wheels for CUDA {cuda}")


@pytest.mark.parametrize("torch", ["2.11.0", "2.12.0", "2.12.1", "2.13.0", "2.14.0", "2.14.1"])
def test_torchaudio_2_11_goes_with_every_later_torch(torch: str) -> None:
    # TorchAudio 2.11 is built on the stable ABI: "works with PyTorch 2.11 and with every future PyTorch release"
    assert compat.check(torch=torch, python="3.11", cuda="cpu", torchvision=None, torchaudio="2.11.0") == []
    assert compat.check(torch=torch, python="3.11", cuda="cpu", torchvision=None, torchaudio="2.11.1",
                        wheels_listed=True) == []
    (derived,) = compat.check(torch=torch, python="3.11", cuda="cpu", torchvision=None, torchaudio="2.11.1")
    assert derived.message == (
        f"torchaudio 2.11.1 works with torch {torch}, but the PyTorch index does not serve it (it is on PyPI only; "
        f"beside torch {torch} the index serves torchaudio 2.11.0): use torchaudio: \"2.11.0\", or list the "
        "torchaudio 2.11.1 wheel under wheels:")
    (older,) = compat.check(torch=torch, python="3.11", cuda="cpu", torchvision=None, torchaudio="2.10.0")
    assert older.message == f"torch {torch} goes with torchaudio 2.11.0 or 2.11.1, not 2.10.0"


def test_every_release_says_where_its_facts_come_from() -> None:
    for torch, release in compat.load_table().items():
        assert "RELEASE.md" in release.source or "previous-versions" in release.source, torch
        if release.torchaudio_also or compat.version_key(torch) >= (2, 11):
            assert "docs.pytorch.org/audio/2.11.0/installation.html" in release.source, torch


def test_the_documented_table_is_the_compatibility_table() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs/reference/compatibility.md").read_text(encoding="utf-8")
    for torch, release in compat.load_table().items():
        if compat.version_key(torch) < (2, 4):
            continue
        audio = release.torchaudio or "—"
        if release.torchaudio_also:
            audio += f" (index), {', '.join(release.torchaudio_also)} (PyPI only)"
        cuda = ", ".join(release.cuda)
        row = f"| {torch} | {release.torchvision} | {audio} | {compat.span(release.python)} | {cuda} |"
        assert row in page, row
