"""docs/results.md: its figures are what the default runs give, and the ordering holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"
ROW = re.compile(r"^\| [^|]+ \| `python recipes/(\w+)\.py` \| ([0-9.]+) \|", re.MULTILINE)
# The MNIST-1D table: model | published | ours (test) | valid | time | command.
MNIST1D_ROW = re.compile(
    r"^\| [^|]+ \| ([0-9.]+) \| ([0-9.]+) \| [0-9.]+ \| [^|]+ \| `python recipes/mnist1d\.py --model (\w+)` \|$", re.MULTILINE
)


def reported() -> dict[str, float]:
    """Return recipe -> accuracy from the default-options rows of the results page."""
    return {name: float(accuracy) for name, accuracy in ROW.findall(RESULTS.read_text())}


def reported_mnist1d() -> dict[str, tuple[float, float]]:
    """Return model -> (published, ours) test accuracy from the MNIST-1D table of the results page."""
    return {model: (float(paper), float(ours)) for paper, ours, model in MNIST1D_ROW.findall(RESULTS.read_text())}


def test_results_page_reports_every_recipe_and_the_ordering_holds():
    accuracy = reported()
    assert sorted(accuracy) == ["cnn", "digits", "linear", "lr_find", "pixel_similarity"]
    assert accuracy["pixel_similarity"] < accuracy["linear"] < accuracy["digits"] <= accuracy["cnn"]


@pytest.mark.parametrize("name", ["pixel_similarity", "linear", "digits", "cnn", "lr_find"])
def test_results_page_matches_the_default_run(default_run, name):
    # One validation image is 1/359; another thread count may flip a borderline one.
    assert default_run(name)[0]["accuracy"] == pytest.approx(reported()[name], abs=1.5 / 359)


def test_default_runs_keep_the_ordering(default_run):
    accuracy = {name: default_run(name)[0]["accuracy"] for name in ("pixel_similarity", "linear", "digits", "cnn")}
    assert accuracy["pixel_similarity"] < accuracy["linear"] < accuracy["digits"] <= accuracy["cnn"]


def test_mnist1d_table_has_each_model_with_the_papers_figure():
    from loopkit.recipes.mnist1d import MODELS

    table = reported_mnist1d()
    assert sorted(table) == sorted(MODELS)
    assert {model: paper for model, (paper, _) in table.items()} == {m: s.published for m, s in MODELS.items()}
    # Every model beats the paper (logistic regression by a hair: the page says why).
    assert all(ours > paper for paper, ours in table.values())


@pytest.mark.slow
def test_mnist1d_table_matches_the_default_run(default_run):
    # The default model is the CNN; its test accuracy is a count out of 1,000 signals.
    assert default_run("mnist1d")[0]["test_accuracy"] == pytest.approx(reported_mnist1d()["cnn"][1], abs=2.5 / 1000)
