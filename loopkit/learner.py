"""The `Learner` and its fit loop.

`Learner.fit` is the whole loop, top to bottom. Every event fires from it, and
the `try/except` for each cancel exception sits next to the stage it cancels:

    try: before_<stage>; <body>
    except Cancel<Stage>: after_cancel_<stage>
    after_<stage>

so a cancel unwinds the stages inside it without their `after_*` events, and
`after_fit` alone fires whatever happens (it is the place for cleanup).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._checks import (
    check_eval_loader,
    check_loader,
    check_lr,
    empty_error,
    length,
    loss_error,
    note_misplaced_cancel,
    split_dls,
)
from ._interrupt import StepGuard
from .callback import Callback
from .events import (
    EVENTS,
    CancelBackward,
    CancelBatch,
    CancelEpoch,
    CancelException,
    CancelFit,
    CancelStep,
    CancelTrain,
    CancelValidate,
)

if TYPE_CHECKING:
    from loopkit.callbacks._position import TrainPhase
    from loopkit.callbacks.checkpoint import _Checkpoint
    from loopkit.callbacks.lr_finder import LRFindResult
    from loopkit.callbacks.stats import PhaseStats

Batch = tuple[Any, ...] | list[Any]
OptFunc = Callable[..., torch.optim.Optimizer]
Metric = Any  # a function f(pred, *yb) -> tensor, an object with update/compute/reset, or a (name, metric) pair

_STATE_DEFAULTS: dict[str, Any] = dict(
    n_epochs=0, start_epoch=0, start_iter=0, epoch=0, training=False, dl=None, iter=0, n_iter=None, train_iter=0,
    pct_train=0.0, batch=None, xb=(), yb=(), pred=None, loss=None, evaluating=False,
)  # fmt: skip


class Learner:
    """Train `model` on `dls` with `loss_func`, firing events for callbacks.

    `dls` is a pair `(train, valid)` or an object with `.train` and `.valid`;
    `valid` may be `None`. A batch is a tuple or list whose first `n_inp` items
    are the inputs. The optimizer is `opt_func(model.parameters(), lr=lr)`,
    made on the first fit and kept after; assign `learn.opt` before the first
    fit to use your own (param groups for discriminative learning rates).
    `metrics` go to the default `AvgStats`. With `default_cbs=False` only
    `TrainEval` is added. `distributed=True` adds `Distributed`, for scripts
    started by `torchrun` (loopkit warns when torchrun started several processes
    and it is off, since each would then train alone on all the data).
    `device` adds `Device(device)`, which moves the model and every batch there:
    `"auto"` picks CUDA, else MPS, else CPU; `None` (the default) moves nothing.
    """

    # The contract's state (see docs/state.md); the loop writes these, callbacks read them.
    model: nn.Module
    train_dl: Iterable[Batch]
    valid_dl: Iterable[Batch] | None
    loss_func: Callable[..., torch.Tensor]
    opt_func: OptFunc
    opt: torch.optim.Optimizer  # None until the first fit makes it
    lr: float
    n_inp: int
    cbs: list[Callback]
    n_epochs: int
    start_epoch: int
    start_iter: int
    epoch: int
    training: bool
    dl: Iterable[Batch] | None
    iter: int
    n_iter: int | None
    train_iter: int
    pct_train: float
    batch: Batch | None
    xb: tuple[Any, ...]
    yb: tuple[Any, ...]
    pred: Any
    loss: torch.Tensor  # None until the first batch, and for batches without targets
    evaluating: bool  # True during validate, get_preds and predict
    _train_phase: TrainPhase | None = None  # where the current training phase started (for mid-epoch checkpoints)

    def __init__(
        self,
        model: nn.Module,
        dls: Any,
        loss_func: Callable[..., torch.Tensor],
        opt_func: OptFunc = torch.optim.SGD,
        lr: float = 1e-2,
        cbs: Callback | Iterable[Callback] | None = None,
        metrics: Metric | Sequence[Metric] | None = None,
        n_inp: int = 1,
        default_cbs: bool = True,
        distributed: bool = False,
        device: str | torch.device | int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if isinstance(loss_func, type):
            raise TypeError(
                f"loss_func is the class {loss_func.__name__}; pass an instance ({loss_func.__name__}()) "
                "or a function such as F.cross_entropy."
            )
        if not callable(loss_func):
            raise TypeError(f"loss_func must be callable, e.g. F.cross_entropy; got {loss_func!r}.")
        if not callable(opt_func):
            raise TypeError(f"opt_func must build an optimizer, e.g. torch.optim.SGD; got {opt_func!r}.")
        check_lr(lr, "lr")
        if not isinstance(n_inp, int) or isinstance(n_inp, bool) or n_inp < 1:
            raise ValueError(f"n_inp is the number of inputs in a batch and must be an int >= 1, got {n_inp!r}.")
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            metrics = [metrics]  # type: ignore[list-item]  # one metric, as cbs takes one callback
        self.model, self.loss_func, self.opt_func, self.lr, self.n_inp = model, loss_func, opt_func, lr, n_inp
        self.dls = dls  # also sets train_dl and valid_dl
        self.opt = None  # type: ignore[assignment]  # made at the start of the first fit
        self.__dict__.update(_STATE_DEFAULTS)
        self.cbs = []
        self._by_name: dict[str, Callback] = {}
        self._dispatch: dict[str, list[tuple[Callback, Callable[[], None]]]] = {e: [] for e in EVENTS}
        self._warned_returns: set[tuple[type, str]] = set()
        self._step_guard = StepGuard()
        self._evaluation = ""

        from loopkit.callbacks import AvgStats, Device, Distributed, ProgressBar, Recorder, TrainEval

        given = list(_flatten([cbs]))
        defaults: list[Callback] = [TrainEval()]
        if default_cbs:
            # A default the user passes in cbs (say AvgStats(metrics, train_metrics=True)) replaces ours.
            defaults += [cb for cb in (AvgStats(metrics), Recorder(), ProgressBar())
                         if not any(type(other) is type(cb) for other in given)]  # fmt: skip
        if metrics and not any(isinstance(cb, AvgStats) and cb.metrics == list(metrics) for cb in defaults):
            raise ValueError(
                "metrics are computed by AvgStats, and this learner's AvgStats is one you passed in cbs "
                "(or default_cbs=False); give the metrics to it: AvgStats(metrics, ...)."
            )
        if device is not None:
            defaults.append(Device(device))
        if distributed:
            defaults.append(Distributed())
        elif Distributed.launched():
            warnings.warn(
                "this script was started as one of several processes (WORLD_SIZE > 1) but distributed training "
                "is off, so every process trains alone on all the data; pass Learner(..., distributed=True).",
                stacklevel=2,
            )
        self.add_cbs(defaults, given)

    @property
    def dls(self) -> Any:
        """The loaders as given; assigning new ones also sets `train_dl` and `valid_dl`."""
        return self._dls

    @dls.setter
    def dls(self, dls: Any) -> None:
        self.train_dl, self.valid_dl = split_dls(dls)
        self._dls = dls

    # -- callbacks -------------------------------------------------------------------------

    def add_cbs(self, *cbs: Callback | Iterable[Callback]) -> Learner:
        """Add callbacks (instances, or lists of them) and recompute the dispatch lists.

        All are checked before any is added, so a bad one leaves the learner unchanged.
        """
        new = list(_flatten(cbs))
        if not new:
            return self
        names: dict[str, Callback] = dict(self._by_name)
        for cb in new:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {cb!r}; pass an instance, not the class.")
            type(cb).check_events()
            if cb.learn is not None or sum(cb is other for other in new) > 1:
                where = "this" if cb.learn is self or cb.learn is None else "another"
                raise ValueError(f"{cb!r} is already added to {where} learner; add each instance once.")
            name = cb.cb_name
            if name in names:
                raise ValueError(
                    f"a callback named {name!r} is already added ({names[name]!r}); "
                    f"set `name` on {type(cb).__name__} to add a second one."
                )
            if name in self.__dict__ or hasattr(type(self), name):
                raise ValueError(
                    f"{type(cb).__name__}'s name {name!r} is taken by a learner attribute; "
                    "set `name` on the class to something else."
                )
            names[name] = cb
        for cb in new:
            cb.learn = self
        self.cbs.extend(new)
        self._by_name = names
        self._sort_cbs()
        return self

    def remove_cbs(self, *cbs: Callback | type[Callback] | Iterable[Callback]) -> Learner:
        """Remove callbacks given as instances, or every callback of a given class."""
        cbs = tuple(_flatten(cbs))
        if not cbs:
            return self
        for cb in cbs:
            if isinstance(cb, type):
                found = [c for c in self.cbs if isinstance(c, cb)]
            else:
                found = [c for c in self.cbs if c is cb]
                if not found:
                    raise ValueError(f"{cb!r} is not a callback of this learner; learn.cbs lists them.")
            for c in found:
                self.cbs = [other for other in self.cbs if other is not c]
                del self._by_name[c.cb_name]
                c.learn = None  # type: ignore[assignment]  # detached: reads no longer delegate
        self._sort_cbs()
        return self

    @contextlib.contextmanager
    def added_cbs(self, *cbs: Callback | Iterable[Callback]) -> Iterator[Learner]:
        """Add callbacks for the duration of a `with` block."""
        added = list(_flatten(cbs))
        self.add_cbs(added)
        try:
            yield self
        finally:
            self.remove_cbs([cb for cb in added if cb.learn is self])

    def _sort_cbs(self) -> None:
        # Stable sort once per change, so dispatch never sorts.
        self.cbs.sort(key=lambda cb: cb.order)
        self._dispatch = {e: [(cb, getattr(cb, e)) for cb in self.cbs if e in type(cb).events()] for e in EVENTS}

    def __getattr__(self, name: str) -> Any:
        by_name = self.__dict__.get("_by_name")
        if by_name is not None and name in by_name:
            return by_name[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute or callback named {name!r}")

    def show_loop(self) -> None:
        """Print, for each event, the callbacks that run there in execution order."""
        for event in EVENTS:
            names = ", ".join(type(cb).__name__ for cb, _ in self._dispatch[event])
            print(f"{event:<22} {names or '-'}")

    # -- events ----------------------------------------------------------------------------

    def _fire(self, event: str) -> None:
        for cb, method in self._dispatch[event]:
            try:
                returned = method()
            except BaseException as err:
                err.add_note(_raised_by(cb, event))
                raise
            if returned is not None:
                self._warn_return(cb, event, returned)

    def _warn_return(self, cb: Callback, event: str, returned: Any) -> None:
        if (type(cb), event) not in self._warned_returns:
            self._warned_returns.add((type(cb), event))
            warnings.warn(
                f"{type(cb).__name__}.{event} returned {returned!r}, which loopkit ignores: the loop changes "
                "course only by exception. To stop, raise a cancel exception (e.g. raise CancelFit).",
                stacklevel=3,
            )

    def _fire_all(self, event: str) -> BaseException | None:
        # Cleanup runs every callback even if one fails; the first error is returned.
        first: BaseException | None = None
        for cb, method in self._dispatch[event]:
            try:
                method()
            except BaseException as err:
                err.add_note(_raised_by(cb, event))
                first = first or err
        return first

    def _split_batch(self) -> None:
        batch, n_inp = self.batch, self.n_inp
        if type(batch) is tuple and len(batch) > n_inp:  # the usual batch: a tuple of inputs and targets
            self.xb, self.yb = batch[:n_inp], batch[n_inp:]
            return
        if isinstance(batch, torch.Tensor) and n_inp == 1 and self.evaluating:
            batch = self.batch = (batch,)  # unlabelled data: a bare tensor of inputs
        needs_targets = not self.evaluating or self._evaluation == "validate"
        if not isinstance(batch, (tuple, list)) or len(batch) < n_inp + needs_targets:
            got = f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
            raise TypeError(
                f"a batch must be a tuple or list of the {n_inp} input(s) followed by the target(s), got {got}; "
                "yield (x, y) pairs from the loader, or set n_inp to the number of inputs. "
                "(Batches of inputs only are fine for get_preds and predict.)"
            )
        self.xb, self.yb = tuple(batch[:n_inp]), tuple(batch[n_inp:])

    def _where(self) -> str:
        if self.evaluating:
            return f"in an evaluation (learn.{self._evaluation}), batch {self.iter}"
        return f"in epoch {self.epoch}, {'training' if self.training else 'validation'} batch {self.iter}"

    def create_opt(self) -> torch.optim.Optimizer:
        """Make `learn.opt` from `opt_func` and `lr` if there is none yet, and return it.

        The first fit does this for you; call it earlier to build something on the
        optimizer before training, such as a torch lr scheduler.
        """
        if self.opt is None:
            self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        return self.opt

    # -- the loop --------------------------------------------------------------------------

    def fit(self, n_epochs: int, cbs: Callback | Iterable[Callback] | None = None, lr: float | None = None,
            resume: str | Path | None = None) -> None:
        """Train for `n_epochs` epochs, firing every event of the loop.

        `cbs` are added for this fit only and removed afterwards, also on error.
        `lr` sets the learning rate of every param group for this fit. Hyper-parameters
        are per fit: when the fit ends (normally, by a cancel or by an error) every
        hyper of every param group is back at its value from before the fit, and no
        gradient is left in `.grad`. `resume` is a checkpoint written by `save` or
        `SaveModel`: after `before_fit`, the model, optimizer, callbacks' state, RNG
        states and position are restored from it, and the fit continues with the epoch
        after the saved one (`start_epoch`), or, from a mid-epoch checkpoint, with the
        next training batch of the saved epoch (`start_iter`), as if it had never
        stopped when `n_epochs` is the same. A cancel exception ends its stage; any other exception ends the
        fit after `after_fit` has run, and propagates.
        """
        if not isinstance(n_epochs, int) or isinstance(n_epochs, bool) or n_epochs < 1:
            raise ValueError(f"n_epochs must be an int >= 1, got {n_epochs!r}.")
        if lr is not None:
            check_lr(lr, "fit(lr=...)")
        check_loader(self.train_dl, "train")
        per_fit = list(_flatten([cbs]))
        self.add_cbs(per_fit)
        try:
            opt = self.create_opt()
            hypers = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            try:
                if lr is not None:
                    for group in opt.param_groups:
                        group["lr"] = lr
                checkpoint = self._read_resume(resume, n_epochs) if resume is not None else None
                self.n_epochs, self.epoch, self.train_iter, self.pct_train = n_epochs, 0, 0, 0.0
                self.start_epoch, self.start_iter = checkpoint.start if checkpoint is not None else (0, 0)
                self.evaluating = False
                with self._step_guard:
                    self._do_fit(checkpoint)
            finally:
                for group, saved in zip(opt.param_groups, hypers):  # hyper-parameters are per fit
                    params = group["params"]
                    group.clear()
                    group.update(saved, params=params)
                self.model.zero_grad(set_to_none=True)  # no gradient outlives the fit that made it
        finally:
            self.remove_cbs([cb for cb in per_fit if cb.learn is self])

    def _do_fit(self, checkpoint: dict[str, Any] | None) -> None:
        # The fit stage, shared by fits and evaluations: an evaluation is one validation phase.
        try:
            try:
                self._fire("before_fit")
                if self.evaluating:
                    self._do_phase(False, "validate", CancelValidate, self.valid_dl)
                else:
                    if checkpoint is not None:  # after before_fit, so callbacks' resets don't undo it
                        self._apply_resume(checkpoint)
                    for self.epoch in range(self.start_epoch, self.n_epochs):
                        self._do_epoch()
            except CancelFit:
                self._fire("after_cancel_fit")
        except BaseException as err:
            note_misplaced_cancel(err)
            cleanup_error = self._fire_all("after_fit")
            if cleanup_error is not None:
                err.add_note(f"after_fit also failed during cleanup: {cleanup_error!r}")
            raise
        cleanup_error = self._fire_all("after_fit")
        if cleanup_error is not None:
            raise cleanup_error

    def _do_epoch(self) -> None:
        try:
            self._fire("before_epoch")
            self._do_phase(True, "train", CancelTrain, self.train_dl)
            if self.valid_dl is not None:
                self._do_phase(False, "validate", CancelValidate, self.valid_dl)
        except CancelEpoch:
            self._fire("after_cancel_epoch")
        self._fire("after_epoch")

    def _do_phase(self, training: bool, stage: str, cancel: type[CancelException], dl: Iterable[Batch] | None) -> None:
        self.training, self.dl = training, dl
        self.n_iter = length(dl)
        try:
            self._fire("before_" + stage)
            batches, start = self._train_batches() if training else (self.dl, 0)
            empty = start == 0  # a phase resumed after its last batch has none left
            for self.iter, self.batch in enumerate(batches, start):  # type: ignore[arg-type]  # callbacks may replace dl
                empty = False
                self._do_batch()
            if empty:
                raise ValueError(empty_error("train" if training else "evaluated" if self.evaluating else "valid"))
        except cancel:
            self._fire("after_cancel_" + stage)
        self._fire("after_" + stage)

    def _train_batches(self) -> tuple[Iterable[Batch], int]:
        # Leaf work, fires nothing: note where the training phase starts (mid-epoch checkpoints record
        # it) and, in the first epoch of a fit resumed mid-epoch, start the loader at the saved batch.
        from loopkit.callbacks._position import train_batches

        return train_batches(self)

    def _do_batch(self) -> None:
        try:
            self._split_batch()
            self._fire("before_batch")
            self.pred = self.model(*self.xb)
            self._fire("after_pred")
            # A batch without targets (only in evaluations) has no loss.
            self.loss = self.loss_func(self.pred, *self.yb) if self.yb else None  # type: ignore[assignment]
            if self.yb and getattr(self.loss, "ndim", None) != 0:
                raise ValueError(loss_error(self.loss))
            self._fire("after_loss")
            if self.training:
                try:
                    self._fire("before_backward")
                    self.loss.backward()
                except CancelBackward:
                    self._fire("after_cancel_backward")
                    self._fire("after_backward")
                else:
                    self._fire("after_backward")
                    try:
                        self._fire("before_step")
                        guard = self._step_guard  # Ctrl-C waits until the step is whole
                        guard.stepping = True
                        self.opt.step()
                        self.opt.zero_grad()
                        guard.step_done()
                    except CancelStep:
                        self._fire("after_cancel_step")
                    self._fire("after_step")
        except CancelBatch:
            self._fire("after_cancel_batch")
        except CancelException:
            raise
        except Exception as err:
            err.add_note(f"raised {self._where()}")
            raise
        self._fire("after_batch")

    # -- evaluations ----------------------------------------------------------------------

    def validate(self, dl: Iterable[Batch] | None = None, cbs: Callback | Iterable[Callback] | None = None) -> PhaseStats:
        """Return the loss and metrics over `dl` (default: the valid loader), weighted by batch size.

        Runs an evaluation (see `get_preds`) with the metrics of `learn.avg_stats`
        (a bare learner gets an `AvgStats` without metrics for the evaluation); the
        figures are also kept as `learn.avg_stats.evaluation`.
        """
        from loopkit.callbacks import AvgStats

        stats = getattr(self, "avg_stats", None)
        extra: list[Callback] = []
        if not isinstance(stats, AvgStats):
            stats = AvgStats()
            stats.name = "evaluation_stats"
            extra.append(stats)
        self._evaluate(dl, [*extra, *_flatten([cbs])], "validate")
        return stats.evaluation

    def get_preds(self, dl: Iterable[Batch] | None = None, with_input: bool = False, with_loss: bool = False,
                  act: Callable[[Any], Any] | None = None, cbs: Callback | Iterable[Callback] | None = None) -> tuple[Any, ...]:
        """Return `(pred, targ)` over `dl` (default: the valid loader), in the loader's order, on the CPU.

        An evaluation: `before_fit`, the validation phase over `dl` with its batch
        events, `after_fit`, with `learn.evaluating` true, under `torch.no_grad()` and
        `model.eval()`; the model's modes and the learner's state are put back after.
        `pred` keeps the model output's structure (tensor, tuple, dict), with `act`
        applied to it; `targ` is the target (a tuple when there are several, `None`
        when the batches have only inputs). `with_input` puts the inputs first:
        `(inp, pred, targ)`; `with_loss` appends the per-sample losses, from
        `loss_func(pred, *yb, reduction="none")` averaged over all but the first
        dimension (a `ValueError` says so before the evaluation when `loss_func`
        takes no `reduction`).
        """
        from loopkit.callbacks.evaluation import GatherPreds

        gather = GatherPreds(with_input=with_input, with_loss=with_loss, act=act)
        self._evaluate(dl, [gather, *_flatten([cbs])], "get_preds")
        return gather.result

    def predict(self, xb: Any, act: Callable[[Any], Any] | None = None) -> Any:
        """Return the model's output for one batch of inputs `xb` (a tensor, or a tuple of `n_inp`).

        An evaluation of the one batch (see `get_preds`): the inputs go to the model's
        device and the output comes back to the inputs' device, with `act` applied.
        """
        from loopkit.callbacks.evaluation import GatherPreds, predict_batch

        batch, home = predict_batch(self, xb)
        gather = GatherPreds(act=act, to_cpu=False)
        self._evaluate([batch], [gather], "predict")
        return gather.result_to(home)

    def _evaluate(self, dl: Iterable[Batch] | None, cbs: list[Callback], name: str) -> None:
        if dl is None:
            dl = self.valid_dl
            if dl is None:
                raise ValueError(f"{name}: this learner has no valid loader; pass the loader to evaluate as dl=...")
        check_eval_loader(dl, name)
        saved = {key: self.__dict__[key] for key in (*_STATE_DEFAULTS, "valid_dl")}
        modes = [(module, module.training) for module in self.model.modules()]
        self.add_cbs(cbs)
        try:
            # valid_dl is the evaluated loader for the evaluation, so Distributed shards it.
            self.evaluating, self.valid_dl, self.training, self._evaluation = True, dl, False, name
            self._do_fit(None)
        finally:
            self.remove_cbs([cb for cb in cbs if cb.learn is self])
            self.__dict__.update(saved)
            for module, mode in modes:
                module.training = mode


    # -- checkpoints ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint of everything needed to resume exactly; return its path.

        The file holds the model's weights, the optimizer state, the position
        (`epoch`, `train_iter`), each callback's `state_dict()` and the RNG states,
        as plain data only (`torch.load(path, weights_only=True)` opens it). It is
        written to a temporary file and renamed, so a crash never leaves a corrupt
        checkpoint. Under distributed training only rank 0 writes.
        """
        from loopkit.callbacks.checkpoint import save_checkpoint

        return save_checkpoint(self, path)

    def load(self, path: str | Path, with_opt: bool = True) -> Learner:
        """Load a checkpoint written by `save`: weights, optimizer (unless `with_opt=False`),
        callbacks' state, RNG states and position.

        The whole file is checked first, and nothing changes if it is refused: a
        `ValueError` names the file and says why (damaged or not plain data, not a
        checkpoint, missing/unexpected keys and shape mismatches against this model,
        another optimizer class or param groups, a damaged RNG or callback state).
        To continue training from it exactly, use `fit(n_epochs, resume=path)` instead.
        """
        from loopkit.callbacks.checkpoint import apply_checkpoint, read_checkpoint

        apply_checkpoint(self, read_checkpoint(self, path, with_opt=with_opt), with_opt=with_opt)
        return self

    def _read_resume(self, path: str | Path, n_epochs: int) -> _Checkpoint:
        from loopkit.callbacks.checkpoint import read_resume

        return read_resume(self, path, n_epochs)

    def _apply_resume(self, checkpoint: dict[str, Any]) -> None:
        from loopkit.callbacks.checkpoint import apply_checkpoint

        apply_checkpoint(self, checkpoint, resume=True)

    # -- schedules ------------------------------------------------------------------------

    def fit_one_cycle(self, n_epochs: int, lr_max: float | Sequence[float], div: float = 25.0,
                      div_final: float = 1e5, pct_start: float = 0.25,
                      moms: Sequence[float] | None = (0.95, 0.85, 0.95), wd: float | None = None,
                      wd_bn_bias: bool = False, cbs: Callback | Iterable[Callback] | None = None,
                      resume: str | Path | None = None) -> None:
        """Fit with the one-cycle policy: the lr warms up to `lr_max` and anneals down, momentum the other way.

        Over the first `pct_start` of training the lr follows a half cosine from
        `lr_max / div` to `lr_max`, then another down to `lr_max / div_final`;
        momentum goes from `moms[0]` to `moms[1]` and back to `moms[2]` (`None`:
        left alone). `lr_max` may be a list, one per param group. `wd`, if given, is
        the weight decay of the fit: for the weights only, unless `wd_bn_bias`, since
        decaying biases and normalization parameters only hurts (they go to a group
        of their own with `weight_decay` 0; see `loopkit.callbacks.wd_per_group`,
        which says how groups are split). A `ParamScheduler` with these schedules
        (`one_cycle_scheds`) is added for this fit only, with `cbs`. `resume` is as
        for `fit`: the schedules follow `pct_train`, so a resumed one-cycle fit with
        the same arguments continues the curve exactly.
        """
        from loopkit.callbacks import ParamScheduler, one_cycle_scheds, sched_no, wd_per_group

        scheds = one_cycle_scheds(lr_max, div, div_final, pct_start, moms, wd)  # checks every argument first
        if wd is not None:
            scheds["weight_decay"] = [sched_no(w) for w in wd_per_group(self, wd, wd_bn_bias)]
        self.fit(n_epochs, cbs=[ParamScheduler(scheds), *_flatten([cbs])], resume=resume)

    def summary(self) -> str:
        """Return a table of the model's layers (output shapes from one train batch, parameters) and the setup.

        One forward pass of the first train batch under no_grad and eval mode; nothing
        trains or changes (weights, modes, RNG states). Works before the first fit.
        Raises `ValueError` when the train loader yields no batch.
        """
        from loopkit.callbacks import summary

        return summary(self)

    def freeze(self, modules: Any = None, train_bn: bool = True) -> Learner:
        """Stop training `modules` (default: every param group but the last); see `loopkit.callbacks.freeze`."""
        from loopkit.callbacks import freeze

        freeze(self, modules, train_bn)
        return self

    def unfreeze(self) -> Learner:
        """Train every parameter of the model again."""
        from loopkit.callbacks import unfreeze

        unfreeze(self)
        return self

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True,
                cbs: Callback | Iterable[Callback] | None = None) -> LRFindResult:
        """Sweep the lr exponentially over `num_it` training batches; return an `LRFindResult`.

        The sweep (an `LRFinder`) spans epochs if the loader is short, skips
        validation, and stops early once the smoothed loss diverges (`stop_div`).
        Afterwards the learner is as it was: weights and optimizer state bitwise,
        callbacks' state, RNG states and loop counters (`preserve_state`);
        `CSVLogger`, `SaveModel` and `EarlyStopping` are left out of the sweep, so
        it writes no logs or checkpoints. The result is a float, the suggested lr
        (`lr_steep`), with `lr_min`, `lrs`, `losses`, and `plot(path=None)`, which
        returns the figure and can save it.
        """
        from loopkit.callbacks import CSVLogger, EarlyStopping, LRFinder, SaveModel, preserve_state

        finder = LRFinder(start_lr, end_lr, num_it, stop_div)
        # The sweep is not training: loggers, checkpoints and early stopping sit it out.
        paused = [cb for cb in self.cbs if isinstance(cb, (CSVLogger, EarlyStopping, SaveModel))]
        before = list(self.cbs)
        self.remove_cbs(paused)
        try:
            with preserve_state(self):
                self.fit(finder.epochs_for(self.train_dl), cbs=[finder, *_flatten([cbs])])
        finally:
            self.add_cbs(paused)
            # Re-added callbacks go last among equal orders: put every callback back where it was.
            self.cbs.sort(key=lambda cb: before.index(cb) if cb in before else len(before))
            self._sort_cbs()
        return finder.result


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        elif item is not None:
            yield item


def _raised_by(cb: Callback, event: str) -> str:
    return f"raised by callback {type(cb).__name__} in event {event!r}"
