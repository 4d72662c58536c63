"""recipes/memory.py: the accumulation memory benchmark runs and reports every configuration."""

from __future__ import annotations

from tests.recipes.conftest import run_recipe


def test_memory_benchmark_quick_mode_reports_every_configuration(capsys):
    figures = run_recipe("memory", ["--quick"])
    names = ["raw loop, batch B", "loopkit, batch B", "loopkit, B/4 x 4 accumulated"]
    assert list(figures) == names
    assert all(row["peak"] > 0 and row["time"] > 0 for row in figures.values())
    out = capsys.readouterr().out
    assert out.startswith("torch ") and "threads 1, device cpu" in out
    assert all(name in out for name in names)
