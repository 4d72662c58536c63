"""Hyper-parameters are per fit: after any sequence of fits of any kind, ended any way, each
param group has the hypers it had before each fit, and each fit starts from them."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loopkit import Callback, CancelFit
from loopkit.callbacks import ParamScheduler, TorchScheduler, sched_cos, sched_lin
from tests.conftest import make_learner


def hypers(learn) -> list[dict]:
    return copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups])


class Boom(Exception):
    """A bug somewhere in the fit."""


class EndAt(Callback):
    """End the fit after `at` training batches, by a cancel or an error."""

    order = 200

    def __init__(self, at: int, error: type[BaseException]):
        self.at, self.error = at, error

    def after_batch(self):
        if self.training and self.train_iter >= self.at:
            raise self.error()


class FirstStepHypers(Callback):
    """Keep the hypers the first optimizer step of the fit used."""

    order = 150

    def before_fit(self):
        self.seen = None

    def before_step(self):
        if self.seen is None:
            self.seen = hypers(self.learn)


def run(learn, kind: str, cbs: list[Callback]) -> None:
    if kind == "fit":
        learn.fit(1, cbs=cbs)
    elif kind == "fit_lr":
        learn.fit(1, lr=0.05, cbs=cbs)
    elif kind == "one_cycle":
        learn.fit_one_cycle(2, 0.5, wd=0.1, cbs=cbs)
    elif kind == "param_scheduler":
        learn.fit(1, cbs=[ParamScheduler({"lr": sched_cos(0.3, 0.01), "mom": sched_lin(0.8, 0.9)}), *cbs])
    elif kind == "cosine":
        learn.fit(2, cbs=[TorchScheduler(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)), *cbs])
    elif kind == "plateau":
        plateau = TorchScheduler(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1),
                                 every="epoch")  # fmt: skip
        learn.fit(2, cbs=[plateau, *cbs])


KINDS = ["fit", "fit_lr", "one_cycle", "param_scheduler", "cosine", "plateau"]
ENDS = st.sampled_from([None, CancelFit, Boom, KeyboardInterrupt])


@settings(max_examples=20)
@given(steps=st.lists(st.tuples(st.sampled_from(KINDS), ENDS, st.integers(1, 3)), min_size=2, max_size=4))
def test_every_fit_starts_from_and_ends_at_the_hypers_from_before_it(steps):
    learn = make_learner(3, 1, default_cbs=True)
    learn.progress_bar.enabled = False
    # Two groups: weights decayed with momentum, biases not decayed (the usual no-decay group).
    model = learn.model
    learn.opt = torch.optim.SGD([{"params": [model.weight], "weight_decay": 1e-4},
                                 {"params": [model.bias], "weight_decay": 0.0, "lr": 0.02}], lr=0.1, momentum=0.9)  # fmt: skip
    original = hypers(learn)
    for kind, end, at in steps:
        spy = FirstStepHypers()
        cbs: list[Callback] = [spy] + ([EndAt(at, end)] if end is not None else [])
        if end in (Boom, KeyboardInterrupt):
            with pytest.raises(end):
                run(learn, kind, cbs)
        else:
            run(learn, kind, cbs)
        assert hypers(learn) == original, (kind, end)
        if kind == "fit":  # a plain fit trains at the hypers the groups had, whatever ran before it
            assert spy.seen == original
        assert all(p.grad is None for p in model.parameters())
