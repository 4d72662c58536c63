"""recipes/mnist1d.py: linear, MLP and CNN on MNIST-1D, scored once on the held-out test split."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopkit.recipes.mnist1d import MODELS, make_model, make_signals
from tests.recipes.conftest import read_metrics, run_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--samples", "600", "--epochs", "1"]  # 480 train signals (60 of them valid), 120 test
TEST_LINE = re.compile(
    r"^test loss ([0-9.]+)  accuracy ([0-9.]+)  on (\d+) signals; published \((\w+)\): ([0-9.]+)$", re.MULTILINE
)


def printed_test(out: str) -> tuple[float, float, int, str, float]:
    """Return (loss, accuracy, count, model, published) from the recipe's test line."""
    (loss, acc, count, model, published), *more = TEST_LINE.findall(out)
    assert not more, "the test split is scored once"
    return float(loss), float(acc), int(count), model, float(published)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_quick_run_writes_its_files_and_prints_the_test_accuracy(tmp_path, capsys, model):
    figures = run_recipe("mnist1d", [*QUICK, "--model", model, "--out", str(tmp_path)])
    loss, acc, count, name, published = printed_test(capsys.readouterr().out)
    assert (name, published, count) == (model, MODELS[model].published, 120)
    assert acc == pytest.approx(figures["test_accuracy"], abs=5e-5) and loss == pytest.approx(figures["test_loss"], abs=5e-5)
    assert figures["test_accuracy"] * count == pytest.approx(round(figures["test_accuracy"] * count))  # a count of signals
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "loss.png", "metrics.csv", "model.pt", "sched.png"]
    final = {k: v for k, v in figures.items() if not k.startswith("test_")}
    assert read_metrics(tmp_path) == [{"epoch": 0.0, **final}]


def test_the_printed_test_accuracy_is_the_saved_model_on_mnist1d_test_split(tmp_path):
    figures = run_recipe("mnist1d", [*QUICK, "--model", "mlp", "--out", str(tmp_path)])
    model = make_model("mlp")
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.eval()  # batchnorm's running statistics, as learn.validate scores
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 600
    data = make_dataset(args)
    x, y = torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"])
    with torch.no_grad():
        pred = model(x)
    assert (pred.argmax(1) == y).float().mean().item() == pytest.approx(figures["test_accuracy"], abs=1e-6)
    assert torch.nn.functional.cross_entropy(pred, y).item() == pytest.approx(figures["test_loss"], rel=1e-5)


def test_signals_are_the_standard_set_made_without_a_network(monkeypatch):
    attempts = []  # recorded, not only raised: mnist1d's get_dataset swallows any error and regenerates

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # a download looks the host up first
    train, valid, test = make_signals()
    assert attempts == []
    assert [tuple(x.shape) for x, _ in (train, valid, test)] == [(3500, 40), (500, 40), (1000, 40)]  # 4000 + 1000
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in (train, valid, test))
    assert torch.bincount(torch.cat([train[1], valid[1], test[1]])).tolist() == [500] * 10
    # valid is carved from train: no test signal is among the signals the model learns from or is chosen on.
    seen = torch.cat([train[0], valid[0]])
    assert not (torch.cdist(test[0], seen).min(dim=1).values < 1e-6).any()


def test_same_seed_same_numbers(tmp_path):
    first = run_recipe("mnist1d", [*QUICK, "--model", "mlp", "--out", str(tmp_path / "a")])
    again = run_recipe("mnist1d", [*QUICK, "--model", "mlp", "--out", str(tmp_path / "b")])
    other = run_recipe("mnist1d", [*QUICK, "--model", "mlp", "--seed", "1", "--out", str(tmp_path / "c")])
    assert first == again and read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert other != first


def test_lr_and_wd_flags_override_the_model_defaults(tmp_path):
    default = run_recipe("mnist1d", [*QUICK, "--model", "linear", "--out", str(tmp_path / "a")])
    explicit = run_recipe("mnist1d", [*QUICK, "--model", "linear", "--lr", str(MODELS["linear"].lr),
                                      "--wd", str(MODELS["linear"].wd), "--out", str(tmp_path / "b")])  # fmt: skip
    other = run_recipe("mnist1d", [*QUICK, "--model", "linear", "--wd", "5", "--out", str(tmp_path / "c")])
    assert explicit == default and other != default


def test_runs_from_a_checkout_past_its_namesake_package(tmp_path):
    # As a script, recipes/ comes first on sys.path, where this file shadows the mnist1d package.
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist1d.py"), *QUICK, "--model", "linear",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert printed_test(proc.stdout)[2:4] == (120, "linear") and (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "somewhere"], "--data: mnist1d.py generates its signals"),
    (["--samples", "50"], "--samples must be at least 100"),
    (["--model", "gru"], "invalid choice: 'gru'"),
])  # fmt: skip
def test_bad_flags_are_refused_by_argparse(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        run_recipe("mnist1d", [*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not tmp_path.joinpath("model.pt").exists()


@pytest.mark.slow
def test_default_cnn_beats_the_published_figure_on_the_test_split(default_run):
    figures, out = default_run("mnist1d")  # the CNN, 20 epochs
    assert figures["test_accuracy"] > MODELS["cnn"].published
    assert figures["accuracy"] > 0.95  # validation, the split its settings were chosen on
    assert [row["epoch"] for row in read_metrics(out)] == list(range(20))
