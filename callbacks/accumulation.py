"""Train with a bigger batch than fits in memory: `GradientAccumulation`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from loopkit import Callback, CancelStep

from .stats import batch_size


class GradientAccumulation(Callback):
    """Step the optimizer once per window of at least `n_samples` training samples.

    Events: before_fit, before_train, before_batch, before_backward,
    after_cancel_backward, after_backward, before_step, after_cancel_step,
    after_step, after_train, after_epoch, after_fit.
    Reads: training, iter, n_iter, dl, xb, yb, loss, opt, model, and
    `learn.distributed.world_size` / `.global_sizes` when `Distributed` is present.
    Writes on the learner: `loss` (scaled by `n / n_samples` before backward, for
    a micro-batch of `n` samples), `dl` (training loaders without a length only:
    wrapped to look one batch ahead); and, under DDP, the wrapped model's
    `require_backward_grad_sync` flag.
    Publishes: `n_samples`; `will_step` (set at `before_batch` of every training
    batch: this micro-batch closes its window, so the optimizer steps after its
    backward); `n_window` (samples whose gradients the open window holds);
    `n_steps` (optimizer steps taken in this fit).
    order = -60: after `Device` (-90); and in `before_step` before `MixedPrecision`
    (-25) unscales and `GradientClip` (-10) clips, so both act once per window, on
    the window's complete gradient.

    Micro-batches join the open window until it holds at least `n_samples`
    samples; the micro-batch that reaches that steps. The last micro-batch of a
    training phase always steps, so a short last window is stepped, never dropped,
    and a window never spans two epochs. Gradients are summed as per-sample sums
    and divided by the samples actually in the window before the step, so the
    update equals one step on the window's samples concatenated. This assumes a
    mean-reduced loss (`reduction="mean"`, as `AvgStats` assumes too).
    `AvgStats` and `Recorder` read the loss at `after_loss`, before it is scaled,
    so they report the true per-sample loss of every micro-batch.

    On other cancels: `CancelStep` on a micro-batch that does not close its window
    is how this callback skips the step (gradients are kept). A `CancelStep` from
    another callback on the window's last micro-batch (e.g. `MixedPrecision` on
    inf/nan gradients) skips the window's update and drops its gradients, so the
    next window starts empty. A micro-batch cancelled before its backward ran
    (`CancelBatch`, `CancelBackward`) adds nothing and the window stays open; if
    it was the phase's last, or the phase or fit is cancelled, the open window's
    gradients are dropped at `after_train` (or `after_epoch`, `after_fit`), so
    `.grad` is always `None` after a training phase.

    Under `Distributed` with more than one process, windows are counted in global
    samples (`learn.distributed.global_sizes`, the same on every rank), so all ranks
    close a window at the same micro-batch and the update equals one step on the
    window's samples from every rank. On micro-batches that don't close their
    window, DDP's gradient all-reduce is skipped (`require_backward_grad_sync`
    is false from `before_batch`, DDP's `no_sync`); the closing micro-batch
    all-reduces the whole window's gradients once.

    Checkpoints: `state_dict` holds `n_steps` and, written inside an open window (a
    mid-epoch checkpoint), `n_window` and the window's gradients, so a fit resumed from
    it continues the window exactly: they are put back at the resumed training phase's
    `before_train`. Under `Distributed` the gradients are rank 0's: a window that is
    open at a mid-epoch checkpoint does not continue exactly on the other ranks.
    """

    order = -60

    def __init__(self, n_samples: int) -> None:
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(
                f"GradientAccumulation(n_samples) steps once at least n_samples samples were accumulated; "
                f"it must be an int >= 1, got {n_samples!r}. For 4 micro-batches of 32, pass 128."
            )
        self.n_samples = n_samples
        self.will_step = False
        self.n_window = 0
        self.n_steps = 0
        self._lookahead: _Lookahead | None = None
        self._distributed: Any = None
        self._resumed: dict[str, Any] | None = None  # a checkpoint's open window, for the next training phase

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to accumulate
            return
        self.will_step, self.n_window, self.n_steps = False, 0, 0
        self._resumed = None

    def before_train(self) -> None:
        self.will_step, self.n_window = False, 0
        if self._resumed is not None:  # the phase a mid-epoch checkpoint interrupted: reopen its window
            self._reopen(self._resumed)
            self._resumed = None
        learn = self.learn
        distributed = getattr(learn, "distributed", None)
        self._distributed = distributed if distributed is not None and distributed.world_size > 1 else None
        if learn.n_iter is None:  # no length: look one batch ahead to know which is the last
            self._lookahead = _Lookahead(learn.dl)  # type: ignore[arg-type]  # the loop iterates the phase's dl
            learn.dl = self._lookahead
        else:
            self._lookahead = None

    def before_batch(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if not learn.training:
            return
        if self._distributed is not None:
            self._n = self._distributed.global_sizes[learn.iter]  # every rank counts the same window
        else:
            self._n = batch_size(learn.yb if learn.yb else learn.xb)
        self._n_backward = 0
        self._step_cancelled = False
        if self._lookahead is not None:
            last = self._lookahead.is_last
        else:
            last = learn.iter == learn.n_iter - 1  # type: ignore[operator]  # n_iter is known here
        self.will_step = last or self.n_window + self._n >= self.n_samples
        if isinstance(learn.model, DistributedDataParallel):
            # DDP reads this in forward: all-reduce gradients only on the window's last micro-batch.
            learn.model.require_backward_grad_sync = self.will_step

    def before_backward(self) -> None:
        # Per-sample sums (up to the constant n_samples) accumulate in .grad; before_step
        # divides by the samples actually in the window.
        self.learn.loss = self.learn.loss * (self._n / self.n_samples)
        self._n_backward = self._n

    def after_cancel_backward(self) -> None:
        self._n_backward = 0

    def after_backward(self) -> None:
        self.n_window += self._n_backward

    def before_step(self) -> None:
        if not self.will_step:
            raise CancelStep
        if self.n_window != self.n_samples:
            # divide by samples actually seen, so a short last window is not under-weighted
            factor = self.n_samples / self.n_window
            for group in self.learn.opt.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad.mul_(factor)

    def after_cancel_step(self) -> None:
        self._step_cancelled = True

    def after_step(self) -> None:
        if not self.will_step:
            return
        if self._step_cancelled:
            self.learn.opt.zero_grad(set_to_none=True)
        else:
            self.n_steps += 1
        self.n_window = 0

    def _drop_open_window(self) -> None:
        if self.learn.opt is not None:
            self.learn.opt.zero_grad(set_to_none=True)
        self.n_window, self.will_step, self._lookahead = 0, False, None

    def after_train(self) -> None:
        self._drop_open_window()
        if isinstance(self.model, DistributedDataParallel):
            self.model.require_backward_grad_sync = True

    def after_epoch(self) -> None:
        self._drop_open_window()

    def after_fit(self) -> None:
        self._drop_open_window()

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.learn.opt.param_groups for p in group["params"]]

    def _reopen(self, window: dict[str, Any]) -> None:
        params = self._params()
        grads = window["grads"]
        if len(grads) != len(params) or any(g is not None and g.shape != p.shape for g, p in zip(grads, params)):
            raise ValueError("the checkpoint's open accumulation window does not fit this optimizer's parameters; "
                             "resume with the model and optimizer of the saved run.")  # fmt: skip
        for param, grad in zip(params, grads):
            param.grad = None if grad is None else grad.to(device=param.device, dtype=param.dtype).clone()
        self.n_window = window["n_window"]

    def state_dict(self) -> dict[str, Any]:
        """Return `n_steps` and, inside an open window, its sample count and gradients (on the CPU)."""
        window = None
        if self.n_window and self.learn is not None and self.learn.opt is not None:
            grads = [None if p.grad is None else p.grad.detach().cpu().clone() for p in self._params()]
            window = {"n_window": self.n_window, "grads": grads}
        return {"n_steps": self.n_steps, "window": window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; an open window reopens at the next training phase."""
        window = state["window"]
        if window is not None and not (isinstance(window.get("n_window"), int) and isinstance(window.get("grads"), list)):
            raise ValueError(f"an accumulation window is n_window and a list of gradients, got {sorted(window)}")
        self.n_steps, self._resumed = int(state["n_steps"]), window

    def __repr__(self) -> str:
        return f"GradientAccumulation(n_samples={self.n_samples})"


class _Lookahead:
    """Iterate a loader one batch ahead, so that `is_last` is known when a batch starts."""

    def __init__(self, dl: Iterable[Any]) -> None:
        self.dl = dl
        self.is_last = False

    def __iter__(self) -> Iterator[Any]:
        return self._ahead(iter(self.dl))

    def iter_from(self, start: int) -> Iterator[Any]:
        """Iterate from batch `start` of the epoch, the wrapped loader started there (see `_position.iter_from`)."""
        from ._position import iter_from

        return self._ahead(iter_from(self.dl, start))

    def _ahead(self, it: Iterator[Any]) -> Iterator[Any]:
        end = object()
        current = next(it, end)
        while current is not end:
            following = next(it, end)
            self.is_last = following is end
            yield current
            current = following
