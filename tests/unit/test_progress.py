"""Progress rendering: plain periodic lines off a terminal."""

from __future__ import annotations

import pytest

from modelarts_images.shared.progress import PlainLines, for_terminal, human


def test_plain_lines_are_throttled_but_always_report_completion(capsys: pytest.CaptureFixture[str]) -> None:
    lines = PlainLines(interval=3600)
    url = "http://127.0.0.1/files/torch.whl"
    lines(url, 1 << 20, 4 << 20)
    lines(url, 2 << 20, 4 << 20)  # within the interval: silent
    lines(url, 4 << 20, 4 << 20)  # complete: always said
    assert capsys.readouterr().err.splitlines() == [
        "fetch: torch.whl 1.0 MB / 4.2 MB (25%)",
        "fetch: torch.whl 4.2 MB / 4.2 MB (100%)",
    ]


def test_unknown_total(capsys: pytest.CaptureFixture[str]) -> None:
    PlainLines()("http://h/x.sh", 512, None)
    assert capsys.readouterr().err == "fetch: x.sh 512 B\n"


def test_off_a_terminal_plain_lines_are_used() -> None:
    with for_terminal() as progress:  # pytest captures stderr: not a terminal
        assert isinstance(progress, PlainLines)


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (999, "999 B"), (1500, "1.5 KB"), (3 * 10**9, "3.0 GB"),
                                          (5 * 10**12, "5000.0 GB")])
def test_human(size: int, text: str) -> None:
    assert human(size) == text
