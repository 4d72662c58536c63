"""summary(learn): the layer table and the setup, from one forward pass that changes nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Learner
from loopkit.callbacks import EarlyStopping, summary
from tests.conftest import batches_of, make_data


def bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_summary_lists_layers_shapes_params_and_the_setup_before_the_first_fit():
    x, y = make_data(12)
    learn = Learner(bn_model(), (batches_of(x, y, [6, 6]), None), F.cross_entropy, lr=0.1)
    text = summary(learn)
    lines = text.splitlines()
    assert lines[0] == "Sequential (input: 6 x 4)"
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit()}
    assert rows["0"][1:] == ["(Linear)", "6", "x", "8", "40", "yes"]
    assert rows["1"][1:] == ["(BatchNorm1d)", "6", "x", "8", "16", "yes"]
    assert rows["2"][1:] == ["(ReLU)", "6", "x", "8", "0"]
    assert rows["4"][1:] == ["(Linear)", "6", "x", "3", "27", "yes"]
    assert "Total params: 83" in lines and "Trainable params: 83" in lines and "Non-trainable params: 0" in lines
    assert "Optimizer: SGD, lr=0.1 (made at the first fit)" in lines and "Loss: cross_entropy" in lines
    callbacks = lines[lines.index("Callbacks (in the order they run):") + 1 :]
    assert [line.split()[:2] for line in callbacks] == [
        ["-100", "TrainEval"], ["-20", "AvgStats"], ["0", "Recorder"], ["50", "ProgressBar"]
    ]  # fmt: skip
    assert learn.opt is None
    assert repr(text) == str(text)  # shows as the table in a REPL


def test_summary_after_a_fit_shows_the_optimizer_and_frozen_parameters():
    x, y = make_data(12)
    learn = Learner(bn_model(), (batches_of(x, y, [6, 6]), None), F.cross_entropy, cbs=[EarlyStopping("train_loss")])
    learn.progress_bar.enabled = False
    learn.fit(1)
    learn.model[0].bias.requires_grad_(False)
    learn.model[4].requires_grad_(False)
    lines = summary(learn).splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit()}
    assert rows["0"][-1] == "partly" and rows["4"][-1] == "no"
    assert "Trainable params: 48" in lines and "Non-trainable params: 35" in lines
    assert "Optimizer: SGD, 1 param group(s)" in lines
    assert any(line.startswith("  group 0: 83 params, lr=0.01") for line in lines)
    assert lines[-1].split() == ["70", "EarlyStopping", "(learn.early_stopping)"]


def test_summary_changes_no_weights_rng_modes_or_hooks():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    x, y = make_data(40)
    # A shuffled loader draws its order from the global RNG: summary must put it back.
    dl = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    model = bn_model()
    model.train()
    model[3].eval()  # a module in its own mode stays in it
    learn = Learner(model, (dl, None), F.cross_entropy)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    summary(learn)

    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # BatchNorm's running stats too
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert [m.training for m in model.modules()] == [True, True, True, True, False, True]
    # Reads torch's private hook dict on purpose: it is the only record of what is registered.
    assert all(not m._forward_hooks for m in model.modules())
    assert learn.epoch == 0 and learn.batch is None and learn.opt is None


def test_summary_of_an_empty_loader_is_a_clear_error_and_changes_nothing():
    class Empty:
        def __iter__(self):
            return iter([])

    model = bn_model()
    learn = Learner(model, (Empty(), None), F.cross_entropy)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="summary: the train loader yields no batch"):
        summary(learn)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_summary_counts_calls_and_shows_uncalled_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.spare = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.act(self.lin(self.act(x)))

    x, y = make_data(8)
    lines = summary(Learner(Net(), (batches_of(x, y, [8]), None), F.mse_loss)).splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in (["lin"], ["act"], ["spare"])}
    assert "8 x 4  (x2 calls)" in rows["act"]
    assert rows["spare"].split()[2:] == ["-", "10", "yes"]
