"""Hyper-parameter schedules: annealers, `ParamScheduler`, one-cycle and torch schedulers.

An annealer is a function of `pos`, the fraction of training done, in [0, 1].
`sched_lin(0.1, 1.0)(0.5)` is 0.55. Annealers also take a numpy array or a
tensor of positions (for plotting), and `combine_scheds` joins them over
consecutive fractions of training. `ParamScheduler` sets hyper-parameters from
them at every training batch; `learn.fit_one_cycle` and `learn.lr_find` are
built on this module (the finder itself is in `lr_finder.py`).
"""

from __future__ import annotations

import bisect
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from loopkit import Callback

from ._hypers import check_number, hyper_keys, resolve_path, set_hyper
from ._monitor import Monitor

AnnealFunc = Callable[[float], float]
"""A function of `pos` in [0, 1] (the fraction of training done) to a hyper-parameter value."""


class Annealer:
    """A schedule made by `sched_lin`, `sched_cos`, ... or `combine_scheds`: call it with `pos`.

    `pos` is a float in [0, 1] (a float comes back), or a numpy array, a
    sequence or a tensor of positions (an array or a tensor comes back).
    Positions outside [0, 1] are clamped to it. The `repr` is the call that
    makes the schedule.
    """

    @overload
    def __call__(self, pos: float) -> float: ...
    @overload
    def __call__(self, pos: torch.Tensor) -> torch.Tensor: ...
    @overload
    def __call__(self, pos: np.ndarray | Sequence[float]) -> np.ndarray: ...

    def __call__(self, pos: Any) -> Any:
        """Return the value at `pos` (a float, or one value per position of an array or tensor)."""
        if isinstance(pos, torch.Tensor):
            p = pos if pos.is_floating_point() else pos.to(torch.get_default_dtype())
            return self._curve(p.clamp(0.0, 1.0), torch)
        if isinstance(pos, numbers.Real):
            # math on floats: ParamScheduler calls this once per batch per param group
            return float(self._point(min(max(float(pos), 0.0), 1.0)))
        return self._curve(np.clip(np.asarray(pos, dtype=np.float64), 0.0, 1.0), np)

    def _point(self, p: float) -> float:
        raise NotImplementedError

    def _curve(self, p: Any, xp: Any) -> Any:
        raise NotImplementedError


class _Shape(Annealer):
    # A curve from start to end. Subclasses give `_raw`; the endpoints are returned
    # exactly and the value is clamped between them, so rounding never overshoots `end`
    # or breaks monotonicity next to it.
    kind = ""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self._low, self._high = min(start, end), max(start, end)

    def _raw(self, p: Any, xp: Any) -> Any:
        raise NotImplementedError

    def _point(self, p: float) -> float:
        if p >= 1.0:
            return self.end
        if p <= 0.0:
            return self.start
        return min(max(self._raw(p, math), self._low), self._high)

    def _curve(self, p: Any, xp: Any) -> Any:
        x = xp.clip(self._raw(p, xp), self._low, self._high)
        return xp.where(p >= 1.0, self.end, xp.where(p <= 0.0, self.start, x))

    def __repr__(self) -> str:
        return f"sched_{self.kind}({self.start!r}, {self.end!r})"


class _Lin(_Shape):
    kind = "lin"

    def _raw(self, p: Any, xp: Any) -> Any:
        return self.start + (self.end - self.start) * p


class _Cos(_Shape):
    kind = "cos"

    def _raw(self, p: Any, xp: Any) -> Any:
        return self.start + (self.end - self.start) * (1 - xp.cos(math.pi * p)) / 2


class _Exp(_Shape):
    kind = "exp"

    def _raw(self, p: Any, xp: Any) -> Any:
        return self.start * (self.end / self.start) ** p


class _Poly(_Shape):
    kind = "poly"

    def __init__(self, start: float, end: float, power: float) -> None:
        super().__init__(start, end)
        self.power = power

    def _raw(self, p: Any, xp: Any) -> Any:
        return self.start + (self.end - self.start) * p**self.power

    def __repr__(self) -> str:
        return f"sched_poly({self.start!r}, {self.end!r}, {self.power!r})"


class _No(Annealer):
    def __init__(self, start: float) -> None:
        self.start = start

    def _point(self, p: float) -> float:
        return self.start

    def _curve(self, p: Any, xp: Any) -> Any:
        return xp.full_like(p, self.start)

    def __repr__(self) -> str:
        return f"sched_no({self.start!r})"


def sched_lin(start: float, end: float) -> Annealer:
    """Return a straight line from `start` at pos 0 to `end` at pos 1."""
    return _Lin(check_number("sched_lin", "start", start), check_number("sched_lin", "end", end))


def sched_cos(start: float, end: float) -> Annealer:
    """Return a half cosine from `start` at pos 0 to `end` at pos 1 (flat at both ends)."""
    return _Cos(check_number("sched_cos", "start", start), check_number("sched_cos", "end", end))


def sched_exp(start: float, end: float) -> Annealer:
    """Return a geometric curve from `start` to `end`: `start * (end / start) ** pos`.

    Raises `ValueError` unless both are > 0.
    """
    start, end = check_number("sched_exp", "start", start), check_number("sched_exp", "end", end)
    if not (start > 0 and end > 0):
        raise ValueError(
            f"sched_exp: start and end must be > 0 for a geometric curve, got start={start!r}, end={end!r}; "
            "start from a small positive value such as 1e-8, or use sched_lin or sched_cos to reach 0."
        )
    return _Exp(start, end)


def sched_no(start: float, end: float | None = None) -> Annealer:
    """Return the constant `start`; `end` is accepted, like the other annealers', and ignored."""
    return _No(check_number("sched_no", "start", start))


def sched_poly(start: float, end: float, power: float) -> Annealer:
    """Return `start + (end - start) * pos ** power`: slow then fast for power > 1, the reverse below 1.

    Raises `ValueError` unless `power` > 0.
    """
    start, end = check_number("sched_poly", "start", start), check_number("sched_poly", "end", end)
    power = check_number("sched_poly", "power", power)
    if not power > 0:
        raise ValueError(f"sched_poly: power must be > 0, got {power!r}; for a constant use sched_no.")
    return _Poly(start, end, power)


class _Combined(Annealer):
    def __init__(self, pcts: list[float], scheds: list[AnnealFunc]) -> None:
        self.pcts, self.scheds = pcts, scheds
        bounds = [0.0, *np.cumsum(pcts)[:-1].tolist(), 1.0]  # the last is 1 exactly, whatever the float sum
        self._spans = list(zip(bounds[:-1], bounds[1:]))
        self._joins = bounds[1:-1]

    def _point(self, p: float) -> float:
        i = bisect.bisect_right(self._joins, p)
        low, high = self._spans[i]
        return self.scheds[i](min(max((p - low) / (high - low), 0.0), 1.0))

    def _curve(self, p: Any, xp: Any) -> Any:
        out = xp.zeros_like(p)
        last = len(self._spans) - 1
        for i, ((low, high), sched) in enumerate(zip(self._spans, self.scheds)):
            mask = (p >= low) & (p < high) if i < last else (p >= low)
            out[mask] = sched(xp.clip((p[mask] - low) / (high - low), 0.0, 1.0))
        return out

    def __repr__(self) -> str:
        return f"combine_scheds({self.pcts!r}, {self.scheds!r})"


def combine_scheds(pcts: Sequence[float], scheds: Sequence[AnnealFunc]) -> Annealer:
    """Join `scheds` over consecutive fractions `pcts` of training.

    Piece `i` runs over its own pos 0 -> 1 while the overall pos crosses
    `pcts[i]`; at a join the next piece starts, and pos 1 gives the last
    piece's value at 1. `pcts` must be positive and sum to 1 within 1e-6.
    For array or tensor positions every piece must accept them too (annealers do).
    """
    if isinstance(pcts, (str, bytes)) or not isinstance(pcts, Sequence) or not isinstance(scheds, Sequence):
        raise TypeError(
            f"combine_scheds takes two lists, pcts and scheds, got {type(pcts).__name__} and {type(scheds).__name__}; "
            "e.g. combine_scheds([0.3, 0.7], [sched_cos(0.1, 1.0), sched_cos(1.0, 0.0)])."
        )
    pcts = [check_number("combine_scheds", "each of pcts", p) for p in pcts]
    if not pcts or len(pcts) != len(scheds):
        raise ValueError(
            f"combine_scheds: pcts and scheds must be non-empty and of the same length, got {len(pcts)} pcts and "
            f"{len(scheds)} scheds; give one fraction of training per schedule."
        )
    if any(p <= 0 for p in pcts):
        raise ValueError(f"combine_scheds: every pct must be > 0, got {pcts}; drop the schedules with no share.")
    total = math.fsum(pcts)
    if abs(total - 1) > 1e-6:
        raise ValueError(
            f"combine_scheds: pcts must sum to 1, got {total:.6g} from {pcts}; "
            f"{'add' if total < 1 else 'remove'} {abs(1 - total):.6g} {'to' if total < 1 else 'from'} one phase."
        )
    for sched in scheds:
        if not callable(sched):
            raise TypeError(f"combine_scheds: each schedule must be a function of pos, e.g. sched_lin(0, 1); got {sched!r}.")
    return _Combined([float(p) for p in pcts], list(scheds))


def one_cycle_scheds(
    lr_max: float | Sequence[float],
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: Sequence[float] | None = (0.95, 0.85, 0.95),
    wd: float | None = None,
) -> dict[str, AnnealFunc | list[AnnealFunc]]:
    """Return the one-cycle schedules for `ParamScheduler`, as `learn.fit_one_cycle` uses them.

    `lr`: a half cosine from `lr_max / div` to `lr_max` over the first
    `pct_start` of training, then one down to `lr_max / div_final` (one schedule
    per param group when `lr_max` is a list). `mom`: from `moms[0]` to
    `moms[1]` and back to `moms[2]` over the same phases; `moms=None` leaves
    momentum alone. `wd`, if given, holds `weight_decay` at that value.

    Everything is checked here, before any training: `TypeError` for a value
    that is not a number (a string lr_max such as "1e-3"), `ValueError` for one
    out of range (lr_max <= 0, div or div_final < 1, pct_start outside (0, 1),
    a momentum outside [0, 1), wd < 0).
    """
    where = "fit_one_cycle"
    if isinstance(lr_max, (str, bytes)):
        raise TypeError(
            f"{where}: lr_max must be a number (or a list of numbers, one per param group), got the string "
            f"{lr_max!r}; pass a float such as 1e-3 (convert text from a config or the command line with float())."
        )
    lr_maxes = list(lr_max) if isinstance(lr_max, Sequence) else [lr_max]
    if not lr_maxes:
        raise ValueError(f"{where}: lr_max is an empty list; give one lr per param group, or one number for all.")
    for lr in lr_maxes:
        if not check_number(where, "lr_max", lr) > 0:
            raise ValueError(f"{where}: lr_max must be > 0, got {lr_max!r}; learn.lr_find() suggests one.")
    for name, value, role in (("div", div, "starts at"), ("div_final", div_final, "ends at")):
        if not check_number(where, name, value) >= 1:
            raise ValueError(
                f"{where}: {name} must be >= 1, got {value!r}: the lr {role} lr_max / {name}, which must not exceed lr_max; "
                f"the usual values are div=25 and div_final=1e5."
            )
    if not 0 < check_number(where, "pct_start", pct_start) < 1:
        raise ValueError(
            f"{where}: pct_start is the fraction of training spent warming up and must be strictly between "
            f"0 and 1, got {pct_start!r}; the usual value is 0.25."
        )
    phases = [pct_start, 1 - pct_start]
    lrs: list[AnnealFunc] = [
        combine_scheds(phases, [sched_cos(lr / div, lr), sched_cos(lr, lr / div_final)]) for lr in lr_maxes
    ]
    scheds: dict[str, AnnealFunc | list[AnnealFunc]] = {"lr": lrs if isinstance(lr_max, Sequence) else lrs[0]}
    if moms is not None:
        if isinstance(moms, (str, bytes)) or not isinstance(moms, Sequence) or len(moms) != 3:
            raise ValueError(
                f"{where}: moms must be three momentums (start, at the lr peak, end) or None, got {moms!r}; "
                "the usual values are (0.95, 0.85, 0.95)."
            )
        start, low, end = (check_number(where, "each of moms", m) for m in moms)
        if not all(0 <= m < 1 for m in (start, low, end)):
            raise ValueError(
                f"{where}: each of moms must be in [0, 1) (a momentum, or Adam's first beta), got {moms!r}; "
                "the usual values are (0.95, 0.85, 0.95)."
            )
        scheds["mom"] = combine_scheds(phases, [sched_cos(start, low), sched_cos(low, end)])
    if wd is not None:
        if not check_number(where, "wd", wd) >= 0:
            raise ValueError(f"{where}: wd (weight decay) must be >= 0, got {wd!r}.")
        scheds["weight_decay"] = sched_no(wd)
    return scheds


class ParamScheduler(Callback):
    """Set hyper-parameters from annealing functions of `pct_train`, at every training batch.

    Events: before_fit, before_train, before_batch, after_fit. Reads: opt, training, pct_train, n_iter.
    Writes on the learner: the scheduled hyper-parameters of `learn.opt.param_groups`,
    and the attributes scheduled by dotted path, at every training `before_batch`
    (nothing during validation); the attributes go back at `after_fit`.
    Publishes: `scheds` (name -> the function, or list of functions, as given).
    order = -50: after TrainEval (-100) has set this batch's `pct_train`, and before
    callbacks at the default order, so they see this batch's values.

    `scheds` maps a hyper-parameter name to a function of pos in [0, 1] (an
    annealer such as `sched_cos(1e-3, 1e-1)`, or any function), or to a list of
    them, one per param group. `"mom"` is `momentum` for SGD- and RMSprop-like
    optimizers and `betas[0]` for Adam-like ones; any other name must be a
    numeric key of every param group (`lr`, `weight_decay`, ...). The names and
    group counts are checked against the optimizer at `before_fit`. `Recorder`
    reads the param groups after this sets them, so `learn.recorder.hps[name]`
    holds the values set for every batch and `plot_sched()` draws them.

    Schedule anything else by a dotted path from the learner to a numeric
    attribute: `"model.drop.p"` (a dropout's probability), `"dls.train.dataset.noise"`.
    A path takes one function; it is resolved and checked at `before_fit` (a
    `ValueError` if it does not resolve or is not a number), set at every training
    batch, recorded by `Recorder` as `hps[path]` (one list), and put back to its
    value from before the fit at `after_fit`, as optimizer hypers are.
    """

    order = -50

    def __init__(self, scheds: Mapping[str, AnnealFunc | Sequence[AnnealFunc]]) -> None:
        if not isinstance(scheds, Mapping) or not scheds:
            raise TypeError(
                f"ParamScheduler takes a dict of hyper-parameter name -> schedule, got {scheds!r}; "
                "e.g. ParamScheduler({'lr': sched_cos(1e-3, 1e-1)})."
            )
        for name, funcs in scheds.items():
            if not isinstance(name, str):
                raise TypeError(f"ParamScheduler: names must be strings such as 'lr' or 'mom', got {name!r}.")
            many = isinstance(funcs, Sequence) and not isinstance(funcs, str)
            for func in funcs if many else [funcs]:  # type: ignore[union-attr]  # a list of functions when many
                _check_sched(name, func)
            if many and not funcs:
                raise ValueError(f"ParamScheduler: the list of schedules for {name!r} is empty; give one per param group.")
        self.scheds = dict(scheds)
        self._plan: list[tuple[int, str, AnnealFunc]] = []
        self._paths: list[tuple[Any, str, AnnealFunc]] = []
        self._saved_paths: list[tuple[Any, str, Any]] = []
        self._warned = False

    def before_fit(self) -> None:
        self._plan = []
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to schedule
            return
        groups = self.opt.param_groups
        self._paths, self._saved_paths = [], []
        for name, funcs in self.scheds.items():
            if "." in name:  # a dotted path to an attribute, not an optimizer hyper
                if isinstance(funcs, Sequence):
                    raise ValueError(f"ParamScheduler: {name!r} is an attribute, not a param group hyper; give one function.")
                owner, attr = resolve_path(self.learn, name, "ParamScheduler")
                self._paths.append((owner, attr, funcs))
                self._saved_paths.append((owner, attr, getattr(owner, attr)))
                continue
            for g, group in enumerate(groups):
                if name not in (n for n, _, _ in hyper_keys(group)):
                    names = ", ".join(repr(n) for n, _, _ in hyper_keys(group))
                    raise ValueError(
                        f"ParamScheduler: {name!r} is not a hyper-parameter of param group {g} of "
                        f"{type(self.opt).__name__}; the names you can schedule are {names} "
                        "('mom' is momentum, or betas[0] for Adam-like optimizers)."
                        + (" For fit_one_cycle with an optimizer without momentum, pass moms=None." if name == "mom" else "")
                    )
            if isinstance(funcs, Sequence):
                if len(funcs) != len(groups):
                    raise ValueError(
                        f"ParamScheduler: {name!r} has {len(funcs)} schedules but the optimizer has {len(groups)} "
                        f"param group{'s' if len(groups) != 1 else ''}; give one schedule per group, or a single "
                        "function for all of them."
                    )
                self._plan += [(g, name, func) for g, func in enumerate(funcs)]
            else:
                self._plan += [(g, name, funcs) for g in range(len(groups))]

    def before_train(self) -> None:
        if self.learn.n_iter is None and not self._warned:
            self._warned = True
            warnings.warn(
                "ParamScheduler: the training loader has no length, so pct_train can only move once per epoch "
                "and the schedule is a staircase (constant over a one-epoch fit); give the loader a __len__.",
                stacklevel=2,
            )

    def before_batch(self) -> None:
        learn = self.learn  # direct reads: this runs on every batch
        if learn.training:
            groups, pos = learn.opt.param_groups, learn.pct_train
            for g, name, func in self._plan:
                set_hyper(groups[g], name, float(func(pos)))
            for owner, attr, func in self._paths:
                setattr(owner, attr, float(func(pos)))

    def after_fit(self) -> None:
        # Scheduled attributes are per fit too, as the optimizer's hypers are.
        for owner, attr, value in self._saved_paths:
            setattr(owner, attr, value)
        self._saved_paths = []

    def __repr__(self) -> str:
        return f"ParamScheduler({self.scheds!r})"


def _check_sched(name: str, func: Any) -> None:
    if not callable(func):
        raise TypeError(
            f"ParamScheduler: the schedule for {name!r} must be a function of pos in [0, 1], got {func!r}; "
            "e.g. sched_cos(1e-3, 1e-1)."
        )
    try:
        float(func(0.0))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"ParamScheduler: the schedule for {name!r} must return a number for pos=0.0, but {func!r} failed: {err}"
        ) from err


TorchSched = LRScheduler | ReduceLROnPlateau


def _check_scheduler_class(cls: type) -> None:
    # A class is a function opt -> scheduler only if the optimizer is all it needs.
    name = cls.__name__
    if not issubclass(cls, (LRScheduler, ReduceLROnPlateau)):
        raise TypeError(
            f"TorchScheduler takes a torch.optim.lr_scheduler scheduler or a function opt -> scheduler, got the "
            f"class {name}, which is not a scheduler; e.g. TorchScheduler(lambda opt: StepLR(opt, step_size=10))."
        )
    try:
        params = list(inspect.signature(cls).parameters.values())[1:]  # after the optimizer
    except ValueError:  # no signature to inspect: the call at before_fit will tell
        return
    needed = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        args = ", ".join(f"{n}=..." for n in needed)
        raise TypeError(
            f"TorchScheduler got the class {name}, which needs {', '.join(map(repr, needed))} as well as the "
            f"optimizer; pass a function that builds it, e.g. TorchScheduler(lambda opt: {name}(opt, {args}))."
        )


class TorchScheduler(Callback):
    """Let a `torch.optim.lr_scheduler` scheduler drive the learning rate.

    Events: before_fit, after_cancel_step, after_step, after_epoch.
    Reads: opt, and for `ReduceLROnPlateau` the monitored figure in
    `learn.avg_stats.history`. Writes on the learner: the param groups' `lr`,
    through the scheduler. Publishes: `scheduler` (the torch scheduler in use).
    order = 10: its `after_epoch` runs after AvgStats (-20) has written the epoch's row.

    `scheduler` is a function `opt -> scheduler`, called at every `before_fit`
    with `learn.opt` (so it works before the optimizer exists, and each fit
    starts a fresh schedule from the current lr), or a scheduler already built
    on `learn.opt` (which is None before the first fit: call `learn.create_opt()`
    first). A scheduler class is taken as that function only if the optimizer is
    all it needs; `TorchScheduler(CosineAnnealingLR)` raises `TypeError` saying
    to pass `lambda opt: CosineAnnealingLR(opt, T_max=...)`.
    `every="batch"` steps it after each training batch whose optimizer step ran
    (a step cancelled by gradient accumulation does not count); `every="epoch"`
    steps it at the end of each epoch. `ReduceLROnPlateau` is stepped per
    epoch with the figure `monitor` of the epoch (a column of
    `learn.avg_stats.history`, e.g. "valid_loss"). The scheduler's state is
    saved in checkpoints, so a resumed fit continues it.
    """

    order = 10

    def __init__(
        self,
        scheduler: TorchSched | Callable[[torch.optim.Optimizer], TorchSched],
        every: str = "batch",
        monitor: str = "valid_loss",
    ) -> None:
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)) and not callable(scheduler):
            raise TypeError(
                f"TorchScheduler takes a torch.optim.lr_scheduler scheduler or a function opt -> scheduler, "
                f"got {scheduler!r}; e.g. TorchScheduler(lambda opt: StepLR(opt, step_size=10), every='epoch')."
            )
        if isinstance(scheduler, type):
            _check_scheduler_class(scheduler)
        if every not in ("batch", "epoch"):
            raise ValueError(f"TorchScheduler: every must be 'batch' or 'epoch', got {every!r}.")
        self.every, self.monitor = every, Monitor(monitor, owner="TorchScheduler")
        built = isinstance(scheduler, (LRScheduler, ReduceLROnPlateau))
        self._make: Callable[[torch.optim.Optimizer], TorchSched] | None = None if built else scheduler  # type: ignore[assignment]
        self.scheduler: TorchSched | None = scheduler if built else None  # type: ignore[assignment]  # built
        if self.scheduler is not None:
            self._check(self.scheduler)
        self._step_ran = True

    def _check(self, scheduler: Any) -> None:
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            raise TypeError(
                f"TorchScheduler: the function returned {scheduler!r}, not a torch.optim.lr_scheduler scheduler."
            )
        if isinstance(scheduler, ReduceLROnPlateau) and self.every != "epoch":
            raise ValueError(
                "TorchScheduler: ReduceLROnPlateau steps on an epoch's figure; pass every='epoch' "
                f"(and monitor=, now {self.monitor.name!r})."
            )

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to schedule
            return
        if self._make is not None:
            for group in self.opt.param_groups:
                # torch schedulers start from `initial_lr` when a group has one (a previous
                # scheduler left it): reset it, so a fresh schedule starts from the current lr.
                # Not popped: Recorder has already listed the group's keys at its before_fit.
                if "initial_lr" in group:
                    group["initial_lr"] = group["lr"]
            self.scheduler = self._make(self.opt)
            self._check(self.scheduler)
        elif self.scheduler is not None and self.scheduler.optimizer is not self.opt:
            raise ValueError(
                f"TorchScheduler: the {type(self.scheduler).__name__} was built on another optimizer than learn.opt "
                "(the learner makes its own at the first fit, or at learn.create_opt()); pass a function that "
                "builds it on learn.opt, e.g. TorchScheduler(lambda opt: StepLR(opt, step_size=10)), or build it "
                "on learn.opt after learn.create_opt()."
            )

    def after_cancel_step(self) -> None:
        self._step_ran = False

    def after_step(self) -> None:
        if self.every == "batch" and self._step_ran:
            scheduler: Any = self.scheduler  # made at before_fit; never ReduceLROnPlateau here
            scheduler.step()
        self._step_ran = True

    def after_epoch(self) -> None:
        if self.every != "epoch":
            return
        scheduler: Any = self.scheduler
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(self.monitor.read(self.learn))
        else:
            scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Return the torch scheduler's state, for checkpoints."""
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (into the scheduler made at `before_fit`)."""
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
