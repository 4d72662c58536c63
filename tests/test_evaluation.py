"""Evaluations: validate, get_preds and predict against a hand-written no_grad loop, and what they leave alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from loopkit import Callback, DataLoaders, Learner
from loopkit.callbacks import (
    CSVLogger,
    Device,
    EarlyStopping,
    GradientAccumulation,
    GradientClip,
    MixedPrecision,
    ParamScheduler,
    SaveModel,
    TerminateOnNaN,
    TorchScheduler,
    sched_lin,
)
from tests.callbacks.test_stats import count_syncs
from tests.conftest import accuracy, batches_of, make_data, make_learner, tiny_model


def hand_loop(model: nn.Module, batches: list) -> tuple[float, float, torch.Tensor]:
    """The reference: weighted loss and accuracy, and the concatenated outputs, under no_grad."""
    model.eval()
    with torch.no_grad():
        preds = [model(x) for x, _ in batches]
    pred, y = torch.cat(preds), torch.cat([y for _, y in batches])
    return F.cross_entropy(pred, y).item(), accuracy(pred, y).item(), pred


def learner(valid_sizes=(4, 4), **kwargs) -> Learner:
    x, y = make_data(12 + sum(valid_sizes))
    dls = (batches_of(x[:12], y[:12], [4, 4, 4]), batches_of(x[12:], y[12:], list(valid_sizes)))
    kwargs.setdefault("metrics", [accuracy])
    kwargs.setdefault("loss_func", F.cross_entropy)
    learn = Learner(tiny_model(), dls, lr=0.1, **kwargs)
    learn.progress_bar.enabled = False
    return learn


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_validate_equals_a_hand_written_loop_whatever_the_batch_sizes(sizes):
    learn = learner(sizes)
    learn.fit(1)
    loss, acc, _ = hand_loop(copy.deepcopy(learn.model), learn.valid_dl)
    stats = learn.validate()
    assert stats.loss == pytest.approx(loss, rel=1e-6) and stats.metrics["accuracy"] == pytest.approx(acc)
    assert stats.count == sum(sizes) and learn.avg_stats.evaluation == stats


def test_get_preds_returns_outputs_targets_inputs_and_per_sample_losses_in_order():
    learn = learner((5, 3, 7))
    learn.fit(1)
    _, _, want = hand_loop(copy.deepcopy(learn.model), learn.valid_dl)
    x = torch.cat([b[0] for b in learn.valid_dl])
    y = torch.cat([b[1] for b in learn.valid_dl])
    pred, targ = learn.get_preds()
    torch.testing.assert_close(pred, want)
    assert torch.equal(targ, y)
    inp, pred, targ, losses = learn.get_preds(with_input=True, with_loss=True, act=lambda p: p.softmax(1))
    assert torch.equal(inp, x) and torch.equal(targ, y)
    torch.testing.assert_close(pred, want.softmax(1))
    torch.testing.assert_close(losses, F.cross_entropy(want, y, reduction="none"))
    assert losses.mean().item() == pytest.approx(learn.validate().loss, rel=1e-6)


def test_with_loss_works_with_a_loss_module_and_refuses_one_without_reduction():
    learn = learner(loss_func=nn.CrossEntropyLoss(), metrics=None)
    _, targ, losses = learn.get_preds(with_loss=True)
    assert losses.shape == targ.shape
    assert learn.loss_func.reduction == "mean"  # the learner's own module is untouched

    def no_reduction(pred, y):
        return F.cross_entropy(pred, y)

    learn = learner(loss_func=no_reduction, metrics=None)
    events = []

    class Spy(Callback):
        def before_fit(self):
            events.append("before_fit")

    with pytest.raises(ValueError, match="no_reduction takes no `reduction` argument"):
        learn.get_preds(with_loss=True, cbs=[Spy()])


def test_nested_outputs_keep_their_structure():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_model()

        def forward(self, x):
            out = self.body(x)
            return {"logits": out, "pair": (out * 2, out.sum(1))}

    learn = learner(metrics=None, loss_func=lambda pred, y: F.cross_entropy(pred["logits"], y))
    learn.model = TwoHeads()
    pred, _ = learn.get_preds()
    assert set(pred) == {"logits", "pair"} and pred["logits"].shape == (8, 3)
    torch.testing.assert_close(pred["pair"][0], 2 * pred["logits"])
    assert pred["pair"][1].shape == (8,)


def test_unlabelled_loaders_work_with_get_preds_and_are_refused_by_validate():
    learn = learner(metrics=None)
    x = torch.randn(10, 4)
    with_tuples = [(xb,) for xb in x.split(3)]
    bare = list(x.split(3))
    for dl in (with_tuples, bare):
        pred, targ = learn.get_preds(dl)
        assert targ is None
        torch.testing.assert_close(pred, learn.model.eval()(x).detach())
    learn.model.train()
    with pytest.raises(TypeError, match="a batch must be a tuple or list of the 1 input"):
        learn.validate(with_tuples)


def test_predict_moves_inputs_to_the_model_and_back_and_applies_act():
    learn = learner(metrics=None)
    x = torch.randn(5, 4)
    out = learn.predict(x, act=torch.sigmoid)
    torch.testing.assert_close(out, torch.sigmoid(learn.model.eval()(x)).detach())
    assert out.device == x.device and not out.requires_grad
    learn.model.train()

    class Pair(nn.Module):
        def forward(self, a, b):
            return a + b

    learn2 = Learner(Pair(), (learn.train_dl, None), lambda p, y: p.sum(), n_inp=2, default_cbs=False)
    assert torch.equal(learn2.predict((x, x)), 2 * x)
    with pytest.raises(ValueError, match="predict takes one batch of the model's 2 input"):
        learn2.predict(x)


def test_an_evaluation_leaves_the_model_modes_grad_mode_and_learner_state_as_they_were(tmp_path):
    learn = learner(cbs=[CSVLogger(tmp_path / "h.csv"), SaveModel(path=tmp_path / "best.pt"), EarlyStopping(patience=5),
                         ParamScheduler({"lr": sched_lin(0.1, 0.01)})])  # fmt: skip
    learn.model = nn.Sequential(tiny_model(), nn.Dropout(0.5))
    learn.fit(2)
    learn.model.train()
    learn.model[1].eval()  # a mix of modes: each module's own comes back
    csv, files = (tmp_path / "h.csv").read_text(), sorted(p.name for p in tmp_path.iterdir())
    state = {k: copy.copy(v) if isinstance(v, list) else v for k, v in vars(learn).items() if not k.startswith("_")}
    hypers = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups])
    watched = (learn.recorder.losses[:], learn.recorder.hps, copy.deepcopy(learn.avg_stats.history),
               learn.avg_stats.train, learn.avg_stats.valid, learn.save_model.best, learn.early_stopping.wait)
    weights = copy.deepcopy(learn.model.state_dict())
    with torch.enable_grad():
        learn.validate()
        learn.get_preds(with_loss=True)
        learn.predict(torch.randn(2, 4))
        assert torch.is_grad_enabled()
    assert [m.training for m in learn.model.modules()] == [True, True, False]
    assert {k: v for k, v in vars(learn).items() if not k.startswith("_")} == state
    assert [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups] == hypers
    assert (learn.recorder.losses, learn.recorder.hps, learn.avg_stats.history, learn.avg_stats.train,
            learn.avg_stats.valid, learn.save_model.best, learn.early_stopping.wait) == watched  # fmt: skip
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in weights.items())
    assert (tmp_path / "h.csv").read_text() == csv and sorted(p.name for p in tmp_path.iterdir()) == files


def test_evaluations_work_before_the_first_fit_and_make_no_optimizer():
    scheduler = TorchScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    learn = learner(cbs=[ParamScheduler({"lr": sched_lin(0.1, 0.01)}), scheduler])
    assert math.isfinite(learn.validate().loss)
    assert learn.get_preds()[0].shape == (8, 3) and learn.predict(torch.randn(1, 4)).shape == (1, 3)
    assert learn.opt is None
    bare = make_learner()  # default_cbs=False: validate brings its own AvgStats for the evaluation
    assert bare.validate().count == 8 and not hasattr(bare, "evaluation_stats")


def test_mixed_precision_and_user_callbacks_apply_to_evaluations():
    seen = []

    class Spy(Callback):
        def after_pred(self):
            seen.append((self.evaluating, self.training, torch.is_grad_enabled(), self.pred.dtype))

    learn = learner(cbs=[MixedPrecision(torch.bfloat16), Spy()])
    pred, _ = learn.get_preds()
    assert pred.dtype == torch.bfloat16
    assert seen == [(True, False, False, torch.bfloat16)] * 2
    assert learn.evaluating is False


def test_get_preds_does_not_sync_per_batch(monkeypatch):
    x, y = make_data(400)
    learn = learner(metrics=None)
    dl = batches_of(x, y, [4] * 100)
    counts = count_syncs(monkeypatch)
    learn.get_preds(dl)
    assert sum(counts.values()) <= 2, counts  # the phase's one read of AvgStats' sums, not one per batch


def test_bad_input_is_refused_before_anything_runs():
    learn = learner()
    events = []

    class Spy(Callback):
        def before_fit(self):
            events.append(1)

    for dl, error, match in [
        ([], ValueError, "evaluated loader yields no batches"),
        (3, TypeError, r"takes a loader .* got int"),
        (torch.randn(3, 4), TypeError, "for one batch of inputs use learn.predict"),
        (DataLoaders(learn.train_dl, learn.valid_dl), TypeError, "evaluates one loader, got a pair"),
        (iter(learn.valid_dl), TypeError, "one-shot iterator"),
    ]:
        with pytest.raises(error, match=match):
            learn.get_preds(dl, cbs=[Spy()])
    assert events == [] and learn.cbs == learner().cbs.__class__(learn.cbs)
    learn_no_valid = Learner(tiny_model(), (learn.train_dl, None), F.cross_entropy)
    with pytest.raises(ValueError, match="has no valid loader; pass the loader to evaluate as dl="):
        learn_no_valid.validate()


def test_a_model_error_gains_a_note_naming_the_evaluation_and_batch():
    learn = learner()
    with pytest.raises(RuntimeError) as info:
        learn.predict(torch.randn(2, 7))
    assert any("in an evaluation (learn.predict), batch 0" in note for note in info.value.__notes__)
    with pytest.raises(RuntimeError) as info:
        learn.fit(1, cbs=[BreakAt(1)])
    assert any("in epoch 0, training batch 1" in note for note in info.value.__notes__)


class BreakAt(Callback):
    """Feed the model a batch of the wrong width at the `at`-th training batch."""

    def __init__(self, at: int):
        self.at = at

    def before_batch(self):
        if self.training and self.iter == self.at:
            self.learn.xb = (torch.randn(4, 7),)


def same(a, b) -> bool:
    """Equal values, tensors compared exactly, through nested containers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if callable(getattr(a, "state_dict", None)):  # a torch scheduler or scaler: compare its state
        return type(a) is type(b) and same(a.state_dict(), b.state_dict())
    if hasattr(a, "__dict__") and not isinstance(a, type) and not callable(a):
        return type(a) is type(b) and same(vars(a), vars(b))
    return a == b


def test_no_shipped_callback_changes_what_it_publishes_during_an_evaluation(tmp_path):
    cbs = [Device("cpu"), GradientAccumulation(8), MixedPrecision(torch.bfloat16), GradientClip(1.0),
           TerminateOnNaN(), CSVLogger(tmp_path / "h.csv"), SaveModel(path=tmp_path / "best.pt"),
           EarlyStopping(patience=3), TorchScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))]  # fmt: skip
    learn = learner(cbs=cbs)
    learn.fit_one_cycle(2, 0.1)
    learn.fit(1, cbs=[ParamScheduler({"lr": sched_lin(0.1, 0.01)})])

    def published():
        return {cb.cb_name: copy.deepcopy({k: v for k, v in vars(cb).items() if not k.startswith("_") and k != "learn"})
                for cb in learn.cbs}  # fmt: skip

    # As a fit that skipped fp16 steps and met a nan would have left them:
    learn.mixed_precision.n_skipped, learn.terminate_on_nan.stopped_at = 3, (1, 2, "train")
    before = published()
    assert before["gradient_accumulation"]["n_steps"] > 0
    learn.validate()
    learn.get_preds(with_input=True, with_loss=True)
    learn.predict(torch.randn(3, 4))
    after = published()
    after["avg_stats"].pop("evaluation")
    before["avg_stats"].pop("evaluation")
    for name in before:
        assert same(before[name], after[name]), name
