"""EarlyStopping and TerminateOnNaN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from loopkit import Callback
from loopkit.callbacks import EarlyStopping, TerminateOnNaN
from tests.conftest import make_learner


def scripted(values: list[float], column: str = "valid_loss") -> Callback:
    class Script(Callback):
        order = -10  # after AvgStats wrote the row, before EarlyStopping reads it

        def after_epoch(self):
            self.avg_stats.history[-1][column] = values[self.epoch]

    return Script()


def expected_stop(values: list[float], patience: int, min_delta: float) -> int | None:
    """The epoch EarlyStopping should stop at, computed the obvious way."""
    best, wait = math.inf, 0
    for epoch, value in enumerate(values):
        if value < best - min_delta:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


@given(values=st.lists(st.sampled_from([1.0, 0.9, 0.8, 0.85, 0.5]), min_size=1, max_size=8),
       patience=st.integers(1, 3), min_delta=st.sampled_from([0.0, 0.06]))  # fmt: skip
def test_early_stopping_stops_after_patience_epochs_without_improvement(values, patience, min_delta):
    stop = EarlyStopping(patience=patience, min_delta=min_delta)
    learn = make_learner(n_train=1, n_valid=1, default_cbs=True, cbs=[scripted(values), stop])
    learn.progress_bar.enabled = False
    learn.fit(len(values))
    want = expected_stop(values, patience, min_delta)
    assert stop.stopped_epoch == want
    assert len(learn.avg_stats.history) == (len(values) if want is None else want + 1)


def test_early_stopping_max_mode_and_bad_arguments():
    stop = EarlyStopping(monitor="train_loss", mode="max", patience=2)
    learn = make_learner(default_cbs=True, cbs=[scripted([0.1, 0.3, 0.2, 0.25, 0.9], "train_loss"), stop])
    learn.progress_bar.enabled = False
    learn.fit(5)
    assert (stop.stopped_epoch, stop.best, stop.best_epoch) == (3, 0.3, 1)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(min_delta="a"), TypeError, r"min_delta .* must be a number, got 'a'; pass a float"),
        (dict(min_delta=None), TypeError, r"min_delta .* got None"),
        (dict(min_delta=float("nan")), ValueError, r"min_delta must be a finite number >= 0, got nan"),
        (dict(min_delta=-0.1), ValueError, r"min_delta must be a finite number >= 0, got -0.1"),
        (dict(patience=2.0), TypeError, r"patience .* must be an int, got 2.0; pass e.g. patience=3"),
        (dict(patience="3"), TypeError, r"patience .* got '3'"),
        (dict(patience=True), TypeError, r"patience .* got True"),
        (dict(patience=0), ValueError, r"patience .* must be >= 1, got 0"),
        (dict(mode="MAX"), ValueError, r"mode must be 'min' or 'max', got 'MAX'"),
        (dict(mode=None), ValueError, r"mode must be 'min' or 'max', got None"),
        (dict(monitor=3), TypeError, r"monitor is the name of a column .* got 3; pass a string"),
    ],
)
def test_early_stopping_rejects_bad_arguments_when_built(kwargs, error, match):
    with pytest.raises(error, match=f"^EarlyStopping: {match}"):
        EarlyStopping(**kwargs)


def nan_at(batch: int):
    """A loss that turns nan at the given training batch of the fit."""
    calls = {"n": 0}

    def loss_func(pred, y):
        loss = F.cross_entropy(pred, y)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == batch + 1:
                return loss * float("nan")
        return loss

    return loss_func


def test_terminate_on_nan_stops_before_the_nan_reaches_the_weights():
    weights = []

    class Keep(Callback):
        def after_step(self):
            weights.append(self.model.weight.detach().clone())

    learn = make_learner(n_train=3, n_valid=1, loss_func=nan_at(4), cbs=[TerminateOnNaN(), Keep()])
    with pytest.warns(UserWarning, match="loss is nan at epoch 1, train batch 1"):
        learn.fit(3)
    assert learn.terminate_on_nan.stopped_at == (1, 1, "train")
    assert len(weights) == 4 and torch.equal(learn.model.weight, weights[-1])
    assert torch.isfinite(learn.model.weight).all()


def test_the_loss_that_stops_the_fit_is_not_recorded():
    # Recorder is a default callback, so it is added before TerminateOnNaN, as in the issue.
    learn = make_learner(n_train=3, n_valid=1, loss_func=nan_at(4), default_cbs=True, cbs=[TerminateOnNaN()])
    learn.progress_bar.enabled = False
    with pytest.warns(UserWarning, match="loss is nan"):
        learn.fit(3)
    losses = learn.recorder.losses
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # batches 0-3; batch 4 (nan) stopped the fit
    assert len(learn.recorder.lrs) == 4  # the hyper-parameters have one row per recorded loss


def test_without_terminate_on_nan_the_weights_are_ruined():
    learn = make_learner(n_train=3, n_valid=1, loss_func=nan_at(4))
    learn.fit(3)
    assert torch.isnan(learn.model.weight).all()


def test_terminate_on_nan_check_every():
    with pytest.raises(ValueError, match="check_every"):
        TerminateOnNaN(check_every=0)
    learn = make_learner(n_train=4, n_valid=None, loss_func=nan_at(1), cbs=[TerminateOnNaN(check_every=2)])
    with pytest.warns(UserWarning, match="epoch 0, train batch 2"):
        learn.fit(2)
