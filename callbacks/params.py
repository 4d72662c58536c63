"""Parameter groups: freeze and unfreeze parts of the model, and weight decay on weights only.

Biases and the parameters of normalization layers (batch, group, layer, instance
and RMS norm) are usually left out of weight decay: decaying them pulls the
layers towards zero output or zero scale without regularizing anything. The
functions here find them (`no_decay_params`), build optimizer param groups that
leave them out (`decay_groups`), and give the `weight_decay` of each group of an
existing optimizer for a fit (`wd_per_group`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .hooks import ModuleSpec, select_modules

if TYPE_CHECKING:
    from loopkit import Learner

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)  # fmt: skip


def no_decay_params(model: nn.Module) -> list[nn.Parameter]:
    """Return the biases and normalization-layer parameters of `model`, each once, in model order.

    A bias is a parameter registered under the name `bias`; a normalization layer
    is an instance of one of `NORM_TYPES` (or a subclass).
    """
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if is_norm or name == "bias":
                found.setdefault(id(param), param)
    return list(found.values())


def decay_groups(model: nn.Module, wd: float, wd_bn_bias: bool = False) -> list[dict[str, Any]]:
    """Return optimizer param groups: weights with `weight_decay=wd`, biases and norm parameters with 0.

    Pass them to an optimizer: `learn.opt = torch.optim.SGD(decay_groups(model, 1e-2), lr=0.1)`.
    With `wd_bn_bias=True` (or a model without biases or norm layers) there is one
    group, decayed whole. An empty group is left out.
    """
    if not wd >= 0:
        raise ValueError(f"wd (weight decay) must be >= 0, got {wd!r}.")
    params = list({id(p): p for p in model.parameters()}.values())
    if wd_bn_bias:
        return [{"params": params, "weight_decay": wd}]
    skip = {id(p) for p in no_decay_params(model)}
    groups = [
        {"params": [p for p in params if id(p) not in skip], "weight_decay": wd},
        {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def wd_per_group(learn: Learner, wd: float, wd_bn_bias: bool = False) -> list[float]:
    """Return the `weight_decay` each param group of `learn.opt` gets in a fit with weight decay `wd`.

    Made for `ParamScheduler` (one value per group), which sets them for one fit.
    With `wd_bn_bias=True` every group gets `wd`. Otherwise a group of biases and
    norm parameters only gets 0, and any other group `wd`; so that weight decay
    can skip them, the optimizer is made now if the learner has none yet, with
    the biases and norm parameters in a second group, and a group of an existing
    optimizer that holds both weights and such parameters is split: those
    parameters move to a new group, appended last, with the same hyper-parameters
    (their optimizer state, momentum included, stays theirs). Either way the new
    group's own `weight_decay` is 0, and every later fit sees the split groups.
    """
    if not wd >= 0:
        raise ValueError(f"wd (weight decay) must be >= 0, got {wd!r}.")
    model = learn.model.module if isinstance(learn.model, nn.parallel.DistributedDataParallel) else learn.model
    skip = {id(p) for p in no_decay_params(model)}
    params = list({id(p): p for p in model.parameters()}.values())
    weights = [p for p in params if id(p) not in skip]
    if learn.opt is None and not wd_bn_bias and weights and skip:
        learn.opt = learn.opt_func([{"params": weights}], lr=learn.lr)
    opt = learn.create_opt()
    if wd_bn_bias:
        return [wd] * len(opt.param_groups)
    for group in list(opt.param_groups):
        moved = [p for p in group["params"] if id(p) in skip]
        if moved and len(moved) < len(group["params"]):
            group["params"] = [p for p in group["params"] if id(p) not in skip]
            hypers = {k: v for k, v in group.items() if k != "params"}
            opt.add_param_group({**hypers, "params": moved, "weight_decay": 0.0})
    in_groups = {id(p) for group in opt.param_groups for p in group["params"]}
    rest = [p for p in params if id(p) in skip and id(p) not in in_groups]
    if rest:  # the optimizer was made above with the weights alone
        opt.add_param_group({"params": rest, "weight_decay": 0.0})
    return [0.0 if all(id(p) in skip for p in group["params"]) else wd for group in opt.param_groups]


def freeze(learn: Learner, modules: ModuleSpec = None, train_bn: bool = True) -> None:
    """Stop training part of the model: its parameters get `requires_grad=False`.

    With `modules` (a name, class, module or list of those, as for hooks) the
    parameters of those modules are frozen; without, every param group of the
    optimizer but the last (made now if there is none; build several groups to use
    this, e.g. body and head). With `train_bn` (the default) normalization layers
    stay trainable: their statistics and scales adapt to the new data at little
    cost. Frozen parameters get no gradient, so the optimizer leaves them alone
    (no step, no momentum, no weight decay). `unfreeze` undoes it. Raises
    `ValueError` for modules not in the model, or with one param group and no `modules`.
    """
    model = learn.model.module if isinstance(learn.model, nn.parallel.DistributedDataParallel) else learn.model
    if modules is not None:
        params = [p for _, module in select_modules(model, modules) for p in module.parameters()]
    else:
        groups = learn.create_opt().param_groups
        if len(groups) < 2:
            raise ValueError(
                "freeze(): the optimizer has one param group, so freezing all groups but the last would freeze "
                "nothing; name what to freeze (freeze(learn, modules=['body'])), or give learn.opt several "
                "param groups, the head last."
            )
        params = [p for group in groups[:-1] for p in group["params"]]
    keep = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(False)} if train_bn else set()
    for param in params:
        if id(param) not in keep:
            param.requires_grad_(False)


def unfreeze(learn: Learner) -> None:
    """Train the whole model again: every parameter gets `requires_grad=True`."""
    for param in learn.model.parameters():
        param.requires_grad_(True)
