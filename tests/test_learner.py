"""The Learner: construction errors, callbacks management, state, optimizer, modes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Callback, CancelFit, Learner
from loopkit.callbacks import AvgStats, ProgressBar, Recorder, TrainEval
from tests.conftest import Tracer, batches_of, make_data, make_learner, tiny_model


# -- bad input ---------------------------------------------------------------------------


def test_dls_must_be_a_pair_or_have_train_and_valid():
    x, y = make_data(8)
    for dls in (batches_of(x, y, [4, 4]), batches_of(x, y, [2, 2, 4]), iter(batches_of(x, y, [8]))):
        with pytest.raises(TypeError, match=r"pass \(train_dl, None\)"):
            Learner(tiny_model(), dls, F.cross_entropy)
    with pytest.raises(TypeError, match="train loader is None"):
        Learner(tiny_model(), (None, None), F.cross_entropy)
    with pytest.raises(TypeError, match="valid loader must be an iterable"):
        Learner(tiny_model(), (batches_of(x, y, [8]), 3), F.cross_entropy)


def test_dls_object_with_train_and_valid_is_accepted():
    x, y = make_data(8)

    class DataLoaders:
        train, valid = batches_of(x, y, [4, 4]), None

    learn = Learner(tiny_model(), DataLoaders(), F.cross_entropy, default_cbs=False)
    learn.fit(1)
    assert learn.train_iter == 2


def test_non_scalar_loss_names_the_fix():
    learn = make_learner(loss_func=lambda pred, y: F.cross_entropy(pred, y, reduction="none"))
    with pytest.raises(ValueError, match=r"scalar tensor, got \(4,\); reduce it"):
        learn.fit(1)


def test_batch_that_cannot_be_split_by_n_inp():
    x, _ = make_data(8)
    learn = Learner(tiny_model(), ([x[:4], x[4:]], None), F.cross_entropy, default_cbs=False)
    with pytest.raises(TypeError, match="yield \\(x, y\\) pairs"):
        learn.fit(1)
    learn = make_learner(n_inp=2)
    with pytest.raises(TypeError, match="of 2 items"):
        learn.fit(1)


@pytest.mark.parametrize("n_epochs", [0, -1, 1.5, "2", True])
def test_n_epochs_must_be_a_positive_int(n_epochs):
    with pytest.raises(ValueError, match="n_epochs must be an int >= 1"):
        make_learner().fit(n_epochs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(model=lambda x: x), TypeError, "torch.nn.Module"),
        (dict(loss_func=3), TypeError, "loss_func must be callable"),
        (dict(opt_func="sgd"), TypeError, "opt_func must build an optimizer"),
        (dict(lr=-1.0), ValueError, "lr must be a finite number >= 0"),
            (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0, got inf"),
            (dict(loss_func=nn.CrossEntropyLoss), TypeError, r"pass an instance \(CrossEntropyLoss\(\)\)"),
        (dict(n_inp=0), ValueError, "n_inp"),
        (dict(metrics=["accuracy"]), TypeError, "each metric must be a function"),
    ],
)
def test_constructor_checks_its_arguments(kwargs, error, match):
    x, y = make_data(8)
    args = dict(model=tiny_model(), dls=(batches_of(x, y, [8]), None), loss_func=F.cross_entropy) | kwargs
    with pytest.raises(error, match=match):
        Learner(**args)


# -- callbacks ---------------------------------------------------------------------------


def test_default_callbacks_and_names():
    learn = make_learner(default_cbs=True)
    assert [type(cb) for cb in learn.cbs] == [TrainEval, AvgStats, Recorder, ProgressBar]
    assert isinstance(learn.avg_stats, AvgStats) and isinstance(learn.train_eval, TrainEval)
    assert isinstance(learn.recorder, Recorder) and isinstance(learn.progress_bar, ProgressBar)
    with pytest.raises(AttributeError, match="no attribute or callback named 'recoder'"):
        learn.recoder


def test_bare_learner_has_only_train_eval():
    assert [type(cb) for cb in make_learner(default_cbs=False).cbs] == [TrainEval]


def test_name_strips_callback_suffix_and_can_be_set():
    class GradientClipCallback(Callback):
        pass

    class Other(Callback):
        name = "second_clip"

    learn = make_learner(cbs=[GradientClipCallback(), Other()])
    assert isinstance(learn.gradient_clip, GradientClipCallback)
    assert isinstance(learn.second_clip, Other)


def test_adding_twice_or_a_taken_name_is_an_error():
    cb = Tracer()
    learn = make_learner(cbs=[cb])
    with pytest.raises(ValueError, match="already added"):
        learn.add_cbs(cb)
    with pytest.raises(ValueError, match="named 'tracer' is already added"):
        learn.add_cbs(Tracer())

    class Loss(Callback):
        pass

    with pytest.raises(ValueError, match="taken by a learner attribute"):
        learn.add_cbs(Loss())
    with pytest.raises(TypeError, match="not the class"):
        learn.add_cbs(Tracer)


def test_a_failed_add_leaves_the_learner_unchanged():
    learn = make_learner()
    before = list(learn.cbs)
    with pytest.raises(ValueError):
        learn.add_cbs(Tracer(), Tracer())
    assert learn.cbs == before
    with pytest.raises(AttributeError):
        learn.tracer


def test_typo_in_event_name_is_caught_with_a_suggestion():
    class SampleCounter(Callback):
        def after_bach(self):
            pass

    with pytest.raises(ValueError, match="'after_bach', which is not a loopkit event; did you mean 'after_batch'"):
        make_learner(cbs=[SampleCounter()])


def test_remove_by_instance_and_by_class():
    a, b = Tracer(), ProgressBar()
    learn = make_learner(cbs=[a, b])
    learn.remove_cbs(a)
    assert a.learn is None and a not in learn.cbs
    learn.remove_cbs(ProgressBar)
    assert b not in learn.cbs
    with pytest.raises(ValueError, match="not a callback of this learner"):
        learn.remove_cbs(a)


def test_added_cbs_is_temporary():
    learn = make_learner()
    cb = Tracer()
    with learn.added_cbs(cb):
        assert learn.tracer is cb
        learn.fit(1)
    assert cb not in learn.cbs and cb.trace[-1] == "after_fit"


def test_per_fit_callbacks_are_removed_also_when_the_fit_raises():
    learn = make_learner()
    cb = Tracer("after_loss", error=lambda: RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        learn.fit(1, cbs=[cb])
    assert cb not in learn.cbs and cb.learn is None
    learn.fit(1, cbs=[Tracer()])
    assert not any(isinstance(c, Tracer) for c in learn.cbs)


def test_order_is_a_stable_sort_and_show_loop_prints_it(capsys):
    log = []

    def make(tag, order):
        cls = type(f"Cb{tag}", (Callback,), {"order": order, "before_fit": lambda self: log.append(tag)})
        return cls()

    learn = make_learner(cbs=[make("a", 5), make("b", -5), make("c", 5), make("d", 0)])
    learn.fit(1)
    assert log == ["b", "d", "a", "c"]
    learn.show_loop()
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("before_fit"))
    assert line.split()[1:] == ["TrainEval,", "Cbb,", "Cbd,", "Cba,", "Cbc"]


def test_callback_reads_learner_attributes_and_warns_on_shadowing():
    seen = {}

    class Reader(Callback):
        def after_loss(self):
            seen["loss"] = self.loss
            seen["epoch"] = self.epoch

        def after_fit(self):
            self.epoch = 99  # shadows: a mistake loopkit warns about

    learn = make_learner(cbs=[Reader()])
    with pytest.warns(UserWarning, match="self.learn.epoch"):
        learn.fit(1)
    assert seen["loss"] is learn.loss and learn.epoch == 0
    with pytest.raises(AttributeError, match="not attached to a learner"):
        Reader().model


# -- state, optimizer and modes ----------------------------------------------------------


def test_state_during_the_loop():
    rows = []

    class Spy(Callback):
        def before_batch(self):
            rows.append((self.epoch, self.training, self.iter, self.n_iter, self.train_iter,
                         round(self.pct_train, 6), len(self.xb), len(self.yb)))  # fmt: skip

    make_learner(n_train=2, n_valid=1, cbs=[Spy()]).fit(2)
    assert rows == [
        (0, True, 0, 2, 0, 0.0, 1, 1), (0, True, 1, 2, 1, 0.25, 1, 1), (0, False, 0, 1, 2, 0.25, 1, 1),
        (1, True, 0, 2, 2, 0.5, 1, 1), (1, True, 1, 2, 3, 0.75, 1, 1), (1, False, 0, 1, 4, 0.75, 1, 1),
    ]  # fmt: skip


def test_modes_and_no_grad_in_validation():
    modes = []

    class Spy(Callback):
        def after_pred(self):
            modes.append((self.training, self.model.training, torch.is_grad_enabled(), self.pred.requires_grad))

    make_learner(n_train=1, n_valid=1, cbs=[Spy()]).fit(1)
    assert modes == [(True, True, True, True), (False, False, False, False)]
    assert torch.is_grad_enabled()


def test_grad_mode_is_restored_after_a_cancelled_validation():
    from loopkit import CancelEpoch

    make_learner(n_train=1, n_valid=2, cbs=[Tracer("after_pred", at=1, error=CancelEpoch)]).fit(1)
    assert torch.is_grad_enabled()


def test_optimizer_is_made_once_and_kept_across_fits():
    learn = make_learner(opt_func=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
    learn.fit(1)
    opt, state = learn.opt, {k: v["momentum_buffer"].clone() for k, v in learn.opt.state.items()}
    learn.fit(1)
    assert learn.opt is opt
    assert all(not torch.equal(state[k], v["momentum_buffer"]) for k, v in learn.opt.state.items())


def test_fit_lr_sets_every_param_group():
    model = tiny_model()
    learn = make_learner()
    learn.model = model
    learn.opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 5.0}], lr=1.0)
    seen = []

    class ReadLr(Callback):
        def before_step(self):
            seen.append([g["lr"] for g in self.opt.param_groups])

    learn.fit(1, lr=0.125, cbs=[ReadLr()])
    assert seen and all(lrs == [0.125, 0.125] for lrs in seen)
    assert [g["lr"] for g in learn.opt.param_groups] == [1.0, 5.0]  # hyper-parameters are per fit


def test_same_updates_as_a_raw_pytorch_loop():
    x, y = make_data(24)
    sizes = [5, 7, 1, 11]
    learn = Learner(tiny_model(1), (batches_of(x, y, sizes), None), F.cross_entropy, lr=0.3,
                    opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-2))  # fmt: skip
    learn.fit(2)
    model = tiny_model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        for xb, yb in batches_of(x, y, sizes):
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    for got, want in zip(learn.model.parameters(), model.parameters()):
        assert torch.equal(got, want)


def test_several_inputs_and_targets():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    x, y = make_data(8)
    weights = torch.ones(8)
    seen = []
    batches = [(x[:4], x[4:], y[:4], weights[:4])]

    def loss_func(pred, target, w):
        seen.append(w.shape)
        return (F.cross_entropy(pred, target, reduction="none") * w).mean()

    Learner(TwoIn(), (batches, None), loss_func, n_inp=2, default_cbs=False).fit(1)
    assert seen == [torch.Size([4])]


def test_loader_without_length():
    x, y = make_data(12)

    def gen():
        yield from batches_of(x, y, [4, 4, 4])

    class Loader:
        def __iter__(self):
            return gen()

    n_iters = []
    learn = Learner(tiny_model(), (Loader(), None), F.cross_entropy, default_cbs=False,
                    cbs=[type("Spy", (Callback,), {"before_batch": lambda s: n_iters.append((s.n_iter, s.pct_train))})()])  # fmt: skip
    learn.fit(2)
    assert n_iters == [(None, 0.0)] * 3 + [(None, 0.5)] * 3


def test_assigning_dls_replaces_the_loaders():
    learn = make_learner(n_train=3, n_valid=2)
    x, y = make_data(8)
    with pytest.raises(TypeError, match="dls must be a pair"):
        learn.dls = batches_of(x, y, [4, 4])
    learn.dls = (batches_of(x, y, [8]), None)
    tracer = Tracer()
    learn.fit(1, cbs=[tracer])
    assert tracer.trace.count("before_batch") == 1 and "before_validate" not in tracer.trace


def test_iterable_dataset_loader_has_no_length():
    from torch.utils.data import DataLoader, IterableDataset

    x, y = make_data(12)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    n_iters = []
    spy = type("Spy", (Callback,), {"before_batch": lambda s: n_iters.append(s.n_iter)})()
    Learner(tiny_model(), (DataLoader(Stream(), batch_size=4), None), F.cross_entropy, default_cbs=False, cbs=[spy]).fit(1)
    assert n_iters == [None, None, None]


def test_cbs_may_be_one_callback_or_nested_lists():
    one, two, three = Tracer(), type("Other", (Callback,), {})(), type("Third", (Callback,), {})()
    learn = make_learner(cbs=one)
    assert learn.tracer is one
    learn.fit(1, cbs=[[two], three])
    assert two.learn is None and three.learn is None and one.learn is learn
    learn.fit(1, cbs=two)
    assert two.learn is None


# -- what a new user tripped over (issue 11) ------------------------------------------------------


def test_one_metric_may_be_passed_alone_and_bad_metrics_fail_on_the_first_batch_before_any_step():
    learn = make_learner(default_cbs=True, metrics=accuracy_metric)
    learn.progress_bar.enabled = False
    learn.fit(1)
    assert "accuracy_metric" in learn.avg_stats.history[-1]

    def none_metric(pred, y):
        return None

    def text_metric(pred, y):
        return "0.5"

    def vector_metric(pred, y):
        return (pred.argmax(1) == y).float()

    for metric, error, match in [(none_metric, TypeError, "'none_metric' returned None"),
                                 (text_metric, TypeError, "'text_metric' returned '0.5'"),
                                 (vector_metric, ValueError, r"'vector_metric' has shape \(4,\)")]:  # fmt: skip
        learn = make_learner(default_cbs=True, metrics=[metric])
        learn.progress_bar.enabled = False
        before = [p.detach().clone() for p in learn.model.parameters()]
        with pytest.raises(error, match=match):
            learn.fit(1)
        assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # no step was taken


def accuracy_metric(pred, y):
    return (pred.argmax(1) == y).float().mean()


def test_an_avg_stats_in_cbs_replaces_the_default_one():
    x, y = make_data(16)
    stats = AvgStats([accuracy_metric], train_metrics=True)
    learn = Learner(tiny_model(), (batches_of(x[:8], y[:8], [4, 4]), batches_of(x[8:], y[8:], [8])),
                    F.cross_entropy, cbs=[stats, ProgressBar(enabled=False)])  # fmt: skip
    assert learn.avg_stats is stats and sum(isinstance(cb, AvgStats) for cb in learn.cbs) == 1
    assert sum(isinstance(cb, ProgressBar) for cb in learn.cbs) == 1
    learn.fit(1)
    assert "train_accuracy_metric" in learn.avg_stats.history[-1]
    with pytest.raises(ValueError, match="give the metrics to it"):
        Learner(tiny_model(), learn.dls, F.cross_entropy, metrics=[accuracy_metric], cbs=[AvgStats()])


@pytest.mark.parametrize("bad", [[], "generator", "drop_last", "lazy_empty"])
def test_empty_and_one_shot_loaders_are_refused(bad):
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    class Nothing(IterableDataset):
        def __iter__(self):
            return iter(())

    x, y = make_data(8)
    loaders = {"generator": ((xb, yb) for xb, yb in batches_of(x, y, [4, 4])),
               "drop_last": DataLoader(TensorDataset(x[:3], y[:3]), batch_size=4, drop_last=True),
               "lazy_empty": DataLoader(Nothing(), batch_size=4)}  # fmt: skip
    dl = loaders.get(bad, bad) if isinstance(bad, str) else bad
    tracer = Tracer()
    learn = Learner(tiny_model(), (dl, None), F.cross_entropy, default_cbs=False, cbs=[tracer])
    before = [p.detach().clone() for p in learn.model.parameters()]
    error, match = (TypeError, "one-shot iterator") if bad == "generator" else (ValueError, "train loader yields no batches")
    with pytest.raises(error, match=match):
        learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert tracer.trace in ([], ["before_fit", "before_epoch", "before_train", "after_fit"])  # only a lazy loader gets that far


def test_fit_lr_must_be_finite():
    with pytest.raises(ValueError, match=r"fit\(lr=...\) must be a finite number >= 0, got inf"):
        make_learner().fit(1, lr=float("inf"))


def test_event_method_spelled_without_underscores_is_caught():
    class Squashed(Callback):
        def afterbatch(self):
            pass

    with pytest.raises(ValueError, match="'afterbatch', which is not a loopkit event; did you mean 'after_batch'"):
        make_learner(cbs=[Squashed()])


def test_returning_a_value_from_an_event_warns_once():
    class OldStyle(Callback):
        def after_batch(self):
            return True

    learn = make_learner(cbs=[OldStyle()])
    with pytest.warns(UserWarning, match=r"OldStyle.after_batch returned True, which loopkit ignores.*raise CancelFit") as record:
        learn.fit(2)
    assert len([w for w in record if "returned True" in str(w.message)]) == 1
    assert learn.train_iter == 6  # ignored: the fit ran on


@pytest.mark.parametrize("stop", ["after_backward", "before_step"])
@pytest.mark.parametrize("how", [CancelFit, RuntimeError, KeyboardInterrupt])
def test_no_gradient_outlives_the_fit_that_made_it(stop, how):
    class Stop(Callback):
        pass

    setattr(Stop, stop, lambda self: (_ for _ in ()).throw(how()))
    learn = make_learner()
    if how is CancelFit:
        learn.fit(1, cbs=[Stop()])
    else:
        with pytest.raises(how):
            learn.fit(1, cbs=[Stop()])
    assert all(p.grad is None for p in learn.model.parameters())
    # ...so the next fit's first step is exactly a raw first step
    reference = copy.deepcopy(learn.model)
    x, y = learn.train_dl[0]
    F.cross_entropy(reference(x), y).backward()
    torch.optim.SGD(reference.parameters(), lr=learn.lr).step()
    learn.fit(1, cbs=[StopAfterFirstBatch()])
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), learn.model.parameters()))


class StopAfterFirstBatch(Callback):
    def after_step(self):
        raise CancelFit


def test_ctrl_c_inside_the_step_waits_until_the_step_is_whole():
    import os
    import signal

    class InterruptedSGD(torch.optim.SGD):
        """Send ourselves SIGINT halfway through the parameter updates of the second step."""

        n_steps = 0

        @torch.no_grad()
        def step(self, closure=None):
            InterruptedSGD.n_steps += 1
            params = [p for g in self.param_groups for p in g["params"]]
            for i, p in enumerate(params):
                if InterruptedSGD.n_steps == 2 and i == 1:
                    os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode
                p -= self.param_groups[0]["lr"] * p.grad

    learn = make_learner(4, None, opt_func=InterruptedSGD)
    shadow = copy.deepcopy(learn.model)  # the same steps by hand, all of them whole
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1)
    for x, y in learn.train_dl[:2]:
        shadow.zero_grad()
        F.cross_entropy(shadow(x), y).backward()
        with torch.no_grad():
            for p in shadow.parameters():
                p -= learn.lr * p.grad
    assert all(torch.equal(a, b) for a, b in zip(shadow.parameters(), learn.model.parameters()))
    assert learn.train_iter == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_lr_find_leaves_the_callback_order_as_it_was():
    from loopkit.callbacks import CSVLogger

    class SameOrder(Callback):
        order = 60  # as CSVLogger's

    learn = make_learner(8, None, default_cbs=True, cbs=[CSVLogger("unused.csv"), SameOrder()])
    learn.progress_bar.enabled = False
    before = list(learn.cbs)
    learn.lr_find(num_it=5)
    assert learn.cbs == before


# -- the loop uses what a callback writes (docs/state.md, "Changing state from a callback") --------


def written_value_run(event: str, write) -> tuple[Learner, list]:
    """Fit one epoch with a callback that calls `write(cb)` at `event`; return the learner and a log."""
    log: list = []

    class Writer(Callback):
        order = 5

    setattr(Writer, event, lambda self: write(self, log))
    learn = make_learner(2, 1, cbs=[Writer()])
    learn.fit(1)
    return learn, log


def test_the_model_sees_xb_written_in_before_batch_and_the_loss_yb():
    seen = []

    class Look(Callback):
        order = 10

        def after_pred(self):
            seen.append(self.pred.abs().sum().item())

        def after_loss(self):
            seen.append(self.loss.item())

    class Zeros(Callback):
        def before_batch(self):
            self.learn.xb = (torch.zeros_like(self.xb[0]),)
            self.learn.yb = (torch.zeros_like(self.yb[0]),)

    x, y = make_data(4)
    learn = Learner(nn.Linear(4, 3, bias=False), ([(x, y)], None), F.cross_entropy, default_cbs=False,
                    cbs=[Look(), Zeros()])  # fmt: skip
    learn.fit(1)
    assert seen[0] == 0.0  # zero inputs, no bias: zero outputs
    assert seen[1] == pytest.approx(F.cross_entropy(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)).item())


def test_the_loss_uses_pred_written_in_after_pred():
    learn, _ = written_value_run("after_pred", lambda cb, log: setattr(cb.learn, "pred", cb.pred * 0))
    assert learn.loss.item() == pytest.approx(math.log(3))  # uniform logits over 3 classes


@pytest.mark.parametrize("event", ["after_loss", "before_backward"])
def test_backward_uses_loss_written_in_after_loss_or_before_backward(event):
    grads = []

    class Grads(Callback):
        order = 10

        def after_backward(self):
            grads.append([p.grad.clone() for p in self.model.parameters()])

    learn = make_learner(1, None, cbs=[Grads()])
    learn.fit(1, cbs=[type("Zero", (Callback,), {event: lambda self: setattr(self.learn, "loss", self.loss * 0)})()])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[0])


def test_the_step_uses_hypers_written_in_before_batch():
    def write(cb, log):
        for group in cb.opt.param_groups:
            group["lr"] = 0.0

    learn, _ = written_value_run("before_batch", write)
    before = make_learner(2, 1).model
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), learn.model.parameters()))  # lr 0: no change


def test_the_phase_iterates_dl_written_in_before_train():
    x, y = make_data(6)
    other = batches_of(x, y, [2, 2, 2])
    learn, _ = written_value_run("before_train", lambda cb, log: setattr(cb.learn, "dl", other))
    assert learn.train_iter == 3  # the written loader's 3 batches, not the learner's 2


def test_the_fit_trains_model_and_loaders_written_in_before_fit():
    replacement = tiny_model(seed=7)
    start = [p.detach().clone() for p in replacement.parameters()]
    x, y = make_data(12)

    def write(cb, log):
        cb.learn.model = replacement
        cb.learn.opt = torch.optim.SGD(replacement.parameters(), lr=0.1)
        cb.learn.train_dl = batches_of(x, y, [3, 3, 3, 3])
        cb.learn.valid_dl = None

    learn, _ = written_value_run("before_fit", write)
    assert learn.model is replacement and learn.train_iter == 4 and learn.training  # no validation ran
    assert not all(torch.equal(a, b) for a, b in zip(start, replacement.parameters()))


def test_lr_find_on_an_empty_loader_is_refused_before_any_sweep():
    learn = Learner(tiny_model(), ([], None), F.cross_entropy)
    with pytest.raises(ValueError, match="train loader yields no batches"):
        learn.lr_find()
    assert learn.opt is None
