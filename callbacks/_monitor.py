"""A monitored figure from `learn.avg_stats.history`, shared by SaveModel and EarlyStopping."""

from __future__ import annotations

import math
from typing import Any


class Monitor:
    """Read a column of the latest history row and tell whether it improved on the best."""

    def __init__(self, name: str, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}; use 'max' for accuracy-like metrics.")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}.")
        self.name, self.mode, self.min_delta = name, mode, min_delta

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
