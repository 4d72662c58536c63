"""Compile: the same losses and gradients as the uncompiled model, no recompiles, the original keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Callback, Learner, TensorLoader
from loopkit.callbacks import Compile


def make_learner(cbs: list[Callback], n: int = 37, bs: int = 8) -> Learner:
    """Return a quiet learner: a small MLP with dropout, 37 samples (a short last batch), a valid split."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n + 13, 6, generator=gen)
    y = (x[:, :3].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    dls = (TensorLoader((x[:n], y[:n]), bs=bs, shuffle=True), TensorLoader((x[n:], y[n:]), bs=bs))
    learn = Learner(model, dls, F.cross_entropy, opt_func=torch.optim.SGD, lr=0.1, cbs=cbs)
    learn.progress_bar.enabled = False
    return learn


class KeepGrads(Callback):
    """Keep a copy of every parameter's gradient after each training backward."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def after_backward(self) -> None:
        if self.training:
            self.grads.append([p.grad.detach().clone() for p in self.model.parameters()])


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as they are."""

    def __init__(self) -> None:
        self.n_graphs = 0
        self.__name__ = "counting"

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.n_graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # compiled code is cached per code object across tests; start each test clean
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_fit_gives_the_uncompiled_losses_and_gradients_and_keeps_the_keys(tmp_path):
    runs = []
    for cbs in ([], [Compile(backend="aot_eager")]):
        grads = KeepGrads()
        learn = make_learner([*cbs, grads])
        keys = list(learn.model.state_dict())
        learn.fit_one_cycle(2, 0.3)
        inp, pred, _ = learn.get_preds(with_input=True)
        runs.append((learn, grads.grads, pred))
    (plain, plain_grads, plain_pred), (compiled, compiled_grads, compiled_pred) = runs
    assert "forward" not in compiled.model.__dict__  # the class's forward is back after the fit
    torch.testing.assert_close(torch.tensor(compiled.recorder.losses), torch.tensor(plain.recorder.losses))
    assert len(compiled_grads) == len(plain_grads) == 10
    for got, want in zip(compiled_grads, plain_grads):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    torch.testing.assert_close(compiled_pred, plain_pred)
    for got, want in zip(compiled.avg_stats.history, plain.avg_stats.history):
        assert got == pytest.approx(want)
    assert list(compiled.model.state_dict()) == keys  # no _orig_mod. prefix
    compiled.save(tmp_path / "ckpt.pt")
    assert list(torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]) == keys


@pytest.mark.slow
def test_scheduled_hypers_and_a_short_last_batch_never_recompile():
    backend = CountingBackend()
    learn = make_learner([Compile(backend=backend, dynamic=True)])
    learn.fit_one_cycle(3, 0.3)  # lr and momentum change every batch; batches of 8, 8, 8, 8, 5
    assert backend.n_graphs == 2  # one training graph, one validation graph (eval mode, no_grad)
    learn.fit(1, lr=0.01)
    learn.validate()
    assert backend.n_graphs == 2


def test_unknown_backend_or_mode_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"unknown backend 'indcutor'; torch.compile knows \[.*'inductor'"):
        Compile(backend="indcutor")
    with pytest.raises(ValueError, match=r"unknown mode 'fast'; inductor's modes are \[.*'max-autotune'"):
        Compile(mode="fast")
    with pytest.raises(ValueError, match="mode='max-autotune' is an inductor setting, and the backend is 'aot_eager'"):
        Compile(mode="max-autotune", backend="aot_eager")
    with pytest.raises(TypeError, match="dynamic is True, False or None"):
        Compile(dynamic="yes")
    assert repr(Compile(mode="default")) == "Compile(mode='default', backend='inductor', fullgraph=False, dynamic=None)"
