"""recipes/_common.py: the command line and data every recipe shares."""

from __future__ import annotations

import importlib

import pytest

from loopkit.recipes._common import load_data, write_metrics
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
