"""A monitored figure from `learn.avg_stats.history`, shared by SaveModel and EarlyStopping."""

from __future__ import annotations

import math
import numbers
from typing import Any


class Monitor:
    """Read a column of the latest history row and tell whether it improved on the best.

    The arguments are checked when it is built (so a callback that makes one fails at
    construction): `name` a string, `mode` "min" or "max", `min_delta` a finite
    number >= 0. `owner`, if given, names the callback in the error messages.
    """

    def __init__(self, name: str, mode: str = "min", min_delta: float = 0.0, owner: str = "") -> None:
        where = f"{owner}: " if owner else ""
        if not isinstance(name, str):
            raise TypeError(
                f"{where}monitor is the name of a column of learn.avg_stats.history, got {name!r}; "
                "pass a string such as 'valid_loss' or 'accuracy'."
            )
        if not isinstance(mode, str) or mode not in ("min", "max"):
            raise ValueError(
                f"{where}mode must be 'min' or 'max', got {mode!r}; use 'min' for losses and 'max' for "
                "accuracy-like metrics."
            )
        # numbers.Real takes numpy scalars too; int and float are listed for the type checker
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float, numbers.Real)):
            raise TypeError(
                f"{where}min_delta is the smallest change that counts as an improvement and must be a number, "
                f"got {min_delta!r}; pass a float such as 0.0 or 0.01."
            )
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(
                f"{where}min_delta must be a finite number >= 0, got {min_delta!r}; pass 0.0 to count any "
                "improvement, or a small positive margin such as 0.01."
            )
        self.name, self.mode, self.min_delta = name, mode, float(min_delta)

    def check(self, learn: Any) -> None:
        """Raise `ValueError` now, at `before_fit`, if the monitored figure will not exist."""
        stats = getattr(learn, "avg_stats", None)
        if stats is None:
            raise ValueError(f"monitoring {self.name!r} needs AvgStats on the learner (it is a default callback).")
        if self.name not in stats.columns:
            raise ValueError(
                f"cannot monitor {self.name!r}: the epoch's figures will be {stats.columns}; pick one of those."
            )

    def read(self, learn: Any) -> float:
        """Return the monitored value of the epoch that just ended."""
        stats = getattr(learn, "avg_stats", None)
        if stats is None or not stats.history:
            raise ValueError(f"monitoring {self.name!r} needs AvgStats on the learner (it is a default callback).")
        row = stats.history[-1]
        if self.name not in row:
            raise ValueError(f"cannot monitor {self.name!r}: the epoch's figures are {list(row)}; pick one of those.")
        return float(row[self.name])

    def improved(self, value: float, best: float | None) -> bool:
        """Return True if `value` beats `best` by more than `min_delta` (nan never does)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta
