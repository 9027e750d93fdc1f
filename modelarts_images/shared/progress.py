"""Progress of downloads and pushes: the callback the stages call, and its rendering (bars on a terminal,
plain periodic lines elsewhere, such as CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from modelarts_images.shared.text import size

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as (name, bytes_done, total_or_None) per file or layer, by downloads and pushes alike."""


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
        print(f"{self.label}: {name} {size(done)}{' / ' + size(total) if total else ''}{share}", file=sys.stderr,
              flush=True)


class Bars:
    """rich progress bars with bytes, rate and time left, one per file."""

    def __init__(self) -> None:
        # rich is imported only when bars are drawn: a CI run never pays for it
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress: Progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
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
