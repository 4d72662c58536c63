"""Debug runs: `ShortEpoch` (a few batches per epoch) and `OverfitBatches` (can the model learn a batch?)."""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from loopkit import Callback

from ._dist import is_main_process


class FirstBatches:
    """Iterate over the first `n` batches of `dl` only; `len()` is `min(n, len(dl))` when `dl` has one."""

    def __init__(self, dl: Iterable[Any], n: int) -> None:
        self.dl, self.n = dl, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.dl), self.n)

    def __len__(self) -> int:
        return min(self.n, len(self.dl))  # type: ignore[arg-type]  # TypeError for a loader without one, as len(dl)

    def __repr__(self) -> str:
        return f"FirstBatches({self.dl!r}, {self.n})"


class ShortEpoch(Callback):
    """Cut every training and validation phase of a fit to a few batches, for a quick run through the loop.

    Events: before_fit, before_train, before_validate. Reads: train_dl, valid_dl,
    dl, n_iter, evaluating. Writes on the learner: `dl` (a `FirstBatches` of the
    phase's loader) and `n_iter` (its length), at the start of each phase.
    order = -110: before `TrainEval` (-100) reads `n_iter` at `before_train`, so
    `pct_train` runs over the short epoch and schedules finish.

    `limit` is a number of batches (an int >= 1) or a fraction of each loader (a
    float in (0, 1], rounded, at least one batch; the loaders must have a length).
    Evaluations (`validate`, `get_preds`, `predict`) are not cut. Raises
    `ValueError` at construction for a limit of 0 or less, or a fraction above 1.
    """

    order = -110

    def __init__(self, limit: int | float) -> None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Real):
            raise TypeError(f"ShortEpoch: limit is a number of batches or a fraction, got {limit!r}.")
        if isinstance(limit, numbers.Integral):
            if limit < 1:
                raise ValueError(
                    f"ShortEpoch: limit must be at least 1 batch, got {limit!r}; ShortEpoch(1) runs one training "
                    "and one validation batch per epoch (for a fraction of the batches, pass a float such as 0.1)."
                )
        elif not 0 < limit <= 1:
            raise ValueError(
                f"ShortEpoch: a float limit is the fraction of each loader to run and must be in (0, 1], "
                f"got {limit!r}; for a number of batches pass an int, such as ShortEpoch(5)."
            )
        self.limit: int | float = limit

    def before_fit(self) -> None:
        if self.learn.evaluating or isinstance(self.limit, numbers.Integral):
            return
        for role, dl in (("train", self.learn.train_dl), ("valid", self.learn.valid_dl)):
            if dl is not None and _length(dl) is None:
                raise ValueError(
                    f"ShortEpoch({self.limit}): the {role} loader has no length, so a fraction of it is unknown; "
                    "pass a number of batches, such as ShortEpoch(5)."
                )

    def before_train(self) -> None:
        self._shorten()

    def before_validate(self) -> None:
        if not self.learn.evaluating:
            self._shorten()

    def _shorten(self) -> None:
        learn = self.learn
        n_iter = learn.n_iter
        if isinstance(self.limit, numbers.Integral):
            n = int(self.limit)
        else:
            n = max(1, round(float(self.limit) * (n_iter or 0)))
        learn.dl = FirstBatches(learn.dl, n)  # type: ignore[arg-type]  # the loop iterates whatever dl is
        learn.n_iter = min(n, n_iter) if n_iter is not None else None


def _length(dl: Any) -> int | None:
    try:
        return len(dl)
    except TypeError:
        return None


class OverfitBatches(Callback):
    """Train on the same first `n_batches` batches every epoch and report whether the loss falls.

    The "fit one batch" check of the fastai lessons: a model, loss and optimizer
    that work drive the loss on a handful of batches towards zero; if it does not
    fall, look at the lr, the loss function and the data before training for real.

    Events: before_fit, before_train, before_validate, after_loss, after_train,
    after_fit. Reads: train_dl, n_epochs, training, loss, evaluating.
    Writes on the learner: `dl` and `n_iter` at the start of each phase (the
    cached batches; validation, if there is a valid loader, runs on them too, in
    eval mode).
    Publishes: `batches` (the cached batches), `losses` (the mean training loss of
    each epoch, floats, after the fit), `fell` (`True` when the last epoch's mean is
    below `(1 - min_drop)` times the first's; `None` before two epochs have run).
    order = -110: before `TrainEval` (-100) reads `n_iter`.

    At the end of the fit it prints one line with the first and last epoch's loss
    (rank 0 only) and warns when the loss did not fall. The losses stay on the
    device during the fit and are read once, at `after_fit`. Raises `ValueError`
    at `before_fit` for a fit of fewer than 2 epochs or a loader with fewer
    than `n_batches` batches, before any training.
    """

    order = -110

    def __init__(self, n_batches: int = 1, min_drop: float = 0.5) -> None:
        if not isinstance(n_batches, int) or isinstance(n_batches, bool) or n_batches < 1:
            raise ValueError(f"OverfitBatches: n_batches must be an int >= 1, got {n_batches!r}.")
        if not isinstance(min_drop, numbers.Real) or not 0 <= min_drop < 1:
            raise ValueError(
                f"OverfitBatches: min_drop is the fraction the loss must lose, in [0, 1), got {min_drop!r}; "
                "0.5 asks for the last epoch's loss to be at most half the first's."
            )
        self.n_batches: int = n_batches
        self.min_drop: float = float(min_drop)
        self.batches: list[Any] = []
        self.losses: list[float] = []
        self.fell: bool | None = None
        self._pending: list[torch.Tensor] = []
        self._epoch_means: list[torch.Tensor] = []

    def before_fit(self) -> None:
        learn = self.learn
        if learn.evaluating:
            return
        if learn.n_epochs < 2:
            raise ValueError(
                f"OverfitBatches compares the first epoch's loss with the last, so it needs at least 2 epochs, got "
                f"fit({learn.n_epochs}); fit for more, e.g. learn.fit(20, cbs=OverfitBatches({self.n_batches}))."
            )
        batches = list(itertools.islice(learn.train_dl, self.n_batches))
        if len(batches) < self.n_batches:
            raise ValueError(
                f"OverfitBatches({self.n_batches}): the train loader yields only {len(batches)} batch(es); "
                f"pass n_batches={max(len(batches), 1)} or fewer."
            )
        self.batches, self.losses, self.fell = batches, [], None
        self._pending, self._epoch_means = [], []

    def before_train(self) -> None:
        self.learn.dl, self.learn.n_iter = self.batches, len(self.batches)

    def before_validate(self) -> None:
        if not self.learn.evaluating:
            self.learn.dl, self.learn.n_iter = self.batches, len(self.batches)

    def after_loss(self) -> None:
        learn = self.learn
        if learn.training and not learn.evaluating:
            self._pending.append(learn.loss.detach().float())

    def after_train(self) -> None:
        if self._pending:
            self._epoch_means.append(torch.stack(self._pending).mean())
        self._pending = []

    def after_fit(self) -> None:
        if self.learn.evaluating or not self._epoch_means:
            return
        self.losses = torch.stack(self._epoch_means).tolist()  # the fit's one host read
        self._epoch_means = []
        if len(self.losses) < 2:
            return
        first, last = self.losses[0], self.losses[-1]
        self.fell = last < (1 - self.min_drop) * first
        what = f"the loss on the first {self.n_batches} batch(es) went from {first:.4g} to {last:.4g} in {len(self.losses)} epochs"
        if self.fell:
            if is_main_process():
                print(f"OverfitBatches: {what}: it falls, so the model can learn.")
        else:
            warnings.warn(
                f"OverfitBatches: {what}, less than the {self.min_drop:.0%} drop asked for. Check the lr "
                "(learn.lr_find()), that loss_func fits the model's output, and that the targets match the "
                "inputs; or train for more epochs.",
                stacklevel=2,
            )
