"""Runnable training scripts: `python -m loopkit.recipes.NAME --help`."""
