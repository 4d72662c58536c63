"""recipes/recorder_memory.py: the Recorder memory benchmark runs and reports every configuration."""

from __future__ import annotations

import pytest

from tests.recipes.conftest import run_recipe


@pytest.mark.slow
def test_recorder_memory_benchmark_quick_mode_reports_every_configuration(capsys):
    figures = run_recipe("recorder_memory", ["--quick"])
    names = ["loop without Recorder", "loop with Recorder", "one-cycle without Recorder", "one-cycle with Recorder"]
    assert list(figures) == names
    assert all("bytes_per_batch" in figures[name] for name in names[1::2])  # figures, not asserted: never a test
    out = capsys.readouterr().out
    assert out.startswith("torch ") and "5000 training batches" in out and all(name in out for name in names)
