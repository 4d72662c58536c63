"""`TrainEval`: model mode, gradient mode and the loop's progress counters."""

from __future__ import annotations

import torch

from loopkit import Callback


class TrainEval(Callback):
    """Put the model in train or eval mode, disable gradients for validation, count batches.

    Events: before_fit, before_train, before_batch, after_batch, before_validate, after_fit.
    Reads: model, epoch, n_epochs, iter, n_iter, training.
    Writes on the learner: train_iter, pct_train.
    order = -100: every other callback's `before_batch` sees this batch's `pct_train`.

    `pct_train` is `(epoch + iter / n_iter) / n_epochs`: the fraction of this fit's
    training done when the batch starts. For a loader without a length it moves
    once per epoch (`epoch / n_epochs`).
    """

    order = -100
    _grad_was_enabled = True

    def before_fit(self) -> None:
        self._grad_was_enabled = torch.is_grad_enabled()

    def before_train(self) -> None:
        learn = self.learn
        learn.model.train()
        torch.set_grad_enabled(True)
        self._epoch_step = 1.0 / learn.n_iter if learn.n_iter else 0.0

    def before_validate(self) -> None:
        self.model.eval()
        torch.set_grad_enabled(False)

    def before_batch(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.training:
            learn.pct_train = (learn.epoch + learn.iter * self._epoch_step) / learn.n_epochs

    def after_batch(self) -> None:
        learn = self.learn
        if learn.training:
            learn.train_iter += 1

    def after_fit(self) -> None:
        # Validation may have been cut short by a cancel or an error: restore the caller's mode.
        torch.set_grad_enabled(self._grad_was_enabled)
