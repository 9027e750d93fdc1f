"""The last success of each cell: <reports_dir>/matrix-state.json, read and updated under an exclusive lock,
since shards may share one reports directory. A failed cell loses its entry, so it runs again next time."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from modelarts_images.errors import ConfigError, WriteError
from modelarts_images.matrix.cells import CellRecord
from modelarts_images.matrix.records import RECORD_LIMIT, load_json, load_record
from modelarts_images.shared.files import read_bounded, write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "matrix-state.json"
SCHEMA = 1
# The last success of each cell: room for 64 cells of the largest record; a larger file only means every cell runs.
STATE_LIMIT = 64 * RECORD_LIMIT
# A state file that cannot be updated keeps what it held: a cell that failed now may still look built to the next
# run (which checks that the image is still there), hence the pointer to --rerun.
_UNRECORDED = ("the matrix goes on without recording its cells' results (the next run, not knowing them, may "
               "run a cell again or skip one that failed here; --rerun runs every cell)")


class State:
    """The state is only a memory of what was built: whatever is wrong with its file is a warning (said once),
    and at worst a cell runs again; it never fails a cell or the run."""

    def __init__(self, reports_dir: Path) -> None:
        self.path = reports_dir / STATE_FILE
        self._warned: set[str] = set()

    def _warn(self, message: str) -> None:
        if message not in self._warned:  # read again before each update: one warning, not one per cell
            self._warned.add(message)
            log.warning("%s", message)

    def read(self) -> dict[str, CellRecord]:
        """The last success of each cell; an entry that cannot be read counts as none (the cell runs)."""
        if not os.path.lexists(self.path):
            return {}
        try:  # bounded, regular files only: a FIFO in its place must not hang the run, nor /dev/zero fill memory
            document = load_json(read_bounded(self.path, limit=STATE_LIMIT, what="matrix state"))
        except (ConfigError, ValueError) as error:
            self._warn(f"matrix state {self.path} cannot be read ({error}): every cell runs")
            return {}
        cells = document.get("cells") if isinstance(document, dict) else None
        if not isinstance(cells, dict):
            self._warn(f"matrix state {self.path} holds no cells: every cell runs")
            return {}
        found = {}
        for cell_id, entry in cells.items():
            try:  # checked as a merged record is: a wrong type would fail the run in the middle of a cell
                found[str(cell_id)] = load_record(entry)
            except ValueError as error:
                self._warn(f"matrix state {self.path}: the entry of {cell_id} cannot be read ({error}): that "
                           "cell runs")
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        # O_NONBLOCK: a FIFO planted at the lock's name fails to open (ENXIO) instead of waiting for a reader.
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        with os.fdopen(descriptor, "a") as handle:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise OSError(f"{lock} is not a regular file")
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update(self, cell_id: str, success: CellRecord | None) -> None:
        """Record the cell's success, or forget it (None)."""
        try:
            with self._locked():
                cells = {key: record.to_json() for key, record in self.read().items()}
                if success is None:
                    cells.pop(cell_id, None)
                else:
                    cells[cell_id] = success.to_json()
                write_atomic(self.path, json.dumps({"schema": SCHEMA, "cells": cells}, indent=2,
                                                   sort_keys=True) + "\n", what="matrix state")
        except WriteError as error:  # a directory in its place, a full disk
            self._warn(f"{error}; {_UNRECORDED}")
        except OSError as error:  # the lock file (write_atomic names its own failures): unlocked, no update is safe
            self._warn(f"cannot lock the matrix state {self.path}: {error.strerror or error}; {_UNRECORDED}")
