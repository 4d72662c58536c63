"""Fixtures for the recipe tests: each recipe's run with default options, made once per session."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def run_recipe(name: str, argv: list[str]) -> dict[str, float]:
    """Run `loopkit.recipes.<name>.main(argv)` in this process; return its final figures."""
    return importlib.import_module(f"loopkit.recipes.{name}").main(argv)


def read_metrics(out: Path) -> list[dict[str, float]]:
    """Return the rows of `out/metrics.csv` as floats."""
    with (out / "metrics.csv").open() as file:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Train on one CPU thread: these models are too small to gain from more, and on a shared
    machine competing threads slow them down several times. Restored after the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Callable[[str], tuple[dict[str, float], Path]]:
    """Return `run(name) -> (final figures, output folder)` of the recipe's default run.

    The runs are deterministic, so sharing one per session between the floor test
    and the ordering test changes no outcome and saves their time.
    """
    runs: dict[str, tuple[dict[str, float], Path]] = {}

    def run(name: str) -> tuple[dict[str, float], Path]:
        if name not in runs:
            out = tmp_path_factory.mktemp(name)
            runs[name] = (run_recipe(name, ["--out", str(out)]), out)
        return runs[name]

    return run
