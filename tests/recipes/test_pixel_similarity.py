"""recipes/pixel_similarity.py: the mean-image baseline."""

from __future__ import annotations

import pytest
import torch

from loopkit import digits
from tests.recipes.conftest import read_metrics, run_recipe


def test_baseline_meets_its_floor_and_writes_its_files(default_run):
    final, out = default_run("pixel_similarity")
    assert final["accuracy"] >= 0.85
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "metrics.csv", "model.pt"]  # nothing trained: no loss curve
    assert read_metrics(out) == [{"epoch": 0.0, **final}]
    means = torch.load(out / "model.pt", weights_only=True)["means"]
    x, y = digits().train
    assert means.shape == (10, 1, 8, 8)
    assert torch.allclose(means[3], x[y == 3].mean(0))  # the mean training image of each class


def test_baseline_is_the_same_every_time(tmp_path):
    first = run_recipe("pixel_similarity", ["--out", str(tmp_path / "a"), "--bs", "50"])
    again = run_recipe("pixel_similarity", ["--out", str(tmp_path / "b"), "--seed", "3"])
    assert first == pytest.approx(again, abs=1e-6)  # no randomness: seed and batch size change nothing
