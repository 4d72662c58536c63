"""`TensorBoardLogger`: a fit's losses, hyper-parameters and phase figures as a TensorBoard run."""

from __future__ import annotations

import math
from operator import itemgetter
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from loopkit import Callback

from ._dist import is_main_process
from ._hypers import hyper_keys

HParam = int | float | str | bool


class TensorBoardLogger(Callback):
    """Write a fit to TensorBoard: per batch, per epoch, and the run's hyper-parameters at the end.

    Events: before_fit, before_epoch, after_loss, after_backward, after_train,
    after_epoch, after_fit. Reads: training, loss, opt, iter, epoch, n_epochs,
    start_epoch, train_iter, model, loss_func, `learn.avg_stats` (`train`, `valid`,
    `history`) and `learn.param_scheduler.scheds` (at `before_fit`).
    Writes on the learner: nothing. Publishes: `log_dir`, `writer` (the
    `SummaryWriter` during a fit, else `None`).
    order = 60: after AvgStats (-20) has the epoch's figures, before SaveModel (90)
    saves this callback's state with the checkpoint. On the learner as
    `learn.tensorboard_logger`.

    The x axis of every scalar is the number of training batches done (optimizer
    steps, without gradient accumulation). Per training batch: `batch/loss` and
    `batch/<hyper>` for `lr`, `mom` and every name a `ParamScheduler` schedules
    (`batch/<hyper>/group<i>` when there are several param groups). They are kept
    on the device and written once per epoch, so a batch costs an append and no host
    sync. Per epoch: `train/loss`, `valid/loss` and `train/<metric>`, `valid/<metric>`
    from `AvgStats`. At the end of the fit: the hyper-parameters (`n_epochs`, `lr`,
    `opt`, `model`, `loss_func`, then `hparams`) with the last epoch's figures as
    `hparam/<column>`. With `hist_every=n`, histograms of the weights (at the end of
    every n-th epoch) and of the gradients (at that epoch's first backward).

    Consecutive fits with one logger continue one run. A resumed fit
    (`fit(..., resume=path)`) continues the run of the checkpoint: events the
    interrupted fit wrote after it are purged (`purge_step`), so no step is logged
    twice. Use a fresh `log_dir` for each new run. Only rank 0 writes under
    distributed training; evaluations and `lr_find` sweeps write nothing.
    Raises `ImportError` at construction without the `tensorboard` package
    (`pip install "loopkit[tensorboard]"`), and `ValueError` at `before_fit` when
    `log_dir` can't be created.
    """

    order = 60
    name = "tensorboard_logger"

    def __init__(self, log_dir: str | Path = "runs", hist_every: int | None = None,
                 hparams: dict[str, HParam] | None = None) -> None:  # fmt: skip
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package, which loopkit does not install by default; "
                'install the extra: pip install "loopkit[tensorboard]".'
            ) from err
        if hist_every is not None and (not isinstance(hist_every, int) or isinstance(hist_every, bool) or hist_every < 1):
            raise ValueError(f"hist_every is a number of epochs and must be an int >= 1 or None, got {hist_every!r}.")
        self._summary_writer = SummaryWriter
        self.log_dir, self.hist_every, self.hparams = Path(log_dir), hist_every, dict(hparams or {})
        self.writer: Any = None
        self._offset = 0  # steps logged by earlier fits of this run
        self._end = 0  # the step the latest fit reached
        self._active = False

    def before_fit(self) -> None:
        learn = self.learn
        # Only rank 0 writes; evaluations and lr_find's sweep are not the run.
        self._active = not learn.evaluating and is_main_process() and getattr(learn, "lr_finder", None) is None
        if not self._active:
            return
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"TensorBoardLogger cannot create its log_dir {str(self.log_dir)!r} ({err.strerror or err}); "
                "pass a folder that can be created and written to."
            ) from err
        if learn.start_epoch == 0:
            self._offset = self._end
        scheduler = getattr(learn, "param_scheduler", None)
        names = {"lr", "mom", *(scheduler.scheds if scheduler is not None else [])}
        groups = learn.opt.param_groups
        logged = [(name, key, index) for name, key, index in hyper_keys(groups[0]) if name in names]
        self._keys = [(name, index) for name, _, index in logged]
        # One C-level getter per group, as Recorder does; names are matched when written.
        self._getter = itemgetter(*[key for _, key, _ in logged]) if logged else (lambda group: ())
        self._n_groups = len(groups)
        self._hypers = {name: v for name, v in zip([n for n, _ in self._keys], self._read_hypers(groups))}
        self._losses: list[torch.Tensor] = []
        self._rows: list[tuple[Any, ...]] = []
        self._steps: list[int] = []

    def _read_hypers(self, groups: list[dict[str, Any]]) -> list[float]:
        row = self._getter(groups[0])
        values = row if len(self._keys) > 1 else (row,)
        return [v[index] if index is not None else v for v, (_, index) in zip(values, self._keys)]

    def before_epoch(self) -> None:
        # The writer starts here, once a resumed fit knows its position (restored after before_fit).
        if self._active and self.writer is None:
            resumed = self.learn.start_epoch > 0
            self.writer = self._summary_writer(str(self.log_dir), purge_step=self._step() + 1 if resumed else None)

    def _step(self) -> int:
        return self._offset + self.learn.train_iter

    def after_loss(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if self._active and learn.training:
            self._losses.append(learn.loss.detach())
            self._rows.append(tuple(map(self._getter, learn.opt.param_groups)))
            self._steps.append(self._offset + learn.train_iter + 1)

    def after_backward(self) -> None:
        if self._active and self._histogram_epoch() and self.learn.iter == 0:
            for name, param in self._named_parameters():
                if param.grad is not None:
                    self.writer.add_histogram(f"gradients/{name}", param.grad, self._step() + 1)

    def _histogram_epoch(self) -> bool:
        return self.hist_every is not None and (self.learn.epoch + 1) % self.hist_every == 0

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self._plain_model().named_parameters())

    def _plain_model(self) -> torch.nn.Module:
        model = self.learn.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    def after_train(self) -> None:
        if self._active:
            self._write_batches()

    def _write_batches(self) -> None:
        if not self._losses:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        # One host sync per epoch for the whole phase's losses.
        losses = torch.stack(self._losses).float().tolist()
        one_key, several = len(self._keys) == 1, self._n_groups > 1
        tags = [[f"batch/{name}/group{g}" if several else f"batch/{name}" for name, _ in self._keys]
                for g in range(self._n_groups)]  # fmt: skip
        file_writer = self.writer.file_writer
        for step, loss, row in zip(self._steps, losses, self._rows):
            # One event per step holding all its scalars: an event costs ~0.1 ms, a value next to nothing.
            summary = [Summary.Value(tag="batch/loss", simple_value=loss)]
            for group_tags, values in zip(tags, row):
                for j, (tag, (_, index)) in enumerate(zip(group_tags, self._keys)):
                    value = values if one_key else values[j]
                    summary.append(Summary.Value(tag=tag, simple_value=value[index] if index is not None else value))
            file_writer.add_summary(Summary(value=summary), step)
        self._losses, self._rows, self._steps = [], [], []

    def after_epoch(self) -> None:
        if not self._active:
            return
        self._write_batches()  # an epoch cancelled mid-training still logs the batches it ran
        step = self._step()
        stats = getattr(self.learn, "avg_stats", None)
        if stats is not None:
            for phase, figures in (("train", stats.train), ("valid", stats.valid)):
                for name, value in (("loss", figures.loss), *figures.metrics.items()):
                    if not math.isnan(value):
                        self.writer.add_scalar(f"{phase}/{name}", value, step)
        if self._histogram_epoch():
            for name, param in self._named_parameters():
                self.writer.add_histogram(f"weights/{name}", param.detach(), step)
        self.writer.flush()  # an interrupted fit keeps every finished epoch
        self._end = step

    def after_fit(self) -> None:
        if not self._active or self.writer is None:
            return
        try:
            self._write_batches()  # a fit that ended by an error keeps the batches it ran
            self._write_hparams()
        finally:
            self.writer.close()
            self.writer = None
            self._active = False

    def _write_hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        learn = self.learn
        run: dict[str, HParam] = {"n_epochs": learn.n_epochs, **self._hypers,
                                  "opt": type(learn.opt).__name__, "model": type(self._plain_model()).__name__,
                                  "loss_func": getattr(learn.loss_func, "__name__", type(learn.loss_func).__name__),
                                  **self.hparams}  # fmt: skip
        stats = getattr(learn, "avg_stats", None)
        last = stats.history[-1] if stats is not None and stats.history else {}
        final = {f"hparam/{k}": v for k, v in last.items() if k != "epoch" and not math.isnan(v)}
        step = self._step()
        for summary in hparams(run, final):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)

    def state_dict(self) -> dict[str, Any]:
        """Return where this fit's steps start, for checkpoints (a resumed fit continues the run)."""
        return {"offset": self._offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self._offset = int(state["offset"])
