"""Progress rendering (plain periodic lines off a terminal) and the one size format."""

from __future__ import annotations

import pytest

from modelarts_images.shared.progress import PlainLines, for_terminal
from modelarts_images.shared.text import one_line, size


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


@pytest.mark.parametrize(("count", "text"), [(0, "0 B"), (999, "999 B"), (1500, "1.5 KB"), (3 * 10**9, "3.0 GB"),
                                          (5 * 10**12, "5000.0 GB")])
def test_size(count: int, text: str) -> None:
    assert size(count) == text


def test_size_of_a_difference() -> None:
    assert size(-5_300_000) == "-5.3 MB" and size(-999) == "-999 B"


def test_size_precision() -> None:
    assert size(12 * 10**9, precision=2) == "12.00 GB" and size(512, precision=2) == "512 B"


def test_one_line_flattens_and_cuts() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 10, width=5) == "xxxx…"


def test_first_line_is_printed_however_young_the_clock(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # time.monotonic() counts from boot on Linux: on a machine up for seconds it is below any interval
    monkeypatch.setattr("modelarts_images.shared.progress.time.monotonic", lambda: 0.5)
    PlainLines(interval=5.0)("http://h/torch.whl", 10, 100)
    assert capsys.readouterr().err == "fetch: torch.whl 10 B / 100 B (10%)\n"


def test_a_downloads_first_report_goes_out_however_young_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelarts_images.http import download

    monkeypatch.setattr("modelarts_images.http.download.time.monotonic", lambda: download.PROGRESS_INTERVAL / 2)
    seen: list[tuple[str, int, int | None]] = []
    report = download._Progress("http://h/torch.whl", lambda url, done, total: seen.append((url, done, total)))
    report(10, 100)
    report(20, 100)  # the same instant: throttled
    assert seen == [("http://h/torch.whl", 10, 100)]
