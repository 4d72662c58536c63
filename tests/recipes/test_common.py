"""recipes/_common.py: the command line and data every recipe shares."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from loopkit import Learner
from loopkit.callbacks import ClassificationInterpretation
from loopkit.recipes._common import accuracy, load_data, save_outputs, write_metrics
from tests.conftest import batches_of, make_data, tiny_model
from tests.recipes.conftest import read_metrics
from tests.test_data import write_folders, write_mnist

RECIPES = ["pixel_similarity", "linear", "digits", "cnn", "lr_find"]


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_has_the_shared_flags_and_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"loopkit.recipes.{name}").main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: python -m loopkit.recipes.{name}")
    for flag in ("--epochs", "--bs", "--lr", "--seed", "--data PATH", "--out DIR"):
        assert flag in usage
    assert f"runs/{name}" in usage  # the default --out


def test_bad_flags_are_refused(capsys):
    digits = importlib.import_module("loopkit.recipes.digits")
    with pytest.raises(SystemExit) as done:
        digits.main(["--amp", "fp8"])
    assert done.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_load_data_picks_the_reader_by_the_folder_layout(tmp_path):
    write_mnist(tmp_path / "idx", gz=False)
    write_folders(tmp_path / "png", {"train": {"a": 1, "b": 1}, "valid": {"b": 1}})
    assert load_data(tmp_path / "idx").train[0].shape == (6, 1, 5, 4)
    assert load_data(tmp_path / "png").classes == ["a", "b"]
    assert load_data(None).train[0].shape == (1438, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="has no 'train-images-idx3-ubyte'"):
        load_data(tmp_path)  # neither layout: reported as missing MNIST files


def test_write_metrics_writes_one_row_per_epoch(tmp_path):
    rows = [{"epoch": 0, "train_loss": 0.5, "valid_loss": 0.25}, {"epoch": 1, "train_loss": 0.125, "valid_loss": 0.1}]
    write_metrics(rows, tmp_path / "metrics.csv")
    assert read_metrics(tmp_path) == rows


def test_save_outputs_reports_validate_of_the_model_as_saved_and_writes_the_confusion_matrix(tmp_path, capsys):
    x, y = make_data(48)
    learn = Learner(tiny_model(), (batches_of(x[:32], y[:32], [8] * 4), batches_of(x[32:], y[32:], [5, 11])),
                    F.cross_entropy, lr=0.1, metrics=[accuracy])  # fmt: skip
    learn.progress_bar.enabled = False
    learn.fit(2)
    last = learn.avg_stats.history[-1]
    with torch.no_grad():
        learn.model.weight.mul_(-1)  # after the fit: the history no longer describes this model
    capsys.readouterr()
    final = save_outputs(learn, tmp_path, classes=["a", "b", "c"])
    valid = learn.validate()
    assert final == {"train_loss": last["train_loss"], "valid_loss": valid.loss, "accuracy": valid.metrics["accuracy"]}
    assert final["valid_loss"] != pytest.approx(last["valid_loss"])
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mistakes = ClassificationInterpretation.from_learner(learn, vocab=["a", "b", "c"]).most_confused(k=3)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "most confused (actual as predicted): " + ", ".join(f"{a} as {p} ({n})" for a, p, n in mistakes)
    assert printed[1] == f"final valid_loss {valid.loss:.4f}  accuracy {valid.metrics['accuracy']:.4f}"
    assert "confusion.png" in printed[2]
