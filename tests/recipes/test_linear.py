"""recipes/linear.py: logistic regression with SGD."""

from __future__ import annotations

import torch

from tests.recipes.conftest import read_metrics, run_recipe


def test_linear_meets_its_floor_and_writes_its_files(default_run):
    final, out = default_run("linear")
    assert final["accuracy"] >= 0.93
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "loss.png", "metrics.csv", "model.pt"]
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == list(range(10))
    assert rows[-1] == {"epoch": 9.0, **final}  # final is learn.validate()'s: equal to the last row
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = torch.load(out / "model.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"1.weight": (10, 64), "1.bias": (10,)}


def test_linear_same_seed_same_numbers(tmp_path):
    argv = ["--epochs", "2", "--seed", "1"]
    first = run_recipe("linear", [*argv, "--out", str(tmp_path / "a")])
    again = run_recipe("linear", [*argv, "--out", str(tmp_path / "b")])
    other = run_recipe("linear", ["--epochs", "2", "--seed", "2", "--out", str(tmp_path / "c")])
    assert first == again and read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert other != first  # the seed is used
