"""ShortEpoch and OverfitBatches: debug runs that cut epochs short or fit the same few batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loopkit import Callback, Learner
from loopkit.callbacks import OverfitBatches, ShortEpoch
from tests.conftest import batches_of, make_data, tiny_model


class Seen(Callback):
    """Record the batches and pct_train of each phase."""

    def __init__(self):
        self.train: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        self.pct: list[float] = []
        self.n_iter: list[int | None] = []

    def before_batch(self):
        (self.train if self.learn.training else self.valid).append(self.learn.xb[0])
        if self.learn.training:
            self.pct.append(self.learn.pct_train)
            self.n_iter.append(self.learn.n_iter)


def learner(n_train=5, n_valid=4, cbs=(), **kwargs):
    x, y = make_data(4 * (n_train + n_valid))
    train = batches_of(x[: 4 * n_train], y[: 4 * n_train], [4] * n_train)
    valid = batches_of(x[4 * n_train :], y[4 * n_train :], [4] * n_valid)
    return Learner(tiny_model(), (train, valid), F.cross_entropy, default_cbs=False, cbs=list(cbs), **kwargs)


@pytest.mark.parametrize("limit, n_train, n_valid", [(2, 2, 2), (10, 5, 4), (0.5, 2, 2), (0.1, 1, 1), (1.0, 5, 4)])
def test_short_epoch_runs_the_first_batches_of_each_phase(limit, n_train, n_valid):
    seen = Seen()
    learn = learner(cbs=[ShortEpoch(limit), seen])
    learn.fit(2)
    assert len(seen.train) == 2 * n_train and len(seen.valid) == 2 * n_valid
    first = [xb for xb, _ in learn.train_dl[:n_train]]
    assert all(torch.equal(a, b) for a, b in zip(seen.train, first * 2))
    # pct_train runs over the short epochs, so schedules reach their end.
    assert seen.pct == pytest.approx([(e + i / n_train) / 2 for e in range(2) for i in range(n_train)])
    assert set(seen.n_iter) == {n_train}


def test_short_epoch_leaves_evaluations_whole():
    seen = Seen()
    learn = learner(cbs=[ShortEpoch(1), seen])
    learn.validate()
    assert len(seen.valid) == 4


@pytest.mark.parametrize(
    "limit, error, match",
    [
        (0, ValueError, "ShortEpoch: limit must be at least 1 batch, got 0"),
        (-3, ValueError, "at least 1 batch"),
        (0.0, ValueError, r"must be in \(0, 1\], got 0.0"),
        (1.5, ValueError, r"must be in \(0, 1\], got 1.5"),
        (True, TypeError, "a number of batches or a fraction"),
        ("2", TypeError, "a number of batches or a fraction"),
    ],
)
def test_short_epoch_refuses_a_limit_that_runs_nothing(limit, error, match):
    with pytest.raises(error, match=match):
        ShortEpoch(limit)


def test_a_fraction_of_a_loader_without_length_is_an_error_before_training(tracer_cls):
    class NoLen:
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return iter(self.batches)

    x, y = make_data(8)
    tracer = tracer_cls()
    learn = Learner(tiny_model(), (NoLen(batches_of(x, y, [4, 4])), None), F.cross_entropy, default_cbs=False,
                    cbs=[ShortEpoch(0.5), tracer])  # fmt: skip
    with pytest.raises(ValueError, match="the train loader has no length"):
        learn.fit(1)
    assert "before_batch" not in tracer.trace
    learn.remove_cbs(learn.short_epoch).add_cbs(ShortEpoch(1))
    learn.fit(1)
    assert tracer.trace.count("before_batch") == 1


def test_overfit_batches_trains_and_validates_on_the_same_batches_and_reports_the_fall(capsys):
    seen = Seen()
    overfit = OverfitBatches(2)
    learn = learner(cbs=[overfit, seen], lr=0.5)
    with pytest.warns(UserWarning, match="in 2 epochs, less than the 50% drop"):
        learn.fit(2)
    first_two = [xb for xb, _ in learn.train_dl[:2]]
    assert all(torch.equal(a, b) for a, b in zip(seen.train, first_two * 2)) and len(seen.train) == 4
    assert all(torch.equal(a, b) for a, b in zip(seen.valid, first_two * 2)) and len(seen.valid) == 4
    # Four samples in four dimensions are separable: a working setup drives their loss down.
    overfit = OverfitBatches(1)
    learn = learner(cbs=[overfit], lr=0.5)
    learn.fit(30)
    assert len(overfit.losses) == 30 and overfit.losses[-1] < 0.5 * overfit.losses[0]
    assert overfit.fell is True
    assert f"from {overfit.losses[0]:.4g} to {overfit.losses[-1]:.4g} in 30 epochs: it falls" in capsys.readouterr().out


def test_overfit_batches_warns_when_the_loss_does_not_fall():
    overfit = OverfitBatches(1)
    learn = learner(cbs=[overfit], lr=0.0)
    with pytest.warns(UserWarning, match="less than the 50% drop asked for. Check the lr"):
        learn.fit(3)
    assert overfit.fell is False and overfit.losses[0] == pytest.approx(overfit.losses[-1])


@pytest.mark.parametrize("n_batches, n_epochs, match", [(6, 3, "yields only 5 batch"), (1, 1, "at least 2 epochs")])
def test_overfit_batches_checks_before_training(tracer_cls, n_batches, n_epochs, match):
    tracer = tracer_cls()
    learn = learner(cbs=[OverfitBatches(n_batches), tracer])
    with pytest.raises(ValueError, match=match):
        learn.fit(n_epochs)
    assert "before_batch" not in tracer.trace
