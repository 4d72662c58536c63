"""Param groups: weight decay on weights only, and freezing parts of the model."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Learner
from loopkit.callbacks import ParamScheduler, decay_groups, freeze, no_decay_params, sched_no, unfreeze, wd_per_group
from tests.conftest import batches_of, make_data


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, bias=False))


def learner(model: nn.Module, loss_func=F.cross_entropy, **kwargs) -> Learner:
    x, y = make_data(16)
    return Learner(model, (batches_of(x, y, [8, 8]), None), loss_func, lr=0.1, default_cbs=False, **kwargs)


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_no_decay_params_are_biases_and_norm_parameters():
    model = net()
    assert ids(no_decay_params(model)) == ids([model[0].bias, model[1].weight, model[1].bias])


def test_decay_groups_split_weights_from_biases_and_norm_parameters():
    model = net()
    groups = decay_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert ids(groups[0]["params"]) == ids([model[0].weight, model[3].weight])
    assert sorted(ids(groups[0]["params"] + groups[1]["params"])) == sorted(ids(model.parameters()))
    whole = decay_groups(model, 0.1, wd_bn_bias=True)
    assert len(whole) == 1 and whole[0]["weight_decay"] == 0.1


def zero_loss(pred, y):
    return pred.sum() * 0.0  # no gradient from the data: only weight decay moves the weights


def decayed_fit(learn: Learner, wd: float, wd_bn_bias: bool) -> list[float]:
    wds = wd_per_group(learn, wd, wd_bn_bias)
    learn.fit(1, cbs=ParamScheduler({"weight_decay": [sched_no(w) for w in wds]}))
    return wds


@pytest.mark.parametrize("made_before", [False, True])
def test_weight_decay_reaches_weights_only(made_before):
    model = net()
    learn = learner(model, zero_loss)
    if made_before:
        learn.create_opt()  # one group holding everything: it is split
    before = {k: v.clone() for k, v in model.named_parameters()}
    wds = decayed_fit(learn, 0.5, wd_bn_bias=False)
    assert wds == [0.5, 0.0] and len(learn.opt.param_groups) == 2
    after = dict(model.named_parameters())
    for name in ("0.weight", "3.weight"):  # SGD's L2 term: w <- w - lr * wd * w, two steps
        torch.testing.assert_close(after[name], before[name] * (1 - 0.1 * 0.5) ** 2)
    for name in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name])
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [0, 0]  # hypers are per fit


def test_wd_bn_bias_decays_everything_and_keeps_the_groups():
    model = net()
    learn = learner(model, zero_loss)
    learn.create_opt()
    before = {k: v.clone() for k, v in model.named_parameters()}
    assert decayed_fit(learn, 0.5, wd_bn_bias=True) == [0.5]
    torch.testing.assert_close(dict(model.named_parameters())["0.bias"], before["0.bias"] * 0.95**2)


def test_splitting_a_group_keeps_its_hypers_and_momentum():
    model = net()
    learn = learner(model, opt_func=partial(torch.optim.SGD, momentum=0.9))
    learn.fit(1)
    buffers = {id(p): learn.opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    wd_per_group(learn, 0.1)
    assert [g["momentum"] for g in learn.opt.param_groups] == [0.9, 0.9]
    assert ids(learn.opt.param_groups[1]["params"]) == ids(no_decay_params(model))
    assert all(torch.equal(learn.opt.state[p]["momentum_buffer"], buffers[id(p)]) for p in model.parameters())


def test_freeze_modules_keeps_them_and_norm_layers_train_then_unfreeze():
    model = net()
    learn = learner(model)
    freeze(learn, modules=["0", "1"])
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, True]  # BatchNorm trains
    before = {k: v.clone() for k, v in model.named_parameters()}
    learn.fit(1)
    after = dict(model.named_parameters())
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["1.weight"], before["1.weight"])
    assert not torch.equal(after["3.weight"], before["3.weight"])
    unfreeze(learn)
    assert all(p.requires_grad for p in model.parameters())
    freeze(learn, modules=nn.BatchNorm1d, train_bn=False)
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False, True]


def test_freeze_without_modules_freezes_all_groups_but_the_last():
    model = net()
    learn = learner(model)
    learn.opt = torch.optim.SGD([{"params": model[:3].parameters()}, {"params": model[3].parameters()}], lr=0.1)
    freeze(learn, train_bn=False)
    assert [p.requires_grad for p in model.parameters()] == [False, False, False, False, True]


def test_freeze_refuses_what_would_freeze_nothing_or_the_wrong_thing():
    model = net()
    learn = learner(model)
    with pytest.raises(ValueError, match="the optimizer has one param group"):
        freeze(learn)
    with pytest.raises(ValueError, match="is not a module of this model"):
        freeze(learn, modules=nn.Linear(2, 2))
    assert all(p.requires_grad for p in model.parameters())
