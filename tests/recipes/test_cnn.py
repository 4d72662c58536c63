"""recipes/cnn.py: a small CNN with batchnorm, trained by fit_one_cycle."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from loopkit import DataLoaders, Learner, digits
from loopkit.recipes.cnn import make_cnn
from tests.recipes.conftest import read_metrics, run_recipe


def test_cnn_meets_its_floor_and_writes_its_files(default_run):
    final, out = default_run("cnn")
    assert final["accuracy"] >= 0.97
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "loss.png", "metrics.csv", "model.pt", "sched.png"]
    # final comes from learn.validate(): the same model on the same loader as the last history row.
    assert read_metrics(out)[-1] == {"epoch": 7.0, **final}
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sched.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights["0.1.running_var"].shape == (32,)  # batchnorm statistics are saved with the weights


def test_cnn_is_make_cnn_trained_by_fit_one_cycle(tmp_path):
    final = run_recipe("cnn", ["--epochs", "2", "--lr", "0.2", "--out", str(tmp_path)])
    torch.manual_seed(0)  # what the recipe does, by hand
    data = digits()
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=64, seed=0)
    learn = Learner(make_cnn(1, 10), dls, F.cross_entropy, opt_func=partial(torch.optim.SGD, momentum=0.9))
    learn.progress_bar.enabled = False
    learn.fit_one_cycle(2, 0.2)
    assert learn.recorder.lrs[0] == pytest.approx(0.2 / 25)  # the one-cycle warm-up starts at lr_max / div
    assert final["valid_loss"] == learn.avg_stats.valid.loss
    assert final["train_loss"] == learn.avg_stats.train.loss


def test_cnn_same_seed_same_numbers(tmp_path):
    first = run_recipe("cnn", ["--epochs", "2", "--out", str(tmp_path / "a")])
    again = run_recipe("cnn", ["--epochs", "2", "--out", str(tmp_path / "b")])
    other = run_recipe("cnn", ["--epochs", "2", "--seed", "1", "--out", str(tmp_path / "c")])
    assert first == again and read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert other != first
