"""set_seed: the same seed gives the same draws and the same training run."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Learner, set_seed
from tests.conftest import make_data


def draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_same_seed_same_draws_from_python_numpy_and_torch():
    set_seed(3)
    first = draws()
    set_seed(3)
    again = draws()
    set_seed(4)
    other = draws()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
    assert first[0] != other[0] and first[1] != other[1] and not torch.equal(first[2], other[2])


def seeded_run(seed: int) -> dict[str, torch.Tensor]:
    set_seed(seed)
    # Initial weights, the shuffled order and dropout all draw from the global RNGs.
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    x, y = make_data(48)
    dl = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    learn = Learner(model, (dl, None), F.cross_entropy, lr=0.1, default_cbs=False)
    learn.fit(2)
    return model.state_dict()


def test_seeded_runs_are_equal_and_another_seed_differs():
    first, again, other = seeded_run(0), seeded_run(0), seeded_run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_deterministic_turns_on_deterministic_algorithms(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # put back as it was after the test
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = was[1], was[2]


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_seed_must_be_an_int(seed):
    with pytest.raises(TypeError, match="set_seed: seed must be an int"):
        set_seed(seed)
