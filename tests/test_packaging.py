"""Packaging: the README's commands, CI's test command and the installed layout agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"^```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    install_and_run, install_and_test = commands
    assert "recipes/digits.py" in install_and_run and "pytest" in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines


def test_callbacks_and_recipes_live_under_loopkit_only(tmp_path):
    # Run outside the checkout, where only the installed package is importable.
    code = (
        "import importlib.util, loopkit.callbacks, loopkit.recipes;"
        "print(importlib.util.find_spec('callbacks'), importlib.util.find_spec('recipes'),"
        " loopkit.callbacks.__name__, loopkit.recipes.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None", "loopkit.callbacks", "loopkit.recipes"]
