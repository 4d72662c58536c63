"""Saving plots: rank 0 alone writes, the figure is returned either way."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ._dist import is_main_process


def saved(fig: Figure, path: str | Path | None) -> Figure:
    """Save `fig` to `path` (PNG by its suffix) when a path is given and this is rank 0; return `fig`."""
    if path is not None and is_main_process():  # under distributed training rank 0 alone writes
        fig.savefig(path)
    return fig
