"""Averaged loss and metrics per phase, weighted by batch size, synced once per phase."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from loopkit import Callback

Metric = Callable[..., Any]


def batch_size(items: Any) -> int:
    """Return the number of samples in `items`: the first dimension of its first tensor.

    `items` may be a tensor or nested tuples, lists and dicts of them; a plain
    sequence without tensors counts its own length.
    """
    if isinstance(items, torch.Tensor):
        return int(items.shape[0]) if items.ndim else 1
    if isinstance(items, dict):
        items = list(items.values())
    if isinstance(items, (tuple, list)):
        for item in items:
            if isinstance(item, (torch.Tensor, tuple, list, dict)):
                return batch_size(item)
        return len(items)
    raise TypeError(f"cannot tell the batch size of a {type(items).__name__}; yield tensors from the loader.")


class WeightedSums:
    """Sums of per-batch means weighted by batch size, kept on the device.

    `add(values, n)` only detaches and appends (no arithmetic, no host sync);
    every `fold_every` batches the pending values are folded into running sums
    with one stack and one weighted reduction. `totals()` returns
    `[count, sum_0, sum_1, ...]` as one tensor, and `means(totals)` turns it
    into floats with the single host sync of the phase.
    """

    def __init__(self, n_values: int, fold_every: int = 256) -> None:
        self.n_values, self.fold_every = n_values, fold_every
        self.count = 0
        self._columns: list[list[torch.Tensor | float]] = [[] for _ in range(n_values)]
        self._sizes: list[int] = []
        self._sums: torch.Tensor | None = None
        self._restored = False  # restored from a checkpoint: on the CPU until the first fold

    def add(self, values: Sequence[torch.Tensor | float], n: int) -> None:
        """Add the per-batch means `values` of a batch of `n` samples.

        Raises `ValueError` if a value has more than one element (checked on the first batch).
        """
        sizes = self._sizes
        if not sizes and self._sums is None:
            check_values(values)
        for column, value in zip(self._columns, values):
            column.append(value.detach() if isinstance(value, torch.Tensor) else value)
        sizes.append(n)
        self.count += n
        if len(sizes) >= self.fold_every:
            self._fold()

    def _fold(self) -> None:
        if not self._sizes:
            return
        columns, sizes = self._columns, self._sizes
        self._columns, self._sizes = [[] for _ in range(self.n_values)], []
        # The newest value's device: values and sums restored from a checkpoint come from the CPU.
        last = next((c[-1] for c in columns if isinstance(c[-1], torch.Tensor)), None)
        device = last.device if last is not None else torch.device("cpu")
        if self._restored:
            self._restored = False
            columns = [[v.to(device) if isinstance(v, torch.Tensor) else v for v in c] for c in columns]
            self._sums = None if self._sums is None else self._sums.to(device)
        # float64 keeps long phases exact; MPS has no float64, so stay in float32 there.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        stacked = []
        for column in columns:
            if not all(isinstance(v, torch.Tensor) for v in column):
                column = [torch.as_tensor(v, device=device) for v in column]
            stacked.append(torch.stack(column).reshape(len(sizes)).to(dtype))  # type: ignore[arg-type]
        folded = torch.tensor(sizes, dtype=dtype, device=device) @ torch.stack(stacked, dim=1)
        self._sums = folded if self._sums is None else self._sums + folded

    def totals(self) -> torch.Tensor:
        """Return `[count, sum_0, ...]` as one tensor on the values' device."""
        self._fold()
        if self._sums is None:
            return torch.zeros(1 + self.n_values, dtype=torch.float64)
        count = torch.full((1,), self.count, dtype=self._sums.dtype, device=self._sums.device)
        return torch.cat([count, self._sums])

    def state_dict(self) -> dict[str, Any]:
        """Return the running sums as plain data (CPU tensors), pending values included, for checkpoints."""
        def cpu(value: torch.Tensor | float) -> torch.Tensor | float:
            return value.detach().cpu() if isinstance(value, torch.Tensor) else value

        return {"n_values": self.n_values, "count": self.count, "sizes": list(self._sizes),
                "columns": [[cpu(v) for v in column] for column in self._columns],
                "sums": None if self._sums is None else self._sums.cpu()}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WeightedSums:
        """Return sums restored from `state_dict()`; they fold exactly as the saved ones would have.

        Raises `ValueError` for a state that is not one `state_dict` returns.
        """
        sums = cls(state["n_values"])
        columns, sizes = state["columns"], state["sizes"]
        if (len(columns) != sums.n_values or any(len(c) != len(sizes) for c in columns)
                or (state["sums"] is not None and tuple(state["sums"].shape) != (sums.n_values,))):  # fmt: skip
            raise ValueError(f"the running sums do not fit {sums.n_values} value(s) per batch")
        sums.count, sums._sizes, sums._sums = int(state["count"]), list(sizes), state["sums"]
        sums._columns = [list(c) for c in columns]
        sums._restored = True
        return sums

    @staticmethod
    def means(totals: torch.Tensor) -> tuple[int, list[float]]:
        """Return the count and the weighted means from `totals()` (one host sync)."""
        count, *sums = totals.tolist()
        return int(count), [s / count if count else math.nan for s in sums]


def _sharded(learn: Any) -> bool:
    # Each rank saw its shard: under DDP in a fit, or with Distributed in an evaluation.
    if not dist.is_available() or not dist.is_initialized():
        return False
    distributed = getattr(learn, "distributed", None)
    return isinstance(learn.model, DistributedDataParallel) or (distributed is not None and distributed.sharding)


def _metric_name(metric: Metric) -> str:
    # functools.partial has no __name__: use the wrapped function's.
    name = getattr(metric, "__name__", None) or getattr(getattr(metric, "func", None), "__name__", None)
    return name or type(metric).__name__


def check_values(values: Sequence[Any], names: Sequence[str] | None = None) -> None:
    """Raise unless every value is a number or a one-element tensor (a batch mean).

    `names` label the values in the message (default: `value i`, 0 being the loss).
    """
    for i, value in enumerate(values):
        label = repr(names[i]) if names else f"value {i} of the batch (0 is the loss, then the metrics in order)"
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"{label} has shape {tuple(value.shape)}; a metric must return the batch mean as a scalar "
                    "tensor (e.g. (pred.argmax(1) == y).float().mean()), or be an object with update/compute."
                )
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{label} returned {value!r} ({type(value).__name__}); a metric must return the batch mean as a "
                "scalar tensor or a number."
            )


@dataclass
class PhaseStats:
    """The averaged figures of one phase: `loss`, `metrics` (name -> float), `count` samples."""

    loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    count: int = 0


class AvgStats(Callback):
    """Average the loss and metrics of each phase over its samples, weighted by batch size.

    Events: before_fit, before_epoch, before_train, before_validate, after_loss,
    after_train, after_validate, after_epoch. Reads: training, loss, pred, yb, xb, model, epoch.
    Writes on the learner: nothing.
    Publishes: `train` and `valid` (`PhaseStats` of the latest phase of each kind in a
    fit), `evaluation` (the `PhaseStats` of the latest evaluation: `learn.validate`,
    `get_preds`, `predict`; a fit's figures and history are left as they were), `history` (one dict per epoch: `epoch`, `train_loss`, `train_<metric>` when
    `train_metrics`, `valid_loss`, `<metric>` when there is a valid loader), and
    `columns` (those keys, known before the first epoch).
    order = -20: its `after_epoch` row is ready before progress bars and loggers read it.

    A metric is `f(pred, *yb) -> scalar tensor` (the mean over the batch), named by
    its `__name__`. Metrics run on validation batches only unless `train_metrics`.
    The loss is read at `after_loss`, before any callback rescales it for backward.
    Sums stay on the device; each phase is read once, at its end. When the model is
    wrapped in `DistributedDataParallel`, the sums are all-reduced once per phase, so
    the figures are global per-sample means.

    Checkpoints: `state_dict` holds the history and the latest figures and, written
    during a training phase (a mid-epoch checkpoint), the phase's running sums
    (`train_sums`, pending values included), which a resumed fit continues at its first
    `before_train`, so its figures equal an uninterrupted phase's bitwise.
    """

    order = -20

    def __init__(self, metrics: Sequence[Metric] | None = None, train_metrics: bool = False) -> None:
        self.metrics = list(metrics or [])
        for metric in self.metrics:
            if not callable(metric):
                raise TypeError(f"each metric must be a function f(pred, *yb) -> tensor, got {metric!r}.")
        self.metric_names = [_metric_name(m) for m in self.metrics]
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ValueError(
                f"metric names must be unique, got {self.metric_names}; give each function its own __name__ "
                "(for a functools.partial, set its __name__ attribute)."
            )
        self.train_metrics = train_metrics
        self.train, self.valid, self.evaluation = PhaseStats(), PhaseStats(), PhaseStats()
        self.history: list[dict[str, float]] = []
        self._sums: WeightedSums | None = None
        self._check_metrics = False
        self._resumed: WeightedSums | None = None  # a mid-epoch checkpoint's training sums, for the next phase

    def before_fit(self) -> None:
        self._with_metrics = False
        self._check_metrics = bool(self.metrics)
        if not self.learn.evaluating:
            self.history = []
            self._resumed = None

    def _start(self, with_metrics: bool) -> None:
        self._with_metrics = with_metrics and bool(self.metrics)
        self._sums = WeightedSums(1 + len(self.metrics) if self._with_metrics else 1)

    def before_epoch(self) -> None:
        # A phase that does not run this epoch (cancelled, or no valid loader) reports nan.
        self.train, self.valid = PhaseStats(), PhaseStats()

    def before_train(self) -> None:
        self._start(self.train_metrics)
        if self._resumed is not None:  # the phase a mid-epoch checkpoint interrupted: continue its sums
            if self._resumed.n_values != self._sums.n_values:  # type: ignore[union-attr]  # set by _start
                raise ValueError(
                    f"the checkpoint's training sums hold {self._resumed.n_values} value(s) per batch, this AvgStats "
                    f"{self._sums.n_values}; resume with the same metrics and train_metrics as the saved run."  # type: ignore[union-attr]
                )
            self._sums, self._resumed = self._resumed, None

    def before_validate(self) -> None:
        self._start(True)

    def after_loss(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.loss is None:  # an evaluated batch without targets
            return
        if self._check_metrics:  # the fit's first batch: try the metrics now, not after an epoch of training
            self._check_metrics = False
            with torch.no_grad():
                check_values([m(learn.pred, *learn.yb) for m in self.metrics], self.metric_names)
        yb = learn.yb
        first = yb[0] if yb else learn.xb[0]
        n = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim else batch_size(yb or learn.xb)
        if self._with_metrics:
            pred = learn.pred
            self._sums.add([learn.loss, *(m(pred, *yb) for m in self.metrics)], n)  # type: ignore[union-attr]  # set at before_<phase>
        else:
            self._sums.add((learn.loss,), n)  # type: ignore[union-attr]

    def _finish(self) -> PhaseStats:
        sums, self._sums = self._sums, None
        if sums is None:
            return PhaseStats()
        totals = sums.totals()
        if _sharded(self.learn):
            dist.all_reduce(totals)
        count, means = WeightedSums.means(totals)
        names = self.metric_names if self._with_metrics else []
        return PhaseStats(means[0], dict(zip(names, means[1:])), count)

    def after_train(self) -> None:
        self.train = self._finish()

    def after_validate(self) -> None:
        if self.learn.evaluating:
            self.evaluation = self._finish()
        else:
            self.valid = self._finish()

    @property
    def columns(self) -> list[str]:
        """The keys of each `history` row, as configured now (known before the first epoch)."""
        columns = ["epoch", "train_loss"] + ([f"train_{k}" for k in self.metric_names] if self.train_metrics else [])
        if self.learn is not None and self.learn.valid_dl is not None:
            columns += ["valid_loss", *self.metric_names]
        return columns

    def after_epoch(self) -> None:
        if self._sums is not None:  # the epoch was cancelled mid-phase: report what was seen
            stats = self._finish()
            if self.training:
                self.train = stats
            else:
                self.valid = stats
        values = {"epoch": self.epoch, "train_loss": self.train.loss, "valid_loss": self.valid.loss,
                  **{f"train_{k}": v for k, v in self.train.metrics.items()}, **self.valid.metrics}  # fmt: skip
        self.history.append({column: values.get(column, math.nan) for column in self.columns})

    def state_dict(self) -> dict[str, Any]:
        """Return the history and the latest phases' figures, for checkpoints (a resumed fit continues them).

        During a training phase (a mid-epoch checkpoint) also its running sums, `train_sums`.
        """
        learn = self.learn
        running = self._sums is not None and learn is not None and learn.training and not learn.evaluating
        return {"history": [dict(row) for row in self.history], "train": asdict(self.train), "valid": asdict(self.valid),
                "train_sums": self._sums.state_dict() if running else None}  # type: ignore[union-attr]  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; running sums continue at the next training phase."""
        sums = state.get("train_sums")
        resumed = WeightedSums.from_state(sums) if sums is not None else None
        self.history = [dict(row) for row in state["history"]]
        self.train, self.valid = PhaseStats(**state["train"]), PhaseStats(**state["valid"])
        self._resumed = resumed
