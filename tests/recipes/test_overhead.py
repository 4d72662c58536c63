"""recipes/overhead.py: the loop overhead benchmark runs and reports every contender, paired with its baseline."""

from __future__ import annotations

import pytest

from loopkit.recipes import overhead
from tests.recipes.conftest import run_recipe

LOOP_ROWS = ["raw loop", "loopkit bare", "+ AvgStats", "+ Recorder", "+ ProgressBar",
             "loopkit default, no bar", "loopkit default + bar"]  # fmt: skip
END_TO_END = ["raw loop, DataLoader", "loopkit default, TensorLoader"]


def test_overhead_benchmark_quick_mode_reports_every_contender_on_both_workloads(capsys):
    figures = run_recipe("overhead", ["--quick"])
    assert list(figures) == ["mlp", "tiny"]
    assert list(figures["mlp"]["per_batch"]) == [*LOOP_ROWS, *END_TO_END]
    assert list(figures["tiny"]["per_batch"]) == LOOP_ROWS
    # Every contender but the two raw loops has a cost against its own baseline.
    assert list(figures["mlp"]["over_baseline"]) == [*LOOP_ROWS[1:], END_TO_END[1]]
    assert all(value > 0 for rows in figures.values() for value in rows["per_batch"].values())
    out = capsys.readouterr().out
    assert "threads 1, device cpu" in out and "end to end: loopkit over a TensorLoader is " in out
    assert out.count("µs per batch each callback adds to the bare loop: AvgStats ") == 2
    assert "workload tiny: linear 784 -> 10, 125 batches of 16, 3 trials" in out


def test_overhead_benchmark_runs_one_workload_alone(capsys):
    figures = run_recipe("overhead", ["--quick", "--workload", "cnn"])
    assert list(figures) == ["cnn"] and list(figures["cnn"]["per_batch"]) == LOOP_ROWS
    assert "throughput of loopkit (default callbacks, no bar): " in capsys.readouterr().out


@pytest.mark.parametrize("name, base", [("raw loop", None), ("raw loop, DataLoader", None), ("loopkit bare", "raw loop"),
                                        ("loopkit default, no bar", "raw loop"), ("+ Recorder", "loopkit bare"),
                                        ("loopkit default, TensorLoader", "raw loop, DataLoader")])  # fmt: skip
def test_each_contender_is_paired_with_its_baseline(name, base):
    assert overhead.baseline(name) == base


def test_a_pair_of_epochs_alternates_its_order_and_the_cost_is_their_difference():
    calls = []
    clock_values = iter(range(1000))

    def run(name):
        return lambda: calls.append(name)

    runs = {"raw loop": run("raw"), "loopkit bare": run("bare")}
    times, over = overhead.measure(runs, 1, 2, clock=lambda: next(clock_values), sync=lambda: None)
    assert calls == ["raw", "bare", "raw", "bare", "bare", "raw"]  # warm-up, then trial 0, trial 1 reversed
    assert over == {"loopkit bare": [0.0, 0.0]} and times["raw loop"] == times["loopkit bare"] == [1e6, 1e6]
