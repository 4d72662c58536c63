"""`Recorder`: per-batch training loss and hyper-parameters, and their plots."""

from __future__ import annotations

import math
from operator import itemgetter
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from loopkit import Callback

from ._dist import is_main_process
from ._hypers import hyper_keys


class Recorder(Callback):
    """Record the loss and every hyper-parameter of every param group, per training batch.

    Events: before_fit, after_loss, after_train. Reads: training, loss, opt, epoch,
    train_iter, `learn.avg_stats.history` (for the validation curve, when present) and
    `learn.param_scheduler.scheds` (the scheduled names, at `before_fit`).
    Writes on the learner: nothing.
    Publishes: `losses` (training loss per batch), `hps` (name -> one list per param
    group -> value per batch; `mom` is momentum or Adam's first beta), `lrs` and
    `moms` (the last param group's values, as fastai has them), `epoch_ends`
    (number of batches recorded at the end of each training phase), `scheduled` (the
    names a `ParamScheduler` scheduled in the fit).
    order = 0: after `ParamScheduler` (-50) has set this batch's hyper-parameters,
    and after `TerminateOnNaN` (-10), whose `CancelFit` at `after_loss` comes first,
    so the non-finite loss that stops a fit is never recorded (as in fastai). A
    callback of yours that cancels a batch at `after_loss` needs an order below 0
    for that batch to go unrecorded.

    Losses stay on the device while training; reading `losses` syncs once.
    The record is cleared at the start of each fit.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._chunks: list[torch.Tensor] = []
        self._losses: list[float] = []
        self._rows: list[tuple[Any, ...]] = []
        self._keys: list[tuple[str, str, int | None]] = []
        self._n_groups = 0
        self.epoch_ends: list[int] = []
        self.scheduled: list[str] = []

    def before_fit(self) -> None:
        self._reset()
        scheduler = getattr(self.learn, "param_scheduler", None)
        self.scheduled = list(scheduler.scheds) if scheduler is not None else []
        groups = self.opt.param_groups
        self._n_groups = len(groups)
        self._keys = hyper_keys(groups[0])
        self._getter = itemgetter(*[key for _, key, _ in self._keys])

    def after_loss(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.training:
            self._pending.append(learn.loss.detach())
            # One C-level getter per group; names are unpacked only when read.
            self._rows.append(tuple(map(self._getter, learn.opt.param_groups)))

    def after_train(self) -> None:
        # One stack per phase keeps the per-batch cost at a detach and an append.
        if self._pending:
            self._chunks.append(torch.stack(self._pending))
            self._pending = []
        self.epoch_ends.append(len(self._rows))

    def state_dict(self) -> dict[str, Any]:
        """Return the record so far, for checkpoints (a resumed fit continues the plots)."""
        return {"losses": list(self.losses), "rows": list(self._rows), "epoch_ends": list(self.epoch_ends),
                "scheduled": list(self.scheduled)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self._pending, self._chunks = [], []
        self._losses, self._rows = list(state["losses"]), [tuple(r) if isinstance(r, (list, tuple)) else r for r in state["rows"]]
        self.epoch_ends, self.scheduled = list(state["epoch_ends"]), list(state.get("scheduled", []))

    @property
    def losses(self) -> list[float]:
        """The training loss of every recorded batch, as floats."""
        if self._pending:
            self._chunks.append(torch.stack(self._pending))
            self._pending = []
        if self._chunks:
            self._losses += torch.cat([c.float() for c in self._chunks]).tolist()
            self._chunks = []
        return self._losses

    @property
    def hps(self) -> dict[str, list[list[float]]]:
        """Hyper-parameter name -> one list per param group -> value per recorded batch."""
        one_key = len(self._keys) == 1
        hps = {}
        for j, (name, _, index) in enumerate(self._keys):
            per_group = []
            for g in range(self._n_groups):
                values = [row[g] if one_key else row[g][j] for row in self._rows]
                per_group.append([v[index] for v in values] if index is not None else values)
            hps[name] = per_group
        return hps

    @property
    def iters(self) -> list[int]:
        """The x axis of the plots: 0, 1, ... for each recorded batch."""
        return list(range(len(self._rows)))

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
        `path` also saves the figure (PNG by its suffix).
        """
        fig = Figure(figsize=(6, 4), layout="tight")
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
        return _saved(fig, path)

    def plot_lr(self, group: int = -1, path: str | Path | None = None) -> Figure:
        """Plot the learning rate of param group `group` per batch; return the figure."""
        fig = Figure(figsize=(6, 4), layout="tight")
        ax = fig.add_subplot()
        ax.plot(self.iters, self.hps["lr"][group] if self._rows else [])
        ax.set_xlabel("training batches")
        ax.set_ylabel("learning rate")
        return _saved(fig, path)

    def plot_sched(self, names: list[str] | None = None, path: str | Path | None = None) -> Figure:
        """Plot one panel per scheduled hyper-parameter; return the figure.

        By default the panels are the names a `ParamScheduler` scheduled in the fit,
        then any other name whose value changed (a torch scheduler, your own
        callback), and `lr` if there are none; one line per param group.
        """
        hps = self.hps
        if names is None:
            changed = [n for n, groups in hps.items() if any(len(set(v)) > 1 for v in groups)]
            names = list(dict.fromkeys([*self.scheduled, *changed])) or ["lr"]
        unknown = [n for n in names if n not in hps]
        if unknown:
            raise ValueError(f"plot_sched: {unknown} were not recorded; the recorded names are {sorted(hps)}.")
        fig = Figure(figsize=(4 * len(names), 3.5), layout="tight")
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for g, values in enumerate(hps[name]):
                ax.plot(self.iters, values, label=f"group {g}")
            ax.set_title(name)
            ax.set_xlabel("training batches")
            if self._n_groups > 1:
                ax.legend()
        return _saved(fig, path)


def _saved(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None and is_main_process():  # under distributed training rank 0 alone writes
        fig.savefig(path)
    return fig
