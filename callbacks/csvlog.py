"""`CSVLogger`: one CSV row per epoch, continued on resume."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from loopkit import Callback

from ._dist import is_main_process


class CSVLogger(Callback):
    """Append the epoch's figures to a CSV file, one row per epoch.

    Events: before_fit, after_epoch. Reads: start_epoch, start_iter, and `learn.avg_stats.history`.
    Writes on the learner: nothing. Publishes: `path`.
    order = 60: after AvgStats (-20) has written the row.

    A fresh fit starts the file anew (header first). A resumed fit
    (`fit(..., resume=...)`) continues the same file: at its first epoch's end the file
    is rewritten (atomically) from the restored history, so rows that the interrupted
    run wrote after its checkpoint are not repeated, and then appended to. Each row
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
        learn = self.learn
        self._rewrite = bool(learn.start_epoch or learn.start_iter)  # resumed: the history is restored after this
        if not self._rewrite and is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def after_epoch(self) -> None:
        if not is_main_process():
            return
        history = self.learn.avg_stats.history
        if self._rewrite:
            self._rewrite = False
            self._columns = list(history[-1])
            text = io.StringIO(newline="")
            csv.writer(text).writerows([self._columns, *([_cell(r.get(c)) for c in self._columns] for r in history)])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w", newline="") as file:
                file.write(text.getvalue())
            os.replace(tmp, self.path)
            return
        row = history[-1]
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
