"""`ProgressBar`: fastprogress bars with a live loss, and the epoch table."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from fastprogress.fastprogress import ConsoleMasterBar, format_time, master_bar, progress_bar

from loopkit import Callback

from ._dist import is_main_process


def format_row(cells: list[str], widths: list[int]) -> str:
    """Left-align `cells` in columns of `widths`, two spaces apart."""
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


class ProgressBar(Callback):
    """Show bars for epochs and batches with a live loss, and print one table row per epoch.

    Events: before_fit, before_epoch, before_train, before_validate, after_loss,
    after_batch, after_train, after_validate, after_epoch, after_fit.
    Reads: n_epochs, epoch, n_iter, iter, training, loss,
    `learn.avg_stats.history` (the row it prints), and during an lr sweep
    `learn.lr_finder`'s public `num_it`, `lrs` and `result`.
    Writes on the learner: nothing.
    order = 50: runs after `AvgStats` has written the epoch's row (and before
    `LRFinder`, 100, which only puts the model back at `after_fit`).

    While an `LRFinder` is on the learner (`learn.lr_find()`), the epochs of the
    sweep are not training epochs and their rows would be all nan: it shows one
    bar over the sweep's batches instead, prints no table, and at the end writes
    one line with the suggested lr.

    Bars are drawn in a notebook or when stdout is a terminal; elsewhere (logs,
    CI) only the table is printed. Under distributed training only rank 0 prints. With `enabled=False` (or
    `learn.progress_bar.enabled = False`) it prints nothing. The live loss
    is read from the device at most every `refresh` seconds. `write` is the
    function the table lines go to when no bars are drawn, and the sweep's summary
    line always (default `print`).
    """

    order = 50

    def __init__(self, enabled: bool = True, refresh: float = 0.25, write: Callable[[str], Any] = print) -> None:
        self.enabled, self.refresh, self.write = enabled, refresh, write
        self._mbar: Any = None
        self._pbar: Any = None
        self._finder: Any = None

    def before_fit(self) -> None:
        self._widths: list[int] = []
        self._active = self.enabled and is_main_process()  # under torchrun, rank 0 alone prints
        interactive = master_bar is not ConsoleMasterBar or sys.stdout.isatty()
        self._bars = self._active and interactive
        self._finder = getattr(self.learn, "lr_finder", None)
        if self._finder is not None:
            self._swept = 0
            if self._bars:
                self._pbar = progress_bar(range(self._finder.num_it), total=self._finder.num_it, leave=False)
                self._pbar.update(0)
                self._last_shown = time.perf_counter()
        elif self._bars and not self.learn.evaluating:  # an evaluation shows its batch bar alone
            self._mbar = master_bar(range(self.n_epochs))
            self._mbar.on_iter_begin()

    def before_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        if self._mbar is not None:
            self._mbar.update(self.epoch)

    def _start_phase(self) -> None:
        if self._bars and self._finder is None:
            total = self.n_iter if self.n_iter is not None else "noinfer"
            self._pbar = progress_bar(range(self.n_iter or 0), total=total, parent=self._mbar, leave=False)
            self._pbar.update(0)
            self._last_shown = time.perf_counter()

    def before_train(self) -> None:
        self._start_phase()

    def before_validate(self) -> None:
        self._start_phase()

    def after_loss(self) -> None:
        # Read here, before callbacks rescale the loss for backward (accumulation, fp16 scaling).
        if self._pbar is not None and self.learn.training:
            now = time.perf_counter()
            if now - self._last_shown >= self.refresh:
                self._pbar.comment = f"loss {self.learn.loss.item():.4f}"
                self._last_shown = now

    def after_batch(self) -> None:
        if self._finder is not None:
            if self.learn.training:
                self._swept += 1
                if self._pbar is not None:
                    self._pbar.update(min(self._swept, self._finder.num_it))
        elif self._pbar is not None:
            self._pbar.update(self.learn.iter + 1)

    def _end_phase(self) -> None:
        if self._pbar is not None and self._finder is None:
            if self._pbar.total is None or self._pbar.last_v is not None:
                self._pbar.on_iter_end()
            self._pbar = None

    def after_train(self) -> None:
        self._end_phase()

    def after_validate(self) -> None:
        self._end_phase()

    def after_epoch(self) -> None:
        self._end_phase()
        if not self._active or self._finder is not None:
            return
        stats = getattr(self.learn, "avg_stats", None)
        row: dict[str, float] = dict(stats.history[-1]) if stats is not None and stats.history else {"epoch": self.epoch}
        names = list(row) + ["time"]
        cells = [_cell(name, row.get(name)) for name in row] + [format_time(time.perf_counter() - self._epoch_start)]
        if self._bars:
            if not self._widths:
                self._mbar.write(names, table=True)
                self._widths = [1]
            self._mbar.write(cells, table=True)
            return
        if not self._widths:
            self._widths = [max(len(n), 8) for n in names]
            self.write(format_row(names, self._widths))
        self.write(format_row(cells, self._widths))

    def after_fit(self) -> None:
        if self._pbar is not None and self._finder is not None:  # the sweep's bar: a sweep may stop early
            self._pbar.on_iter_end()
            self._pbar = None
        if self._pbar is not None:  # the fit was interrupted mid-phase
            self._pbar.on_interrupt()
            self._pbar = None
        if self._mbar is not None:
            self._mbar.on_iter_end()
        self._mbar = None
        finder, self._finder = self._finder, None
        if finder is not None and self._active and finder.lrs:
            self.write(_sweep_summary(finder))


def _sweep_summary(finder: Any) -> str:
    lrs = finder.lrs
    where = f"lr_find: {len(lrs)} batches, lr {lrs[0]:.2e} to {lrs[-1]:.2e}"
    try:
        result = finder.result
    except ValueError:
        return f"{where}; no finite loss, so no suggestion: check the model and data with a plain fit."
    return f"{where}; suggested lr {result.lr_steep:.2e} (steepest fall), lr_min {result.lr_min:.2e} (lowest loss / 10)"


def _cell(name: str, value: Any) -> str:
    if name == "epoch":
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)
