"""Collect what an evaluation sees: `GatherPreds` behind `learn.get_preds` and `learn.predict`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from loopkit import Callback

from .device import to_device


def tree_map(func: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Apply `func` to every tensor in nested tuples, lists and dicts; keep the structure."""
    if isinstance(obj, torch.Tensor):
        return func(obj)
    if isinstance(obj, dict):
        return {key: tree_map(func, value) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(tree_map(func, value) for value in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(func, value) for value in obj)
    return obj


def tree_cat(items: list[Any]) -> Any:
    """Concatenate a list of equally nested batches along the first dimension of each tensor."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([item if item.ndim else item[None] for item in items])
    if isinstance(first, dict):
        return {key: tree_cat([item[key] for item in items]) for key in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(tree_cat(list(parts)) for parts in zip(*items)))
    if isinstance(first, (tuple, list)):
        return type(first)(tree_cat(list(parts)) for parts in zip(*items))
    return [value for item in items for value in item] if isinstance(first, list) else items


def tree_interleave(pieces: list[Any], world_size: int) -> Any:
    """Undo `Distributed`'s split of one global batch: rank r held positions r, r + world_size, ..."""
    first = pieces[0]
    if isinstance(first, torch.Tensor):
        out = first.new_empty((sum(len(p) for p in pieces), *first.shape[1:]))
        for rank, piece in enumerate(pieces):
            out[rank::world_size] = piece
        return out
    if isinstance(first, dict):
        return {key: tree_interleave([p[key] for p in pieces], world_size) for key in first}
    if isinstance(first, (tuple, list)):
        parts = [tree_interleave(list(group), world_size) for group in zip(*pieces)]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    return first


def per_sample_loss_func(loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Return a function giving one loss per sample, from `loss_func` with `reduction="none"`.

    A module with a `reduction` attribute (`nn.CrossEntropyLoss()`) is copied with
    `reduction="none"`; a function must accept `reduction` (as `F.cross_entropy`
    does). Raises `ValueError` when neither holds. The unreduced loss is averaged over
    all but the first dimension, so each sample's loss is the mean its batch would add.
    """
    if isinstance(loss_func, nn.Module) and hasattr(loss_func, "reduction"):
        unreduced: Callable[..., torch.Tensor] = _copy_with_reduction(loss_func)
    else:
        try:
            params = inspect.signature(loss_func).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        takes = "reduction" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        if not takes:
            raise ValueError(
                f"get_preds(with_loss=True) needs per-sample losses, but loss_func {_name(loss_func)} takes no "
                "`reduction` argument; give it one (def loss(pred, y, reduction='mean'): ...) that returns one "
                "loss per sample for reduction='none', or use a torch loss such as F.cross_entropy."
            )

        def unreduced(pred: Any, *yb: Any) -> torch.Tensor:
            return loss_func(pred, *yb, reduction="none")

    def per_sample(pred: Any, *yb: Any) -> torch.Tensor:
        losses = unreduced(pred, *yb)
        if not isinstance(losses, torch.Tensor) or losses.ndim == 0:
            raise ValueError(
                f"loss_func {_name(loss_func)} returned {losses!r} for reduction='none'; with_loss needs a "
                "tensor whose first dimension is the batch (one loss per sample)."
            )
        return losses.reshape(len(losses), -1).float().mean(1)

    return per_sample


def _copy_with_reduction(module: nn.Module) -> nn.Module:
    import copy

    unreduced = copy.copy(module)  # shallow: shares weights (class weights) with the original
    unreduced.reduction = "none"  # type: ignore[assignment]
    return unreduced


def _name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


class GatherPreds(Callback):
    """Keep each batch's outputs (and targets, inputs, per-sample losses) during an evaluation.

    Events: before_fit, after_loss, after_validate. Reads: evaluating, pred, xb, yb, loss_func, dl.
    Writes on the learner: nothing.
    Publishes: `result`, the tuple `get_preds` returns (ready after the evaluation).
    order = 10: after the batch is on the device and the loss is computed.

    It is added by `get_preds` and `predict` for one evaluation; it does nothing in a
    fit. Outputs are detached and, from CUDA, copied to pinned CPU memory without
    waiting (`non_blocking`), so no batch syncs the host; the copies are awaited once,
    at the end of the phase. Under `Distributed` every rank ends with every sample
    once, in the loader's order: the shards are gathered and interleaved back.
    """

    order = 10

    def __init__(self, with_input: bool = False, with_loss: bool = False, act: Callable[[Any], Any] | None = None,
                 to_cpu: bool = True) -> None:  # fmt: skip
        if act is not None and not callable(act):
            raise TypeError(f"act must be a function applied to the outputs, e.g. torch.sigmoid; got {act!r}.")
        self.with_input, self.with_loss, self.act, self.to_cpu = with_input, with_loss, act, to_cpu
        self.result: tuple[Any, ...] = ()
        self._batches: list[tuple[Any, ...]] = []

    def before_fit(self) -> None:
        self._batches, self.result = [], ()
        self._losses = per_sample_loss_func(self.learn.loss_func) if self.with_loss and self.evaluating else None

    def _keep(self, obj: Any) -> Any:
        def keep(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            if self.to_cpu and t.device.type != "cpu":
                return t.to("cpu", non_blocking=True)  # pinned for CUDA, so it doesn't wait
            return t

        return tree_map(keep, obj)

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.evaluating:
            return
        losses = self._losses(learn.pred, *learn.yb) if self._losses is not None and learn.yb else None
        if self._losses is not None and not learn.yb:
            raise ValueError("get_preds(with_loss=True): the batches have no targets, so there is no loss; "
                             "drop with_loss, or evaluate a loader that yields (x, y).")  # fmt: skip
        self._batches.append(self._keep((learn.xb if self.with_input else None, learn.pred, learn.yb, losses)))

    def after_validate(self) -> None:
        if not self.evaluating or not self._batches:
            return
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.current_stream().synchronize()  # the one wait for the non-blocking copies
        batches = self._gather(self._batches)
        self._batches = []
        xb, pred, yb, losses = (tree_cat([b[i] for b in batches]) if batches[0][i] is not None else None
                                for i in range(4))  # fmt: skip
        if self.act is not None:
            pred = self.act(pred)
        targ = (yb[0] if len(yb) == 1 else yb) if yb else None
        inp = xb[0] if xb is not None and len(xb) == 1 else xb
        self.result = ((inp,) if self.with_input else ()) + (pred, targ) + ((losses,) if self.with_loss else ())

    def _gather(self, batches: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        distributed = getattr(self.learn, "distributed", None)
        if distributed is None or not distributed.sharding or distributed.world_size < 2 or not dist.is_initialized():
            return batches
        world_size = distributed.world_size
        every: list[list[tuple[Any, ...]] | None] = [None] * world_size
        dist.all_gather_object(every, tree_map(lambda t: t.cpu(), batches))
        # Every rank yields the same number of batches; batch b of the loader is the interleave of theirs.
        return [tree_interleave([every[r][b] for r in range(world_size)], world_size)  # type: ignore[index]
                for b in range(len(batches))]  # fmt: skip

    def result_to(self, device: torch.device) -> Any:
        """Return the gathered outputs (the `pred` of `result`) moved to `device`."""
        return to_device(self.result[0], device)


def predict_batch(learn: Any, xb: Any) -> tuple[tuple[Any, ...], torch.device]:
    """Return `xb` as a one-batch loader's batch (inputs only) on the model's device, and the inputs' device."""
    inputs = tuple(xb) if isinstance(xb, (tuple, list)) else (xb,)
    if len(inputs) != learn.n_inp:
        raise ValueError(
            f"predict takes one batch of the model's {learn.n_inp} input(s), got {len(inputs)}; pass a tensor "
            "(or a tuple of n_inp tensors) with the batch dimension first, e.g. learn.predict(x[:8])."
        )
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    if first is None:
        raise TypeError(f"predict needs tensor inputs, got {[type(t).__name__ for t in inputs]}.")
    param = next(iter(learn.model.parameters()), None)
    device = param.device if param is not None else first.device
    return to_device(inputs, device), first.device
