"""Hook, Hooks, select_modules and HooksCallback: hooks on the right modules, and none left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Callback, CancelFit, Learner
from loopkit.callbacks import Hook, Hooks, HooksCallback, select_modules
from tests.conftest import batches_of, make_data


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))


def n_hooks(model: nn.Module) -> int:
    # Reads torch's private hook dicts on purpose: they are the only record of what is registered.
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def learner(model: nn.Module, cbs=(), n_train: int = 3, n_valid: int = 2) -> Learner:
    x, y = make_data(4 * (n_train + n_valid))
    train, valid = batches_of(x[: 4 * n_train], y[: 4 * n_train], [4] * n_train), batches_of(x[4 * n_train :], y[4 * n_train :], [4] * n_valid)
    return Learner(model, (train, valid), F.cross_entropy, default_cbs=False, cbs=list(cbs))


def names(model, modules=None):
    return [name for name, _ in select_modules(model, modules)]


def test_select_modules_default_type_name_instance_and_list():
    model = mlp()
    assert names(model) == ["0", "2.0", "3"]  # leaf modules with parameters
    assert names(model, nn.ReLU) == ["1", "2.1"]
    assert names(model, "2") == ["2"]
    assert names(model, model[3]) == ["3"]
    assert names(model, ["3", nn.ReLU, model[0]]) == ["0", "1", "2.1", "3"]  # model order, each once


@pytest.mark.parametrize(
    "modules, error, match",
    [
        ("2.00", ValueError, r"'2.00' is not the name of a module of Sequential; did you mean '2.0'\?"),
        (nn.Linear(4, 8), ValueError, "is not a module of this model"),
        (nn.Conv2d, ValueError, "has no module of class Conv2d"),
        (3, TypeError, "modules must be None, a module name"),
    ],
)
def test_select_modules_refuses_what_is_not_in_the_model(modules, error, match):
    with pytest.raises(error, match=match):
        select_modules(mlp(), modules)


def test_hook_calls_func_after_forward_and_context_manager_removes_it():
    model = mlp()
    seen = []
    with Hook(model[0], lambda hook, module, inp, out: seen.append((module, out.shape))) as hook:
        assert n_hooks(model) == 1
        model(torch.randn(5, 4))
    assert seen == [(model[0], torch.Size([5, 8]))] and hook.stored is None
    assert n_hooks(model) == 0
    model(torch.randn(5, 4))
    assert len(seen) == 1


def test_backward_hook_sees_the_output_gradient():
    model = mlp()
    x = torch.randn(5, 4)

    def keep(hook, module, grad_in, grad_out):
        hook.stored = grad_out[0].clone()

    with Hooks(model, keep, "3", backward=True) as hooks:
        out = model(x)
        out.sum().backward()
    assert torch.equal(hooks[0].stored, torch.ones(5, 3))  # d(sum)/d(out)
    assert n_hooks(model) == 0


def test_hooks_context_manager_removes_on_error():
    model = mlp()
    with pytest.raises(RuntimeError), Hooks(model, lambda *a: None) as hooks:
        assert len(hooks) == 3 and hooks.names == ["0", "2.0", "3"] and n_hooks(model) == 3
        raise RuntimeError
    assert n_hooks(model) == 0


class Outputs(HooksCallback):
    """Count hooked calls, and the hooks on the model at each batch."""

    def __init__(self, modules=None, evaluations=False):
        super().__init__(modules)
        self.during_evaluations = evaluations
        self.calls: list[str] = []
        self.registered: list[int] = []

    def hook(self, hook, module, inp, out):
        self.calls.append(type(module).__name__)

    def after_batch(self):
        self.registered.append(n_hooks(self.learn.model))


class Fail(Callback):
    def __init__(self, error):
        self.error = error

    def after_loss(self):
        if self.learn.training and self.learn.train_iter == 1:
            raise self.error


@pytest.mark.parametrize("ending", ["normal", "error", "cancel", "interrupt"])
def test_hooks_are_registered_for_the_fit_and_gone_however_it_ends(ending):
    model = mlp()
    cb = Outputs(nn.ReLU)
    errors = {"error": RuntimeError("boom"), "cancel": CancelFit(), "interrupt": KeyboardInterrupt()}
    learn = learner(model, [cb] + ([Fail(errors[ending])] if ending in errors else []))
    if ending in ("error", "interrupt"):
        with pytest.raises(type(errors[ending])):
            learn.fit(2)
    else:
        learn.fit(2)
    assert cb.registered and set(cb.registered) == {2}  # two ReLUs hooked at every batch
    assert cb.calls[:2] == ["ReLU", "ReLU"]
    assert n_hooks(model) == 0 and cb.hooks is None


def test_evaluations_are_not_hooked_by_default_and_unhooked_when_they_are():
    model = mlp()
    plain, during = Outputs(), Outputs(nn.ReLU, evaluations=True)
    plain.name = "plain"
    learn = learner(model, [plain, during])
    learn.validate()
    assert plain.calls == [] and plain.registered == [2, 2]  # only `during`'s two hooks
    assert during.calls == ["ReLU"] * 4  # 2 batches, 2 ReLUs
    assert n_hooks(model) == 0
    learn.get_preds()
    learn.predict(torch.randn(3, 4))
    assert n_hooks(model) == 0


def test_a_module_not_in_the_model_is_an_error_before_any_training(tracer_cls):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tracer = tracer_cls()
    learn = learner(model, [Outputs(nn.Linear(4, 8)), tracer])
    with pytest.raises(ValueError, match="is not a module of this model"):
        learn.fit(1)
    assert "before_batch" not in tracer.trace
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert n_hooks(model) == 0
