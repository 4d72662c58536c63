"""`summary(learn)`: the model's layers with their output shapes and parameters, then the training setup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import rng_state, set_rng_state
from .device import to_device
from .hooks import Hook

if TYPE_CHECKING:
    from loopkit import Learner


class Summary(str):
    """A multi-line string that shows as itself, not quoted, when it is the last value in a REPL cell."""

    def __repr__(self) -> str:
        return str(self)


def shape_text(out: Any) -> str:
    """Return a tensor's shape as `64 x 10`, through tuples, lists and dicts; other values by their type."""
    if isinstance(out, torch.Tensor):
        return " x ".join(str(d) for d in out.shape) or "scalar"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(shape_text(o) for o in out) + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {shape_text(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def _trainable(params: list[nn.Parameter]) -> str:
    if not params:
        return ""
    n = sum(p.requires_grad for p in params)
    return "yes" if n == len(params) else "no" if n == 0 else "partly"


def summary(learn: Learner) -> Summary:
    """Return a table of the model's layers (output shape, parameters, trainable) and the training setup.

    The output shapes come from one forward pass of the first batch of the train
    loader, under `torch.no_grad()` with every module in eval mode and forward
    hooks on every module; nothing trains and nothing changes: the weights, each
    module's mode, the RNG states (the loader's shuffling included) and the
    learner are as before, and no hook stays. A row is a module without children,
    or one that holds parameters itself; "-" marks a module the forward did not
    call. After the totals come the optimizer (or how the first fit will make it),
    the loss function and the callbacks in the order they run. Works before the
    first fit. Raises `ValueError` when the train loader yields no batch.
    """
    model = learn.model.module if isinstance(learn.model, DistributedDataParallel) else learn.model
    named = [(name, m) for name, m in model.named_modules() if name] or [("", model)]
    rows = [(name, m) for name, m in named if next(m.children(), None) is None or next(m.parameters(False), None) is not None]
    outputs: dict[int, list[str]] = {id(m): [] for _, m in rows}

    def record(hook: Hook, module: nn.Module, inp: Any, out: Any) -> None:
        outputs[id(module)].append(shape_text(out))

    rng = rng_state(learn)
    modes = [(m, m.training) for m in model.modules()]
    hooks = [Hook(m, record) for _, m in rows]
    try:
        batch = next(iter(learn.train_dl), None)
        if batch is None:
            raise ValueError(
                "summary: the train loader yields no batch, and the output shapes come from one; give it data "
                "(with drop_last=True, a dataset smaller than one batch yields none)."
            )
        if not isinstance(batch, (tuple, list)) or len(batch) < learn.n_inp:
            raise TypeError(f"summary: a batch must be a tuple or list starting with the {learn.n_inp} input(s), got {type(batch).__name__}.")
        param = next(model.parameters(), None)
        xb = to_device(tuple(batch[: learn.n_inp]), param.device if param is not None else "cpu")
        model.eval()
        with torch.no_grad():
            model(*xb)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes:
            module.training = mode
        set_rng_state(learn, rng)
    return Summary(_table(learn, model, rows, outputs, xb))


def _table(learn: Learner, model: nn.Module, rows: list[tuple[str, nn.Module]], outputs: dict[int, list[str]],
           xb: tuple[Any, ...]) -> str:  # fmt: skip
    table = [("Layer (type)", "Output shape", "Params", "Trainable")]
    for name, module in rows:
        params = list(module.parameters(False))
        shapes = outputs[id(module)]
        shape = (shapes[0] + (f"  (x{len(shapes)} calls)" if len(shapes) > 1 else "")) if shapes else "-"
        table.append((f"{name} ({type(module).__name__})", shape, f"{sum(p.numel() for p in params):,}", _trainable(params)))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    text = [f"{type(model).__name__} (input: {', '.join(shape_text(x) for x in xb)})"]
    for i, row in enumerate(table):
        cells = (cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
        text.append("  ".join(cells).rstrip())
        if i == 0:
            text.append(line)
    unique = {id(p): p for p in model.parameters()}.values()  # a shared parameter counts once
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    text += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
             f"Non-trainable params: {total - trainable:,}", ""]  # fmt: skip
    text += _setup(learn)
    return "\n".join(text)


def _name(obj: Any) -> str:
    func = getattr(obj, "func", None)  # functools.partial
    if func is not None:
        extra = ", ".join(f"{k}={v!r}" for k, v in getattr(obj, "keywords", {}).items())
        return f"{_name(func)}({extra})" if extra else _name(func)
    return getattr(obj, "__name__", None) or type(obj).__name__


def _setup(learn: Learner) -> list[str]:
    opt = learn.opt
    if opt is None:
        lines = [f"Optimizer: {_name(learn.opt_func)}, lr={learn.lr:g} (made at the first fit)"]
    else:
        lines = [f"Optimizer: {type(opt).__name__}, {len(opt.param_groups)} param group(s)"]
        for i, group in enumerate(opt.param_groups):
            hypers = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params" and isinstance(v, (int, float, tuple)))
            lines.append(f"  group {i}: {sum(p.numel() for p in group['params']):,} params, {hypers}")
    lines.append(f"Loss: {_name(learn.loss_func)}")
    lines.append("Callbacks (in the order they run):")
    lines += [f"  {cb.order:>5}  {type(cb).__name__} (learn.{cb.cb_name})" for cb in learn.cbs]
    return lines
