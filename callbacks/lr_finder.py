"""The learning-rate finder: `LRFinder` sweeps the lr over training batches; `LRFindResult` holds the sweep.

`learn.lr_find()` runs the sweep inside `preserve_state` and returns the result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import distributed as dist

from loopkit import Callback, CancelFit, CancelValidate

from ._plot import finish, new_figure
from ._hypers import check_number
from .schedule import sched_exp

_SMOOTHING = 0.98  # weight of the past in the loss's moving average, as fastai's LR finder
_DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this many times its best


class LRFindResult(float):
    """What `learn.lr_find()` returns: the suggested lr, with the sweep and its plot.

    It is a float, the suggested lr (`lr_steep`), so it can be passed where an lr
    goes: `learn.fit_one_cycle(5, learn.lr_find())`. `lr_steep` is the lr where the
    smoothed loss falls fastest against log(lr), searched from a tenth of the way
    into the sweep (where the moving average is still noisy) up to the lowest loss;
    the first lr if the loss never falls. `lr_min` is the lr of the lowest smoothed
    loss divided by 10. `lrs` and `losses` are the sweep: the lr of each batch and
    the smoothed loss there.
    """

    lr_min: float
    lr_steep: float
    lrs: list[float]
    losses: list[float]

    def __new__(cls, lr_min: float, lr_steep: float, lrs: list[float], losses: list[float]) -> LRFindResult:
        result = super().__new__(cls, lr_steep)
        result.lr_min, result.lr_steep, result.lrs, result.losses = float(lr_min), float(lr_steep), lrs, losses
        return result

    def __repr__(self) -> str:
        return f"LRFindResult(lr_min={self.lr_min!r}, lr_steep={self.lr_steep!r})"

    @classmethod
    def from_sweep(cls, lrs: Sequence[float], losses: Sequence[float]) -> LRFindResult:
        """Compute the suggestions for a sweep of `lrs` and their smoothed `losses`.

        Raises `ValueError` if no loss is finite.
        """
        lr_arr, loss_arr = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
        finite = np.isfinite(loss_arr)
        if not finite.any():
            raise ValueError(
                f"lr_find: none of the {len(loss_arr)} recorded losses is finite, so there is nothing to suggest; "
                "check the model and data with a plain fit, or lower start_lr."
            )
        lr_arr, loss_arr = lr_arr[finite], loss_arr[finite]
        lowest = int(np.argmin(loss_arr))
        steep = 0
        if lowest > 0:
            slopes = np.gradient(loss_arr, np.log(lr_arr))
            # the moving average has seen only a few batches in the first tenth of the sweep,
            # so batch-to-batch noise there can look steeper than the real descent
            first = len(loss_arr) // 10 if len(loss_arr) // 10 < lowest else 0
            steep = first + int(np.argmin(slopes[first : lowest + 1]))
        return cls(float(lr_arr[lowest] / 10), float(lr_arr[steep]), list(map(float, lrs)), list(map(float, losses)))

    def plot(self, path: str | Path | None = None) -> Figure:
        """Plot the smoothed loss against the lr on a log axis, both suggestions marked; return the figure.

        The figure is open in pyplot, so `fig.show()` displays it (`plt.close(fig)`
        frees it); `path` saves it instead (PNG by its suffix; under distributed
        training only rank 0 writes) and closes it in pyplot.
        """
        lrs, losses = np.asarray(self.lrs), np.asarray(self.losses)
        fig = new_figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(lrs, losses)
        ax.set_xscale("log")
        finite = np.isfinite(losses)
        log_lrs, good = np.log(lrs[finite]), losses[finite]
        for lr, marker, label in ((self.lr_steep, "o", "steepest"), (self.lr_min, "v", "minimum / 10")):
            ax.plot([lr], [np.interp(np.log(lr), log_lrs, good)], marker, label=f"{label}: {lr:.2e}")
        # keep a diverging tail from flattening the interesting part of the curve
        lowest = int(np.argmin(good))
        top = good[: lowest + 1].max()
        if good.max() > top > good[lowest]:
            ax.set_ylim(good[lowest] - 0.1 * (top - good[lowest]), top + 0.2 * (top - good[lowest]))
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("smoothed loss")
        ax.legend()
        return finish(fig, path)


class LRFinder(Callback):
    """Raise the lr exponentially over training batches and record the smoothed loss.

    Events: before_fit, before_batch, after_loss, before_validate, after_fit.
    Reads: model, opt, training, loss.
    Writes on the learner: the `lr` of every param group, at each training batch;
    at `after_fit`, the model's parameters, buffers, gradients and train/eval modes
    and the optimizer's state, put back bitwise as they were at `before_fit`.
    Raises `CancelValidate` (validation is skipped) and `CancelFit` (after `num_it`
    batches, or once the loss diverges).
    Publishes: `lrs` and `losses` (the lr and the smoothed loss of each batch), and
    `result` (an `LRFindResult` with the suggestions); `ProgressBar` reads these
    and `num_it` to show the sweep as one bar and print the suggestion.
    order = 100: after every other callback, so its lr wins over schedulers at
    `before_batch` and its restore at `after_fit` comes last (after, e.g., a
    `SaveModel(restore_best=True)` has loaded weights).

    Batch `i` of `num_it` trains at `start_lr * (end_lr / start_lr) ** (i / (num_it - 1))`,
    so the last one is at `end_lr`. The loss is read on the host once per batch
    (the stop decision needs it) and smoothed by an exponential moving average.
    With `stop_div`, the sweep stops once the smoothed loss is not finite or
    exceeds 4 times its lowest value. `learn.lr_find()` runs it for enough epochs
    and also puts back the rest of the learner (see `preserve_state`).
    """

    order = 100

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True) -> None:
        start_lr, end_lr = check_number("LRFinder", "start_lr", start_lr), check_number("LRFinder", "end_lr", end_lr)
        if not 0 < start_lr < end_lr:
            raise ValueError(
                f"LRFinder: need 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}; "
                "the defaults 1e-7 and 10 suit most models."
            )
        if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
            raise ValueError(f"LRFinder: num_it is the number of batches to sweep and must be an int >= 2, got {num_it!r}.")
        self.start_lr, self.end_lr, self.num_it, self.stop_div = start_lr, end_lr, num_it, bool(stop_div)
        self._sched = sched_exp(start_lr, end_lr)
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._saved: dict[str, Any] | None = None

    def epochs_for(self, dl: Any) -> int:
        """Return how many epochs of loader `dl` cover `num_it` batches (`num_it` if it has no length)."""
        try:
            n_batches = len(dl)
        except TypeError:  # no length, or a DataLoader over an IterableDataset
            n_batches = 0
        return -(-self.num_it // n_batches) if n_batches else self.num_it

    def before_fit(self) -> None:
        self.lrs, self.losses = [], []
        self._average, self._best = 0.0, math.inf
        model = self.model
        tensors = [*model.parameters(), *model.buffers()]
        self._saved = {
            "tensors": [(t, t.detach().clone()) for t in tensors],
            "grads": [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()],
            "modes": [(m, m.training) for m in model.modules()],
            "opt": copy.deepcopy(self.opt.state_dict()),  # state_dict() shares the live buffers: copy them
        }

    def before_batch(self) -> None:
        if self.training:
            lr = self._sched(len(self.lrs) / (self.num_it - 1))
            for group in self.opt.param_groups:
                group["lr"] = lr

    def after_loss(self) -> None:
        if not self.training:
            return
        self.lrs.append(self.opt.param_groups[0]["lr"])
        loss = float(self.loss.detach())
        self._average = _SMOOTHING * self._average + (1 - _SMOOTHING) * loss
        smoothed = self._average / (1 - _SMOOTHING ** len(self.lrs))  # debiased, as in Adam
        self.losses.append(smoothed)
        if math.isfinite(smoothed):
            self._best = min(self._best, smoothed)
        if self.stop_div and (not math.isfinite(smoothed) or smoothed > _DIVERGED * self._best):
            raise CancelFit
        if len(self.lrs) >= self.num_it:
            raise CancelFit  # the last loss is recorded; its step would be undone anyway

    def before_validate(self) -> None:
        raise CancelValidate

    def after_fit(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:  # the fit failed before our before_fit
            return
        with torch.no_grad():
            for tensor, value in saved["tensors"]:
                tensor.copy_(value)
        for param, grad in saved["grads"]:
            param.grad = grad
        for module, mode in saved["modes"]:
            module.training = mode
        self.opt.load_state_dict(saved["opt"])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank saw its own shard's losses: all take rank 0's sweep, so all get one suggestion.
            sweep = [self.lrs, self.losses]
            dist.broadcast_object_list(sweep, src=0)
            self.lrs, self.losses = sweep

    @property
    def result(self) -> LRFindResult:
        """The suggestions and the sweep, as an `LRFindResult`."""
        return LRFindResult.from_sweep(self.lrs, self.losses)
