"""Averaged loss and metrics per phase, weighted by batch size, synced once per phase.

A metric is a function `f(pred, *yb) -> scalar tensor` (the batch mean, averaged
weighted by batch size) or a stateful object with `update(pred, *yb)`, `compute()`
and `reset()` (a `torchmetrics.Metric`), reset at each phase start and computed once
at its end. Either may be given as a `(name, metric)` pair to choose its name.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from loopkit import Callback
from loopkit.callback import snake_name

# A function f(pred, *yb) -> scalar tensor, an object with update/compute/reset, or a
# (name, either of those) pair.
Metric = Callable[..., Any] | Any


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


def kept(value: torch.Tensor) -> torch.Tensor | float:
    """Return what a callback keeps of a per-batch scalar tensor until it folds its record.

    A CPU tensor is read as a float at once: on the CPU there is no device to wait
    for, and a float costs less to keep than a tensor. A tensor on any other device
    is detached and kept there, to be read with the rest once per phase, so that no
    batch waits for the device.
    """
    return value.item() if value.is_cpu else value.detach()


class WeightedSums:
    """Sums of per-batch means weighted by batch size, kept on the device.

    `add(values, n)` only appends what `kept` returns (no arithmetic, no device sync);
    every `fold_every` batches the pending values are folded into running sums
    with one stack and one weighted reduction. `totals()` returns
    `[count, sum_0, sum_1, ...]` as one tensor, and `means(totals)` turns it
    into floats with the single host sync of the phase.
    """

    def __init__(self, n_values: int, fold_every: int = 256) -> None:
        self.n_values, self.fold_every = n_values, fold_every
        self._folded_count = 0  # samples in _sums; count adds the pending ones
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
            column.append(kept(value) if isinstance(value, torch.Tensor) else value)
        sizes.append(n)
        if len(sizes) >= self.fold_every:
            self._fold()

    @property
    def count(self) -> int:
        """The number of samples added so far."""
        return self._folded_count + sum(self._sizes)

    def _fold(self) -> None:
        if not self._sizes:
            return
        columns, sizes = self._columns, self._sizes
        self._columns, self._sizes = [[] for _ in range(self.n_values)], []
        self._folded_count += sum(sizes)
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
            if not any(isinstance(v, torch.Tensor) for v in column):  # numbers (kept from CPU tensors)
                stacked.append(torch.tensor(column, dtype=dtype, device=device))
                continue
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
        sums._folded_count = int(state["count"]) - sum(sizes)
        sums._sizes, sums._sums = list(sizes), state["sums"]
        sums._columns = [list(c) for c in columns]
        sums._restored = True
        return sums

    @staticmethod
    def means(totals: torch.Tensor) -> tuple[int, list[float]]:
        """Return the count and the weighted means from `totals()` (one host sync)."""
        count, *sums = totals.tolist()
        return int(count), [s / count if count else math.nan for s in sums]


def _detached(items: Any) -> Any:
    """Return `items` with every tensor detached, through nested tuples, lists and dicts."""
    if isinstance(items, torch.Tensor):
        return items.detach()
    if isinstance(items, dict):
        return {key: _detached(value) for key, value in items.items()}
    if isinstance(items, (tuple, list)):
        return type(items)(_detached(item) for item in items)
    return items


def _sharded(learn: Any) -> bool:
    # Each rank saw its shard: under DDP in a fit, or with Distributed in an evaluation.
    if not dist.is_available() or not dist.is_initialized():
        return False
    distributed = getattr(learn, "distributed", None)
    return isinstance(learn.model, DistributedDataParallel) or (distributed is not None and distributed.sharding)


def is_stateful(metric: Any) -> bool:
    """Return True for a metric object with `update` (computed once per phase), False for a function."""
    return callable(getattr(metric, "update", None))


def metric_name(metric: Metric) -> str:
    """Return the name `AvgStats` gives `metric` in its figures and history.

    A `(name, metric)` pair gives its name; a stateful metric is named after its class
    (`BinaryF1Score` -> `binary_f1_score`); a function by its `__name__` (for a
    `functools.partial`, the wrapped function's).
    """
    if isinstance(metric, tuple) and len(metric) == 2 and isinstance(metric[0], str):
        return metric[0]
    if is_stateful(metric):
        # a torchmetrics wrapper (LambdaInputTransformer...) is named after the metric it wraps
        return snake_name(type(getattr(metric, "wrapped_metric", metric)).__name__)
    name = getattr(metric, "__name__", None) or getattr(getattr(metric, "func", None), "__name__", None)
    return name or snake_name(type(metric).__name__)


def _unpair(metric: Metric) -> Any:
    if isinstance(metric, tuple) and len(metric) == 2 and isinstance(metric[0], str):
        return metric[1]
    return metric


def _check_metric(metric: Any, name: str) -> None:
    if is_stateful(metric):
        missing = [m for m in ("compute", "reset") if not callable(getattr(metric, m, None))]
        if missing:
            raise TypeError(
                f"metric {name!r} ({type(metric).__name__}) has update but no {' or '.join(missing)}; a stateful "
                "metric needs update(pred, *yb), compute() -> scalar and reset(), as a torchmetrics.Metric has."
            )
    elif not callable(metric):
        pair = " A named metric is a (name, metric) pair inside the list: metrics=[('f1', metric)]." if isinstance(metric, str) else ""
        raise TypeError(
            f"each metric must be a function f(pred, *yb) -> tensor or an object with update/compute/reset "
            f"(a torchmetrics.Metric), got {metric!r}.{pair}"
        )


def _syncs_itself(metric: Any) -> bool:
    # torchmetrics gathers its states over the process group in compute() unless told not to.
    return getattr(metric, "sync_on_compute", False) is True and hasattr(metric, "distributed_available_fn")


def _no_process_group() -> bool:
    return False


def compute_metric(metric: Any, name: str, sync: bool = True) -> torch.Tensor:
    """Return `metric.compute()` as a one-element tensor; raise `ValueError` if it is not a scalar.

    With `sync=False`, a torchmetrics metric computes on this process's state alone
    (its gather over the process group is turned off for the call).
    """
    if not sync and _syncs_itself(metric):
        # a wrapper's inner metrics gather in their own compute: turn it off in each
        parts = [m for m in getattr(metric, "modules", lambda: [metric])() if hasattr(m, "distributed_available_fn")]
        saved = [m.distributed_available_fn for m in parts]
        for part in parts:
            part.distributed_available_fn = _no_process_group
        try:
            value = metric.compute()
        finally:
            for part, fn in zip(parts, saved):
                part.distributed_available_fn = fn
    else:
        value = metric.compute()
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} ({type(metric).__name__}) computes a tensor of shape {tuple(value.shape)}; "
                "AvgStats reports one number per metric: choose an averaged form (e.g. average='macro'), "
                "or give one metric per class."
            )
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"metric {name!r} ({type(metric).__name__}) computes {value!r} ({type(value).__name__}); "
            "AvgStats needs a scalar tensor or a number from compute()."
        )
    return torch.tensor(float(value))


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
    its `__name__`, or a stateful object with `update(pred, *yb)`, `compute()` and
    `reset()` (a `torchmetrics.Metric`), named after its class (`BinaryF1Score` ->
    `binary_f1_score`; a torchmetrics wrapper after the metric it wraps);
    `(name, metric)` names either. A stateful metric is moved to
    the model's device at `before_fit` (when it has `.device` and `.to`), reset at each
    phase start, updated per batch and computed once at the phase end; at the fit's
    first batch a copy of it is updated and computed, so a `compute` that does not give
    a scalar fails before any training. Metrics run on validation batches only unless
    `train_metrics`. The loss is read at `after_loss`, before any callback rescales it
    for backward. Sums stay on the device; each phase is read once, at its end. When
    each process holds a shard of the phase (DDP), the sums are all-reduced once per
    phase and a torchmetrics metric gathers its states in `compute`, so the figures
    are global; when every process sees all the data, that gather is turned off.

    Checkpoints: `state_dict` holds the history and the latest figures and, written
    during a training phase (a mid-epoch checkpoint), the phase's running sums
    (`train_sums`, pending values included), which a resumed fit continues at its first
    `before_train`, so its figures equal an uninterrupted phase's bitwise.
    """

    order = -20

    def __init__(self, metrics: Sequence[Metric] | None = None, train_metrics: bool = False) -> None:
        self.metrics = list(metrics or [])
        self.metric_names = [metric_name(m) for m in self.metrics]
        for metric, name in zip(self.metrics, self.metric_names):
            _check_metric(_unpair(metric), name)
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ValueError(
                f"metric names must be unique, got {self.metric_names}; give each function its own __name__ "
                "(for a functools.partial, set its __name__ attribute), or name a metric with a (name, metric) pair."
            )
        objects = [_unpair(m) for m in self.metrics]
        # Functions are averaged by WeightedSums; stateful metrics keep their own state.
        self._funcs = [(n, m) for n, m in zip(self.metric_names, objects) if not is_stateful(m)]
        self._stateful = [(n, m) for n, m in zip(self.metric_names, objects) if is_stateful(m)]
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
        if not self._stateful:
            return
        if _sharded(self.learn):
            alone = [name for name, m in self._stateful if not _syncs_itself(m)]
            if alone:
                raise ValueError(
                    f"metrics {alone} keep state but do not combine it across processes, so under distributed "
                    "training each rank would report its own shard; use torchmetrics metrics (which gather their "
                    "states in compute, sync_on_compute=True) or functions of the batch."
                )
        device = next((p.device for p in self.model.parameters()), None)
        for _, metric in self._stateful:
            if device is not None and getattr(metric, "device", device) != device and callable(getattr(metric, "to", None)):
                metric.to(device)

    def _start(self, with_metrics: bool) -> None:
        self._with_metrics = with_metrics and bool(self.metrics)
        self._sums = WeightedSums(1 + len(self._funcs) if self._with_metrics else 1)
        if self._with_metrics:
            for _, metric in self._stateful:
                metric.reset()

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

    def _check_first_batch(self) -> None:
        # The fit's first batch: try the metrics now, not after an epoch of training. A stateful
        # metric is tried on a copy, so its own state is untouched.
        learn = self.learn
        with torch.no_grad():
            check_values([m(learn.pred, *learn.yb) for _, m in self._funcs], [n for n, _ in self._funcs])
            for name, metric in self._stateful:
                try:
                    probe = copy.deepcopy(metric)
                    probe.reset()
                    probe.update(learn.pred, *learn.yb)
                    with warnings.catch_warnings():  # one batch's value is thrown away: so are its warnings
                        warnings.simplefilter("ignore")
                        compute_metric(probe, name, sync=False)
                except Exception as err:
                    err.add_note(f"AvgStats tried metric {name!r} on the first batch (pred and yb of that batch).")
                    raise

    def after_loss(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.loss is None:  # an evaluated batch without targets
            return
        if self._check_metrics:
            self._check_metrics = False
            self._check_first_batch()
        yb = learn.yb  # not empty: a batch with a loss has targets
        first = yb[0]
        n = first.shape[0] if type(first) is torch.Tensor and first.ndim else batch_size(yb)
        if not self._with_metrics:
            self._sums.add((learn.loss,), n)  # type: ignore[union-attr]  # set at before_<phase>
            return
        pred = learn.pred
        self._sums.add([learn.loss, *(m(pred, *yb) for _, m in self._funcs)], n)  # type: ignore[union-attr]
        if self._stateful:
            if learn.training:  # a metric that keeps the predictions must not keep their graph alive
                pred = _detached(pred)
            with torch.no_grad():
                for _, metric in self._stateful:
                    metric.update(pred, *yb)

    def _finish(self) -> PhaseStats:
        sums, self._sums = self._sums, None
        if sums is None:
            return PhaseStats()
        totals = sums.totals()
        sharded = _sharded(self.learn)
        if sharded:
            dist.all_reduce(totals)
        if not self._with_metrics:
            count, (loss,) = WeightedSums.means(totals)
            return PhaseStats(loss, {}, count)
        stateful = self._stateful if sums.count else []  # nothing to compute in a phase without batches
        values = [compute_metric(m, name, sync=sharded) for name, m in stateful]
        # One host sync for the phase: the sums and the computed values travel together.
        n_totals = totals.numel()
        if values:
            totals = torch.cat([totals, torch.stack(values).to(totals.device, totals.dtype)])
        row = totals.tolist()
        count, weighted = int(row[0]), row[1:n_totals]
        means = [value / count if count else math.nan for value in weighted]
        figures = dict(zip([n for n, _ in self._funcs], means[1:]))
        figures.update(zip([n for n, _ in stateful], row[n_totals:]))
        return PhaseStats(means[0], {name: figures.get(name, math.nan) for name in self.metric_names}, count)

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
