"""Figures for every plot method (Recorder, LRFindResult, ActivationStats, ClassificationInterpretation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ._dist import is_main_process


def new_figure(**kwargs: Any) -> Figure:
    """Return a figure registered with pyplot, so `fig.show()` and `plt.show()` display it.

    pyplot is imported here, not when loopkit is, so importing loopkit picks no backend.
    """
    import matplotlib.pyplot as plt

    return plt.figure(layout="tight", **kwargs)


def finish(fig: Figure, path: str | Path | None) -> Figure:
    """Save `fig` to `path` if given (rank 0 alone under distributed training), then close it in pyplot.

    A saved figure is closed so that a script saving many plots does not pile them up
    in pyplot; it stays a complete `Figure` (axes, `savefig`). Without a path it stays
    open for `fig.show()`: close it with `plt.close(fig)` when done.
    """
    if path is not None:
        if is_main_process():
            fig.savefig(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return fig
