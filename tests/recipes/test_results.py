"""docs/results.md: its figures are what the default runs give, and the ordering holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"
ROW = re.compile(r"^\| [^|]+ \| `python recipes/(\w+)\.py` \| ([0-9.]+) \|", re.MULTILINE)


def reported() -> dict[str, float]:
    """Return recipe -> accuracy from the default-options rows of the results page."""
    return {name: float(accuracy) for name, accuracy in ROW.findall(RESULTS.read_text())}


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
