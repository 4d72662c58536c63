"""AvgStats: phase figures are per-sample means whatever the batching, with one sync per phase."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from loopkit import CancelEpoch, CancelTrain, Learner
from loopkit.callbacks import AvgStats, WeightedSums, batch_size
from tests.conftest import Tracer, accuracy, batches_of, make_data, tiny_model

partitions = st.lists(st.integers(1, 9), min_size=1, max_size=8)


@given(sizes=partitions, fold_every=st.integers(1, 5))
@example(sizes=[7, 1], fold_every=256)
def test_weighted_sums_equal_the_per_sample_mean(sizes, fold_every):
    per_sample = torch.rand(sum(sizes), dtype=torch.float64)
    sums = WeightedSums(1, fold_every=fold_every)
    for chunk in per_sample.split(sizes):
        sums.add((chunk.mean(),), len(chunk))
    count, (mean,) = WeightedSums.means(sums.totals())
    assert count == sum(sizes)
    assert mean == pytest.approx(per_sample.mean().item(), rel=1e-12)


@given(train_sizes=partitions, valid_sizes=partitions)
@example(train_sizes=[8, 1], valid_sizes=[1])
def test_phase_loss_and_metric_are_per_sample_means(train_sizes, valid_sizes):
    x, y = make_data(sum(train_sizes) + sum(valid_sizes), seed=len(train_sizes))
    n_train = sum(train_sizes)
    dls = (batches_of(x[:n_train], y[:n_train], train_sizes), batches_of(x[n_train:], y[n_train:], valid_sizes))
    stats = AvgStats([accuracy], train_metrics=True)
    # lr=0 keeps the model fixed, so the whole-phase per-sample mean is known in closed form.
    learn = Learner(tiny_model(), dls, F.cross_entropy, lr=0.0, default_cbs=False, cbs=[stats])
    learn.fit(1)
    with torch.no_grad():
        for phase, xs, ys in (("train", x[:n_train], y[:n_train]), ("valid", x[n_train:], y[n_train:])):
            pred = learn.model(xs)
            got = getattr(stats, phase)
            assert got.count == len(xs)
            assert got.loss == pytest.approx(F.cross_entropy(pred, ys).item(), rel=1e-5)
            assert got.metrics["accuracy"] == pytest.approx(accuracy(pred, ys).item(), rel=1e-6)


def test_history_rows_and_metrics_on_validation_only_by_default():
    x, y = make_data(20)
    dls = (batches_of(x[:12], y[:12], [5, 7]), batches_of(x[12:], y[12:], [3, 5]))
    learn = Learner(tiny_model(), dls, F.cross_entropy, metrics=[accuracy])
    learn.progress_bar.enabled = False
    learn.fit(2)
    assert [list(row) for row in learn.avg_stats.history] == [["epoch", "train_loss", "valid_loss", "accuracy"]] * 2
    assert learn.avg_stats.train.metrics == {} and set(learn.avg_stats.valid.metrics) == {"accuracy"}
    assert [row["epoch"] for row in learn.avg_stats.history] == [0, 1]
    learn.avg_stats.train_metrics = True
    learn.fit(1)
    assert list(learn.avg_stats.history[0]) == ["epoch", "train_loss", "train_accuracy", "valid_loss", "accuracy"]


def test_without_valid_loader_there_is_no_valid_column():
    x, y = make_data(8)
    learn = Learner(tiny_model(), (batches_of(x, y, [8]), None), F.cross_entropy, default_cbs=False, cbs=[AvgStats()])
    learn.fit(1)
    assert list(learn.avg_stats.history[0]) == ["epoch", "train_loss"]


def test_cancelled_phases_report_what_they_saw_and_nan_for_what_did_not_run():
    x, y = make_data(20)
    dls = (batches_of(x[:12], y[:12], [4, 4, 4]), batches_of(x[12:], y[12:], [8]))
    stats = AvgStats()
    learn = Learner(tiny_model(), dls, F.cross_entropy, lr=0.0, default_cbs=False,
                    cbs=[stats, Tracer("after_batch", at=0, error=CancelEpoch)])  # fmt: skip
    learn.fit(2)
    first, second = stats.history
    assert not math.isnan(first["train_loss"]) and math.isnan(first["valid_loss"])
    assert stats.train.count == 12 and stats.valid.count == 8  # the second epoch ran in full
    with torch.no_grad():
        assert first["train_loss"] == pytest.approx(F.cross_entropy(learn.model(x[:4]), y[:4]).item(), rel=1e-5)
    learn = Learner(tiny_model(), dls, F.cross_entropy, default_cbs=False,
                    cbs=[AvgStats(), Tracer("before_batch", at=1, error=CancelTrain)])  # fmt: skip
    learn.fit(1)
    assert learn.avg_stats.train.count == 4 and learn.avg_stats.valid.count == 8


def test_metric_must_return_a_scalar():
    x, y = make_data(8)

    def per_sample(pred, y):
        return (pred.argmax(1) == y).float()

    learn = Learner(tiny_model(), (batches_of(x, y, [8]), batches_of(x, y, [8])), F.cross_entropy, metrics=[per_sample])
    with pytest.raises(ValueError, match="must return the batch mean as a scalar"):
        learn.fit(1)


def test_metric_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        AvgStats([accuracy, accuracy])


def test_batch_size_of_nested_and_plain_items():
    assert batch_size((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_size([{"a": torch.zeros(3, 1)}]) == 3
    assert batch_size(torch.zeros(())) == 1
    assert batch_size(["a", "b"]) == 2
    with pytest.raises(TypeError, match="batch size"):
        batch_size(object())


def count_syncs(monkeypatch) -> dict[str, int]:
    """Count the Tensor methods that copy to the host (patched for this test only)."""
    counts = {"item": 0, "cpu": 0, "tolist": 0, "numpy": 0, "__float__": 0, "__bool__": 0}
    for name in counts:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("n_batches", [10, 40])
def test_default_callbacks_sync_once_per_phase_not_per_batch(monkeypatch, n_batches):
    x, y = make_data(4 * n_batches)
    batches = batches_of(x, y, [4] * n_batches)
    learn = Learner(tiny_model(), (batches, batches[:n_batches // 2]), F.cross_entropy, metrics=[accuracy])
    learn.progress_bar.enabled = False
    learn.fit(1)  # warm-up outside the count
    counts = count_syncs(monkeypatch)
    learn.fit(3)
    assert sum(counts.values()) <= 2 * 3, counts  # one read per phase, 2 phases, 3 epochs


def test_sync_counter_sees_a_per_batch_item(monkeypatch):
    from loopkit import Callback

    class Chatty(Callback):
        def after_loss(self):
            self.loss.item()

    x, y = make_data(40)
    learn = Learner(tiny_model(), (batches_of(x, y, [4] * 10), None), F.cross_entropy, default_cbs=False, cbs=[Chatty()])
    counts = count_syncs(monkeypatch)
    learn.fit(1)
    assert counts["item"] == 10


def test_state_dict_round_trip_restores_history_and_phase_figures():
    x, y = make_data(20)
    dls = (batches_of(x[:12], y[:12], [5, 7]), batches_of(x[12:], y[12:], [8]))
    learn = Learner(tiny_model(), dls, F.cross_entropy, default_cbs=False, cbs=[AvgStats([accuracy])])
    learn.fit(2)
    state = learn.avg_stats.state_dict()
    fresh = AvgStats([accuracy])
    fresh.load_state_dict(state)
    assert fresh.history == learn.avg_stats.history
    assert (fresh.train, fresh.valid) == (learn.avg_stats.train, learn.avg_stats.valid)
