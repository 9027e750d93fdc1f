"""The last success of each cell: <reports_dir>/matrix-state.json, read and updated under an exclusive lock,
since shards may share one reports directory. A failed cell loses its entry, so it runs again next time."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from modelarts_images.errors import ConfigError
from modelarts_images.matrix.cells import CellRecord
from modelarts_images.shared.files import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "matrix-state.json"
SCHEMA = 1


class State:
    def __init__(self, reports_dir: Path) -> None:
        self.path = reports_dir / STATE_FILE

    def read(self) -> dict[str, CellRecord]:
        """The last success of each cell; an entry that cannot be read counts as none (the cell runs)."""
        try:
            document = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("matrix state %s cannot be read (%s): every cell runs", self.path, error)
            return {}
        cells = document.get("cells") if isinstance(document, dict) else None
        if not isinstance(cells, dict):
            log.warning("matrix state %s holds no cells: every cell runs", self.path)
            return {}
        found = {}
        for cell_id, entry in cells.items():
            try:
                found[str(cell_id)] = CellRecord.from_json(entry)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                log.warning("matrix state %s: the entry of %s cannot be read (%r): that cell runs", self.path,
                            cell_id, error)
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as handle:
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
        except OSError as error:  # the lock file: write_atomic names its own failures
            raise ConfigError(f"cannot lock the matrix state {self.path}: {error.strerror or error}") from error
