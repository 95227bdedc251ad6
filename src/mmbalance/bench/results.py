"""``results.csv``: one row per finished run, written so that a kill never corrupts it.

Every append rewrites the whole file into a temporary sibling, flushes it to disk and
renames it over the old one (``os.replace`` is atomic on POSIX and Windows). A reader
therefore sees the file either without or with the new row, never half of it, and a
sweep killed at any moment keeps every row it had finished. An advisory lock
(``fcntl.flock`` where available) serialises writers, so two sweeps on one directory do
not drop each other's rows. The files are small (a few hundred rows); rewriting costs
microseconds next to a training run.
"""

from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Mapping

from ..errors import DataError

try:  # POSIX only; elsewhere writers are not serialised (one sweep per directory)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: Columns of ``results.csv``, in order. ``hyperparameters`` is a JSON object of the run's
#: learning rate, weight decay and method hyperparameters; ``data`` the data spec; ``probe`` a
#: JSON object modality -> test accuracy of a linear probe on that modality's frozen encoder
#: (``trainer.final_probe``). ``shared``/``unique1``/``unique2``/``ratio`` are empty off the
#: synthetic grid. ``macro_f1`` is the test macro-F1; ``kind_accuracy`` a JSON object point
#: type -> test accuracy on those rows (synthetic data only); ``shapley`` a JSON object
#: removal (``zero``, ``permute``) -> modality -> Shapley value of test accuracy
#: (:mod:`mmbalance.bench.scores`). A file written before these three columns existed is
#: read with them empty, and rewritten with them on its next append.
COLUMNS = ("run_id", "method", "base_method", "shared", "unique1", "unique2", "ratio", "seed",
           "val_accuracy", "test_accuracy", "epochs_run", "train_seconds", "tuning_trials",
           "fingerprint", "hyperparameters", "data", "probe", "macro_f1", "kind_accuracy", "shapley")
#: the columns of the oldest header still read (a prefix of :data:`COLUMNS`)
OLDEST_COLUMNS = COLUMNS[:17]


class ResultsFile:
    """A CSV file of finished runs with atomic appends.

    Args:
        path: the CSV file (created on the first append).
        columns: its header.
    """

    def __init__(self, path: str | Path, columns=COLUMNS) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)

    def rows(self) -> List[Dict[str, str]]:
        """Every row, as column -> string."""
        if not self.path.exists():
            return []
        return self._parse(self.path.read_text())

    def append(self, row: Mapping[str, object], unique: str = "") -> bool:
        """Adds ``row`` atomically (missing columns are written empty, unknown ones refused).

        Args:
            unique: a column; when a row with the same value is already there (another
                process recorded it meanwhile) nothing is written.

        Returns:
            Whether the row was written.
        """
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        with self._locked():
            existing = self.path.read_text() if self.path.exists() else ""
            rows = self._parse(existing)  # refuses a file with another header before it grows
            if unique and any(r[unique] == _cell(row.get(unique, "")) for r in rows):
                return False
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
            upgrade = bool(existing) and existing.split("\n", 1)[0] != ",".join(self.columns)  # older header
            if upgrade or not existing:
                writer.writeheader()
            if upgrade:  # rewritten whole, with the columns added since empty
                writer.writerows({k: _cell(r.get(k, "")) for k in self.columns} for r in rows)
                existing = ""
            writer.writerow({k: _cell(row.get(k, "")) for k in self.columns})
            self._replace(existing + buf.getvalue())
        return True

    def _parse(self, text: str) -> List[Dict[str, str]]:
        if not text:
            return []
        reader = csv.DictReader(io.StringIO(text))
        names = tuple(reader.fieldnames or ())
        if names != self.columns and self.columns[:len(names)] == names and len(names) >= len(OLDEST_COLUMNS) \
                and self.columns[:len(OLDEST_COLUMNS)] == OLDEST_COLUMNS:
            return [{**{k: "" for k in self.columns}, **r} for r in reader]  # columns added later read empty
        if names != self.columns:
            raise DataError(f"{self.path} has columns {reader.fieldnames}, expected {list(self.columns)}; "
                            "it belongs to another tool or version: use another --out")
        return list(reader)

    def _replace(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _fsync_dir(path: Path) -> None:
    """Makes the rename itself durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
