"""recipes/overhead.py: the loop overhead benchmark runs and reports every contender as a ratio."""

from __future__ import annotations

from tests.recipes.conftest import run_recipe

LOOP_ROWS = ["raw loop", "loopkit bare", "+ AvgStats", "+ Recorder", "+ ProgressBar",
             "loopkit default, no bar", "loopkit default + bar"]  # fmt: skip


def test_overhead_benchmark_quick_mode_reports_every_contender_on_both_workloads(capsys):
    figures = run_recipe("overhead", ["--quick"])
    assert list(figures) == ["mlp", "tiny"]
    assert list(figures["mlp"]) == [*LOOP_ROWS, "raw loop, DataLoader", "loopkit default, TensorLoader"]
    assert list(figures["tiny"]) == LOOP_ROWS
    assert all(value > 0 for rows in figures.values() for value in rows.values())
    out = capsys.readouterr().out
    assert "threads 1, device cpu" in out and "end to end: loopkit over a TensorLoader is " in out
    assert out.count("µs per batch over the bare loop: AvgStats ") == 2
    assert "workload tiny: linear 784 -> 10, 125 batches of 16" in out


def test_overhead_benchmark_runs_one_workload_alone(capsys):
    figures = run_recipe("overhead", ["--quick", "--workload", "cnn", "--trials", "1"])
    assert list(figures) == ["cnn"] and list(figures["cnn"]) == LOOP_ROWS
    assert "throughput of loopkit (default callbacks, no bar): " in capsys.readouterr().out
