"""recipes/compiled.py: the compile benchmark runs (with aot_eager here: inductor takes minutes) and reports."""

from __future__ import annotations

import pytest

from tests.recipes.conftest import run_recipe


@pytest.mark.slow
def test_compile_benchmark_quick_mode_reports_compile_time_and_both_steps(capsys):
    figures = run_recipe("compiled", ["--quick", "--backend", "aot_eager"])
    assert list(figures) == ["compile_s", "eager", "compiled"]
    assert figures["eager"] > 0 and figures["compiled"] > 0
    out = capsys.readouterr().out
    assert "backend aot_eager" in out and "compile: " in out and "as fast as eager" in out
