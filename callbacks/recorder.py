"""`Recorder`: per-batch training loss and hyper-parameters, and their plots."""

from __future__ import annotations

import math
from array import array
from operator import itemgetter
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from loopkit import Callback

from ._hypers import hyper_keys, resolve_path
from ._plot import finish, new_figure
from .stats import kept

_FOLD_EVERY = 256  # batches whose losses are stacked into one tensor, as AvgStats folds its sums


class Recorder(Callback):
    """Record the loss and every hyper-parameter of every param group, per training batch.

    Events: before_fit, after_loss, after_train. Reads: training, loss, opt, epoch,
    train_iter, `learn.avg_stats.history` (for the validation curve, when present) and
    `learn.param_scheduler.scheds` (the scheduled names, at `before_fit`).
    Writes on the learner: nothing.
    Publishes: `losses` (training loss per batch), `hps` (name -> one list per param
    group -> value per batch; `mom` is momentum or Adam's first beta; an attribute a
    `ParamScheduler` schedules by dotted path, `"model.drop.p"`, has one list), `lrs` and
    `moms` (the last param group's values, as fastai has them), `epoch_ends`
    (number of batches recorded at the end of each training phase), `scheduled` (the
    names a `ParamScheduler` scheduled in the fit).
    order = 0: after `ParamScheduler` (-50) has set this batch's hyper-parameters,
    and after `TerminateOnNaN` (-10), whose `CancelFit` at `after_loss` comes first,
    so the non-finite loss that stops a fit is never recorded (as in fastai). A
    callback of yours that cancels a batch at `after_loss` needs an order below 0
    for that batch to go unrecorded.

    Losses on a GPU (or any device but the CPU) stay there while training, folded
    every 256 batches into one tensor; reading `losses` syncs once and moves them to
    the host. CPU losses are read as numbers as they come (`stats.kept`: there is no
    device to wait for) and folded into a tensor of the loss's dtype. A
    hyper-parameter's value is stored only when it changes (its batch index and
    the value, 16 bytes), and `hps` expands the runs to one value per batch: a
    long fit keeps about 4 bytes a batch (a float32 loss), plus 16 for each value
    a scheduler changes. The record is cleared at the start of each fit.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pending: list[torch.Tensor | float] = []
        self._pending_dtype = torch.float32
        self._chunks: list[torch.Tensor] = []
        self._n_folded = 0  # batches recorded in _chunks; _n adds the pending ones
        self._layout([], 0)
        self._paths: list[tuple[str, Any, str]] = []  # (dotted path, owner, attribute) a ParamScheduler sets
        self._path_starts: dict[str, array] = {}
        self._path_values: dict[str, array] = {}
        self.epoch_ends: list[int] = []
        self.scheduled: list[str] = []

    def _layout(self, keys: list[tuple[str, str, int | None]], n_groups: int) -> None:
        # One column per (param group, hyper-parameter), group-major: in column c, value i
        # holds from batch starts[c][i] until the next start (or the last batch recorded).
        self._keys, self._n_groups = keys, n_groups
        self._getter = itemgetter(*[key for _, key, _ in keys]) if keys else None
        self._starts = [array("q") for _ in range(n_groups * len(keys))]
        self._values = [array("d") for _ in range(n_groups * len(keys))]
        self._last_row: Any = None

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to record
            return
        self._reset()
        scheduler = getattr(self.learn, "param_scheduler", None)
        self.scheduled = list(scheduler.scheds) if scheduler is not None else []
        groups = self.opt.param_groups
        self._layout(hyper_keys(groups[0]), len(groups))
        self._paths = [(name, *resolve_path(self.learn, name, "Recorder")) for name in self.scheduled if "." in name]
        self._path_starts = {name: array("q") for name, _, _ in self._paths}
        self._path_values = {name: array("d") for name, _, _ in self._paths}

    @property
    def _n(self) -> int:
        # The number of batches recorded; derived, so recording a batch writes no attribute.
        return self._n_folded + len(self._pending)

    def after_loss(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.training:
            pending = self._pending
            n = self._n_folded + len(pending)  # this batch's index in the record
            loss = learn.loss
            if not pending:
                self._pending_dtype = loss.dtype  # the dtype to fold numbers kept from CPU losses into
            pending.append(kept(loss))
            # One C-level getter per group; the values are unpacked only when a row changes.
            row = tuple(map(self._getter, learn.opt.param_groups))  # type: ignore[arg-type]  # set at before_fit
            if row != self._last_row:
                self._store(row, n)
            for name, owner, attr in self._paths:  # attributes scheduled by dotted path
                value, values = getattr(owner, attr), self._path_values[name]
                if not values or values[-1] != value:
                    self._path_starts[name].append(n)
                    values.append(value)
            if len(pending) >= _FOLD_EVERY:
                self._fold()

    def _fold(self) -> None:
        # One stack per _FOLD_EVERY batches: a few bytes a batch kept, not a tensor object each.
        pending = self._pending
        if pending:
            if isinstance(pending[0], float):  # numbers, kept from CPU losses (a fit's losses share a device)
                chunk = torch.tensor(pending, dtype=self._pending_dtype)
            else:
                chunk = torch.stack(pending)  # type: ignore[arg-type]  # tensors, kept on their device
            self._chunks.append(chunk)
            self._n_folded += len(self._pending)
            self._pending = []

    def _store(self, row: tuple[Any, ...], n: int) -> None:
        self._last_row = row
        one_key, column = len(self._keys) == 1, 0
        for group_row in row:
            for j, (_, _, index) in enumerate(self._keys):
                value = group_row if one_key else group_row[j]
                if index is not None:
                    value = value[index]
                values = self._values[column]
                if not values or values[-1] != value:
                    self._starts[column].append(n)
                    values.append(value)
                column += 1

    def after_train(self) -> None:
        self._fold()
        self.epoch_ends.append(self._n)

    def state_dict(self) -> dict[str, Any]:
        """Return the record so far, for checkpoints (a resumed fit continues the plots).

        Plain data only (a tensor, lists and numbers), so `torch.load(weights_only=True)` reads it.
        """
        return {"losses": self._loss_tensor().clone(), "keys": [list(k) for k in self._keys],
                "n_groups": self._n_groups, "starts": [a.tolist() for a in self._starts],
                "values": [a.tolist() for a in self._values], "epoch_ends": list(self.epoch_ends),
                "scheduled": list(self.scheduled),
                "paths": {name: [self._path_starts[name].tolist(), self._path_values[name].tolist()]
                          for name in self._path_values}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (or the per-batch rows older checkpoints hold)."""
        losses = state["losses"]
        losses = losses.detach().cpu() if isinstance(losses, torch.Tensor) else torch.tensor(losses, dtype=torch.float64)
        self._pending, self._chunks = [], [losses] if len(losses) else []
        if "rows" in state:  # a checkpoint from before the columns: replay its rows into the columns
            self._layout(self._keys, self._n_groups)
            for n, row in enumerate(state["rows"]):
                row = tuple(tuple(r) if isinstance(r, list) else r for r in row)
                if row != self._last_row:
                    self._store(row, n)
        else:
            keys = [(name, key, index) for name, key, index in state["keys"]]
            if keys:
                self._layout(keys, state["n_groups"])
                self._starts = [array("q", s) for s in state["starts"]]
                self._values = [array("d", v) for v in state["values"]]
            else:  # saved before any fit: nothing recorded, keep this fit's layout
                self._layout(self._keys, self._n_groups)
        self._n_folded = len(losses)
        self.epoch_ends, self.scheduled = list(state["epoch_ends"]), list(state.get("scheduled", []))
        paths = state.get("paths", {})
        self._path_starts = {name: array("q", starts) for name, (starts, _) in paths.items()}
        self._path_values = {name: array("d", values) for name, (_, values) in paths.items()}

    def _loss_tensor(self) -> torch.Tensor:
        # Gather the record into one host tensor, kept as the only chunk: later reads are free.
        self._fold()
        if len(self._chunks) != 1 or self._chunks[0].device.type != "cpu":
            merged = torch.cat([c.cpu() for c in self._chunks]) if self._chunks else torch.zeros(0)
            self._chunks = [merged] if len(merged) else []
        return self._chunks[0] if self._chunks else torch.zeros(0)

    @property
    def losses(self) -> list[float]:
        """The training loss of every recorded batch, as floats (a new list at each read)."""
        return self._loss_tensor().double().tolist()

    @property
    def hps(self) -> dict[str, list[list[float]]]:
        """Hyper-parameter name -> one list per param group -> value per recorded batch."""
        hps: dict[str, list[list[float]]] = {name: [] for name, _, _ in self._keys}
        for column, (starts, values) in enumerate(zip(self._starts, self._values)):
            hps[self._keys[column % len(self._keys)][0]].append(self._expand(starts, values))
        for name, values in self._path_values.items():  # an attribute is one list, as one group
            hps[name] = [self._expand(self._path_starts[name], values)]
        return hps

    def _expand(self, starts: array, values: array) -> list[float]:
        # Value i holds from batch starts[i] until the next start (or the last batch recorded).
        per_batch: list[float] = []
        for i, value in enumerate(values):
            end = starts[i + 1] if i + 1 < len(starts) else self._n
            per_batch += [value] * (end - starts[i])
        return per_batch

    @property
    def iters(self) -> list[int]:
        """The x axis of the plots: 0, 1, ... for each recorded batch."""
        return list(range(self._n))

    @property
    def lrs(self) -> list[float]:
        """The learning rate of the last param group, per recorded batch."""
        return self.hps.get("lr", [[]])[-1]

    @property
    def moms(self) -> list[float]:
        """The momentum (or first beta) of the last param group, per recorded batch."""
        return self.hps.get("mom", [[]])[-1]

    def plot_loss(self, skip_start: int = 0, with_valid: bool = True, path: str | Path | None = None) -> Figure:
        """Plot the training loss per batch (and the validation loss per epoch); return the figure.

        `skip_start` drops the first batches, whose loss is often off the scale.
        The figure is open in pyplot, so `fig.show()` displays it (`plt.close(fig)`
        frees it); `path` saves it instead (PNG by its suffix) and closes it in pyplot.
        """
        fig = new_figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(self.iters[skip_start:], self.losses[skip_start:], label="train")
        avg_stats = getattr(self.learn, "avg_stats", None) if self.learn is not None else None
        if with_valid and avg_stats is not None:
            points = [
                (self.iters[end - 1] + 1, row["valid_loss"])
                for end, row in zip(self.epoch_ends, avg_stats.history)
                if end > 0 and not math.isnan(row.get("valid_loss", math.nan))
            ]
            if points:
                ax.plot(*zip(*points), marker="o", label="valid")
        ax.set_xlabel("training batches")
        ax.set_ylabel("loss")
        ax.legend()
        return finish(fig, path)

    def plot_lr(self, group: int = -1, path: str | Path | None = None, log: bool = False) -> Figure:
        """Plot the learning rate of param group `group` per batch; return the figure.

        `log=True` draws the lr on a log scale, for schedules that span orders of
        magnitude (one-cycle, warm-up from 1e-5). `path` saves and closes the figure,
        as for `plot_loss`.
        """
        fig = new_figure(figsize=(6, 4))
        ax = fig.add_subplot()
        values = self.hps["lr"][group] if self._n else []
        ax.plot(self.iters, values)
        _scale(ax, values, log)
        ax.set_xlabel("training batches")
        ax.set_ylabel("learning rate" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        return finish(fig, path)

    def plot_sched(self, names: list[str] | None = None, path: str | Path | None = None, log: bool = False) -> Figure:
        """Plot one panel per scheduled hyper-parameter; return the figure.

        By default the panels are the names a `ParamScheduler` scheduled in the fit,
        then any other name whose value changed (a torch scheduler, your own
        callback), and `lr` if there are none; one line per param group. `log=True`
        draws each panel whose values are all > 0 on a log scale (a log axis cannot
        show 0, so a panel that reaches it stays linear). `path` saves and closes the
        figure, as for `plot_loss`.
        """
        hps = self.hps
        if names is None:
            changed = [n for n, groups in hps.items() if any(len(set(v)) > 1 for v in groups)]
            names = list(dict.fromkeys([*self.scheduled, *changed])) or ["lr"]
        unknown = [n for n in names if n not in hps]
        if unknown:
            raise ValueError(f"plot_sched: {unknown} were not recorded; the recorded names are {sorted(hps)}.")
        fig = new_figure(figsize=(4 * len(names), 3.5))
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for g, values in enumerate(hps[name]):
                ax.plot(self.iters, values, label=f"group {g}")
            _scale(ax, [v for values in hps[name] for v in values], log)
            ax.set_title(name + (" (log scale)" if ax.get_yscale() == "log" else ""))
            ax.set_xlabel("training batches")
            if self._n_groups > 1:
                ax.legend()
        return finish(fig, path)


def _scale(ax: Any, values: list[float], log: bool) -> None:
    if log and values and min(values) > 0:
        ax.set_yscale("log")
