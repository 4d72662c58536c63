"""Stop a fit early: no improvement for a while (`EarlyStopping`), or a non-finite loss (`TerminateOnNaN`)."""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch

from loopkit import Callback, CancelFit

from ._monitor import Monitor


class EarlyStopping(Callback):
    """Stop the fit when the monitored figure has not improved for `patience` epochs.

    Events: before_fit, after_epoch. Reads: epoch, and `learn.avg_stats.history`.
    Writes on the learner: nothing; raises `CancelFit`.
    Publishes: `best`, `best_epoch`, `wait` (epochs since the last improvement),
    `stopped_epoch` (None unless it stopped the fit).
    order = 70: after AvgStats (-20) has written the row and loggers (60) have logged it.

    An improvement is a value better than `best` by more than `min_delta`
    (`mode="min"`: lower is better; `"max"`: higher). A nan never improves.
    """

    order = 70

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "min") -> None:
        # numbers.Integral takes numpy ints too; int is listed for the type checker
        if isinstance(patience, bool) or not isinstance(patience, (int, numbers.Integral)):
            raise TypeError(
                f"EarlyStopping: patience is a number of epochs and must be an int, got {patience!r}; "
                "pass e.g. patience=3."
            )
        if patience < 1:
            raise ValueError(
                f"EarlyStopping: patience is the number of epochs without improvement to wait and must be >= 1, "
                f"got {patience!r}; pass e.g. patience=3."
            )
        self.monitor, self.patience = Monitor(monitor, mode, min_delta, owner="EarlyStopping"), int(patience)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to watch
            return
        self.monitor.check(self.learn)
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, None

    def after_epoch(self) -> None:
        value = self.monitor.read(self.learn)
        if self.monitor.improved(value, self.best):
            self.best, self.best_epoch, self.wait = value, self.epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.epoch
            raise CancelFit

    def state_dict(self) -> dict[str, Any]:
        """Return the counters, for exact resume."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


class TerminateOnNaN(Callback):
    """Stop the fit on a non-finite loss, before it reaches the weights.

    Events: before_fit, after_loss. Reads: loss, epoch, iter, training.
    Writes on the learner: nothing; raises `CancelFit` and warns where it happened.
    Publishes: `stopped_at` (None, or `(epoch, iter, "train" | "valid")`).
    Name on the learner: `learn.terminate_on_nan`.
    order = -10: its `after_loss` runs before `Recorder`'s (0), so the loss that
    stops the fit is never recorded (as in fastai); after `MixedPrecision` (-25)
    has left autocast for the batch.

    The check runs at `after_loss`, so a nan loss it sees is never back-propagated
    or stepped: the model keeps the weights of the last good step. It reads the
    loss on the host every batch (one sync per batch); `check_every=N` checks every
    N-th batch of each phase instead, which is cheaper but lets a nan between
    checks reach the weights.
    """

    name = "terminate_on_nan"
    order = -10

    def __init__(self, check_every: int = 1) -> None:
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}.")
        self.check_every = check_every
        self.stopped_at: tuple[int, int, str] | None = None

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to stop
            return
        self.stopped_at = None

    def after_loss(self) -> None:
        learn = self.learn
        if learn.evaluating:  # an evaluation reports what it sees; it has no fit to stop
            return
        if learn.iter % self.check_every == 0 and not bool(torch.isfinite(learn.loss.detach()).all()):
            phase = "train" if learn.training else "valid"
            self.stopped_at = (learn.epoch, learn.iter, phase)
            warnings.warn(
                f"TerminateOnNaN: the loss is {learn.loss.item()} at epoch {learn.epoch}, {phase} batch "
                f"{learn.iter}; stopping the fit before this batch reaches the weights.",
                stacklevel=2,
            )
            raise CancelFit
