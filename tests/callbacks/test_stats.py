"""AvgStats: phase figures are per-sample means whatever the batching, with one sync per phase."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from loopkit import Callback, CancelEpoch, CancelTrain, Learner
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
    """Count the Tensor methods that copy to the host (patched for this test only).

    The callbacks keep CPU values as numbers read at once (`stats.kept`: on the CPU a
    read waits for nothing); here they keep every value as a tensor, as they do on a
    GPU, so that a read the callbacks would make there shows in the counts.
    """
    from loopkit.callbacks import recorder, stats

    for module in (stats, recorder):
        monkeypatch.setattr(module, "kept", torch.Tensor.detach)
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


def test_on_the_cpu_losses_are_kept_as_numbers_with_the_same_figures(monkeypatch):
    from loopkit.callbacks import recorder, stats

    x, y = make_data(60)
    batches = batches_of(x, y, [7, 13, 4, 16, 9, 11])

    def fit() -> Learner:
        torch.manual_seed(0)
        learn = Learner(tiny_model(), (batches, batches[:2]), F.cross_entropy, metrics=[accuracy])
        learn.progress_bar.enabled = False
        learn.fit(2)
        return learn

    as_numbers = fit()
    assert all(isinstance(v, float) for v in as_numbers.recorder._chunks[0].tolist())
    for module in (stats, recorder):  # keep tensors, as on a GPU
        monkeypatch.setattr(module, "kept", torch.Tensor.detach)
    as_tensors = fit()
    assert as_numbers.avg_stats.history == as_tensors.avg_stats.history
    assert as_numbers.recorder.losses == as_tensors.recorder.losses
    assert as_numbers.recorder._loss_tensor().dtype == as_tensors.recorder._loss_tensor().dtype == torch.float32
    assert stats.kept is torch.Tensor.detach and isinstance(recorder.kept(torch.tensor(2.0, device="meta")), torch.Tensor)


def test_kept_reads_cpu_values_and_detaches_others():
    from loopkit.callbacks.stats import kept

    loss = torch.tensor(1.5, requires_grad=True) * 2
    assert kept(loss) == 3.0 and isinstance(kept(loss), float)
    on_meta = kept(torch.ones((), device="meta", requires_grad=True) * 2)
    assert isinstance(on_meta, torch.Tensor) and on_meta.device.type == "meta" and not on_meta.requires_grad


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


# -- stateful metrics (update/compute/reset, e.g. torchmetrics) --------------------------------


def binary_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `n` samples of a noisy binary problem that a linear model gets partly right."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = (x[:, 0] + 0.8 * torch.randn(n, generator=gen) > 0).long()
    return x, y


def logit_model() -> torch.nn.Module:
    """Return a seeded model with one logit per sample, as the binary metrics expect."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0))


def bce(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the binary cross-entropy of logits against integer targets."""
    return F.binary_cross_entropy_with_logits(pred, y.float())


def probabilities(metric):
    """Wrap a binary torchmetrics metric to take logits: it guesses per batch otherwise."""
    from torchmetrics.wrappers import LambdaInputTransformer

    return LambdaInputTransformer(metric, transform_pred=torch.sigmoid)


class KeepPreds:
    """A stateful metric by hand: accuracy of logits over the phase, from the kept predictions."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.preds, self.targets = [], []

    def update(self, pred, y):
        self.preds.append(pred)
        self.targets.append(y)

    def compute(self):
        return ((torch.cat(self.preds) > 0) == torch.cat(self.targets)).float().mean()


def binary_metrics() -> list:
    tm = pytest.importorskip("torchmetrics.classification")
    return [probabilities(tm.BinaryF1Score()), probabilities(tm.BinaryAUROC()),
            ("precision", probabilities(tm.BinaryPrecision()))]  # fmt: skip


def sklearn_figures(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    skm = pytest.importorskip("sklearn.metrics")
    return {"binary_f1_score": skm.f1_score(y, pred > 0), "binary_auroc": skm.roc_auc_score(y, pred),
            "precision": skm.precision_score(y, pred > 0)}  # fmt: skip


N_VALID = 45


@given(cuts=st.lists(st.integers(1, N_VALID - 1), unique=True, max_size=8).map(sorted))
@example(cuts=list(range(7, N_VALID, 7)))  # the report: batches of 7, where batch means were off
def test_stateful_metrics_equal_sklearn_on_the_whole_phase(cuts):
    valid_sizes = [b - a for a, b in zip([0, *cuts], [*cuts, N_VALID])]
    x, y = binary_data(16 + N_VALID)
    dls = (batches_of(x[:16], y[:16], [8, 8]), batches_of(x[16:], y[16:], valid_sizes))
    learn = Learner(logit_model(), dls, bce, lr=0.1, metrics=binary_metrics())
    learn.progress_bar.enabled = False
    learn.fit(1)
    with torch.no_grad():
        want = sklearn_figures(learn.model(x[16:]), y[16:])
    got = learn.avg_stats.valid.metrics
    assert got == pytest.approx(want, rel=1e-5)
    assert {k: learn.avg_stats.history[-1][k] for k in want} == pytest.approx(want, rel=1e-5)
    # an evaluation computes them over its loader the same way, whatever its batches
    every = batches_of(x, y, [9] * (len(x) // 9) + [len(x) % 9])
    with torch.no_grad():
        want_all = sklearn_figures(learn.model(x), y)
    assert learn.validate(every).metrics == pytest.approx(want_all, rel=1e-5)
    assert learn.avg_stats.valid.metrics == got  # the fit's figures are left alone


def test_batch_means_of_f1_are_not_the_phase_f1_which_is_why_metrics_keep_state():
    skm = pytest.importorskip("sklearn.metrics")
    x, y = binary_data(63, seed=3)
    pred = x[:, 0] + 0.3
    per_batch = [skm.f1_score(yb, pb > 0) for pb, yb in zip(pred.split(7), y.split(7))]
    assert abs(sum(per_batch) / len(per_batch) - skm.f1_score(y, pred > 0)) > 1e-3


def test_stateful_metrics_are_named_after_their_class_or_by_a_pair_and_train_with_train_metrics():
    tm = pytest.importorskip("torchmetrics.classification")
    x, y = binary_data(30)
    dls = (batches_of(x[:20], y[:20], [6, 6, 8]), batches_of(x[20:], y[20:], [3, 7]))
    stats = AvgStats([probabilities(tm.BinaryF1Score()), ("auc", tm.BinaryAUROC()),
                      ("acc", lambda p, y: ((p > 0) == y).float().mean())], train_metrics=True)  # fmt: skip
    learn = Learner(logit_model(), dls, bce, lr=0.0, default_cbs=False, cbs=[stats])
    learn.fit(1)
    assert stats.metric_names == ["binary_f1_score", "auc", "acc"]
    assert list(stats.history[0]) == ["epoch", "train_loss", "train_binary_f1_score", "train_auc", "train_acc",
                                      "valid_loss", "binary_f1_score", "auc", "acc"]  # fmt: skip
    with torch.no_grad():  # lr=0: the training phase's figures are over its 20 samples with fixed weights
        want = sklearn_figures(learn.model(x[:20]), y[:20])
    assert stats.train.metrics["binary_f1_score"] == pytest.approx(want["binary_f1_score"], rel=1e-6)
    assert stats.train.metrics["auc"] == pytest.approx(want["binary_auroc"], rel=1e-6)
    # any object with the protocol works; it is updated under no_grad, so what it keeps of the
    # training batches holds no graph (torchmetrics turns grad off itself, a plain object may not)
    kept = KeepPreds()
    learn = Learner(logit_model(), (dls[0], None), bce, default_cbs=False, cbs=[AvgStats([kept], train_metrics=True)])
    learn.fit(1)
    assert len(kept.preds) == 3 and not any(t.requires_grad for t in kept.preds)
    assert 0 < learn.avg_stats.train.metrics["keep_preds"] < 1
    with pytest.raises(ValueError, match="unique"):
        AvgStats([tm.BinaryF1Score(), tm.BinaryF1Score()])


def test_a_metric_object_without_compute_or_a_non_scalar_compute_fails_before_training():
    tm = pytest.importorskip("torchmetrics.classification")

    class NoCompute:
        def update(self, pred, y): ...
        def reset(self): ...

    with pytest.raises(TypeError, match="'no_compute' .*has update but no compute"):
        AvgStats([NoCompute()])
    with pytest.raises(TypeError, match=r"metrics=\[\('f1', metric\)\]"):
        AvgStats(("f1", tm.BinaryF1Score()))
    x, y = make_data(24)
    dls = (batches_of(x[:16], y[:16], [8, 8]), batches_of(x[16:], y[16:], [8]))
    per_class = tm.MulticlassF1Score(num_classes=3, average=None)
    learn = Learner(tiny_model(), dls, F.cross_entropy, lr=1.0, metrics=[per_class])
    learn.progress_bar.enabled = False
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"'multiclass_f1_score' .*shape \(3,\).*average='macro'") as info:
        learn.fit(1)
    assert any("first batch" in note for note in info.value.__notes__)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # no step was taken
    assert per_class.update_count == 0  # the check used a copy


def test_stateful_metrics_add_no_per_batch_sync(monkeypatch):
    tm = pytest.importorskip("torchmetrics.classification")
    # validate_args=False: torchmetrics' input checks read values on the host every batch.
    metrics = [accuracy, tm.MulticlassF1Score(num_classes=3, validate_args=False),
               tm.MulticlassPrecision(num_classes=3, validate_args=False)]  # fmt: skip
    counts = {}
    for n_batches in (10, 40):
        x, y = make_data(4 * n_batches)
        batches = batches_of(x, y, [4] * n_batches)
        learn = Learner(tiny_model(), (batches, batches), F.cross_entropy, metrics=metrics)
        learn.progress_bar.enabled = False
        learn.avg_stats.train_metrics = True
        learn.fit(1)  # warm-up outside the count
        with monkeypatch.context() as patch:
            counted = count_syncs(patch)
            learn.fit(2)
        counts[n_batches] = dict(counted)
    assert counts[10] == counts[40], counts  # what is read per phase does not grow with its batches
    assert counts[10]["tolist"] == 2 * 2  # the sums and the computed values in one read per phase


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stateful_metrics_move_to_the_models_device_and_give_the_cpu_figures():
    x, y = binary_data(50)
    dls = (batches_of(x[:20], y[:20], [7, 13]), batches_of(x[20:], y[20:], [7, 7, 7, 9]))
    figures = []
    for device in ("cpu", "cuda"):
        metrics = binary_metrics()
        learn = Learner(logit_model(), dls, bce, lr=0.1, metrics=metrics, device=device)
        learn.progress_bar.enabled = False
        learn.fit(1)
        assert all(m[1].device.type == device if isinstance(m, tuple) else m.device.type == device for m in metrics)
        figures.append(learn.avg_stats.valid.metrics)
    assert figures[1] == pytest.approx(figures[0], rel=1e-5)
