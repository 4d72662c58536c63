"""recipes/overhead.py: the loop overhead benchmark runs and reports every contender as a ratio."""

from __future__ import annotations

from tests.recipes.conftest import run_recipe


def test_overhead_benchmark_quick_mode_reports_every_contender(capsys):
    figures = run_recipe("overhead", ["--quick"])
    assert list(figures) == ["raw loop", "loopkit bare", "loopkit default, no bar", "loopkit default + bar",
                             "raw loop, DataLoader", "loopkit default, TensorLoader"]  # fmt: skip
    assert all(value > 0 for value in figures.values())
    out = capsys.readouterr().out
    assert "threads 1, device cpu" in out and "end to end: loopkit over a TensorLoader is " in out
