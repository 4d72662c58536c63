"""`CSVLogger`: one CSV row per epoch, continued on resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from loopkit import Callback

from ._dist import is_main_process


class CSVLogger(Callback):
    """Append the epoch's figures to a CSV file, one row per epoch.

    Events: before_fit, after_epoch. Reads: start_epoch, and `learn.avg_stats.history`.
    Writes on the learner: nothing. Publishes: `path`.
    order = 60: after AvgStats (-20) has written the row.

    A fresh fit starts the file anew (header first); a resumed fit
    (`fit(..., resume=...)`, `start_epoch > 0`) appends to the same file. Each row
    is written and the file closed at once, so an interrupted fit loses nothing.
    Under distributed training only rank 0 writes.
    """

    order = 60

    def __init__(self, path: str | Path = "history.csv") -> None:
        self.path = Path(path)

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to log
            return
        if getattr(self.learn, "avg_stats", None) is None:
            raise ValueError("CSVLogger writes the rows of AvgStats' history; add AvgStats (a default callback).")
        self._columns: list[str] | None = None
        if self.learn.start_epoch == 0 and is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def after_epoch(self) -> None:
        if not is_main_process():
            return
        row = self.learn.avg_stats.history[-1]
        with self.path.open("a", newline="") as file:
            if self._columns is None:
                self._columns = list(row)
                if file.tell() == 0:
                    csv.writer(file).writerow(self._columns)
            csv.writer(file).writerow([_cell(row.get(c)) for c in self._columns])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return "" if value is None else str(value)
