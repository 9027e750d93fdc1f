"""Rendering of download progress: bars on a terminal, plain periodic lines elsewhere (CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def human(size: float) -> str:
    """Decimal units, as docker prints image sizes: 1.5 KB is 1500 bytes."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


class PlainLines:
    """One line per file at most every `interval` seconds, and one when it completes."""

    def __init__(self, interval: float = 5.0, *, label: str = "fetch") -> None:
        self.interval = interval
        self.label = label
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        name = url.rsplit("/", 1)[-1]
        with self._lock:
            complete = total is not None and done >= total
            last = self._last.get(url)  # None: never printed, so printed now whatever the clock says
            if not complete and last is not None and now - last < self.interval:
                return
            self._last[url] = now
        share = f" ({100 * done // total}%)" if total else ""
        print(f"{self.label}: {name} {human(done)}{' / ' + human(total) if total else ''}{share}", file=sys.stderr,
              flush=True)


class Bars:
    """rich progress bars with bytes, rate and time left, one per file."""

    def __init__(self) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), transient=False)
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Bars:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, url: str, done: int, total: int | None) -> None:
        with self._lock:
            if url not in self._tasks:
                self._tasks[url] = self._progress.add_task(url.rsplit("/", 1)[-1][:60], total=total)
            self._progress.update(self._tasks[url], completed=done, total=total)


@contextmanager
def for_terminal(label: str = "fetch") -> Iterator[Bars | PlainLines]:
    """Bars when stderr is a terminal, plain lines (each starting with `label`) otherwise."""
    if sys.stderr.isatty():
        with Bars() as bars:
            yield bars
    else:
        yield PlainLines(label=label)
