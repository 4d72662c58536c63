"""`ActivationStats`: what each layer's activations look like while training, and their plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from ._plot import finish, new_figure
from .hooks import Hook, HooksCallback, ModuleSpec


def activation_row(out: torch.Tensor, bins: int, hist_max: float, near_zero: float) -> torch.Tensor:
    """Return `[mean, std, fraction near zero, histogram...]` of one output, as `3 + bins` floats on its device.

    The fraction near zero counts `|a| <= near_zero`; the histogram counts `|a|`
    in `bins` equal bins over `[0, hist_max]` (values above are left out, as
    `torch.histc` does). `std` is the unbiased one. Nothing is read on the host.
    """
    a = out.detach().float()  # histc has no half-precision kernel on the CPU
    size = a.abs()
    stats = torch.stack([a.mean(), a.std(), (size <= near_zero).float().mean()])
    return torch.cat([stats, size.histc(bins, 0.0, hist_max)])


class ActivationStats(HooksCallback):
    """Record the mean, std, fraction near zero and histogram of hooked modules' outputs while training.

    Events: before_fit, after_train, after_fit. Reads: model, training,
    train_iter, evaluating. Writes on the learner: nothing.
    Publishes: `layers` (the hooked modules' names), and per layer name `means`,
    `stds`, `near_zero_fractions` (tensors of one value per recorded batch), `hists` (a
    tensor of `bins` counts per recorded batch) and `iters` (the training batch,
    `train_iter`, of each record).
    order = -95 (from `HooksCallback`): hooks are placed before anything moves the model.

    `modules` chooses what to hook (default: every leaf module with parameters;
    a class such as `nn.ReLU`, a name, a module, or a list: see `select_modules`).
    Every `every`-th training batch, each hooked module's output gives one row:
    mean, std, the fraction with `|a| <= near_zero`, and a histogram of `|a|` in
    `bins` bins over `[0, hist_max]`. Validation batches and evaluations are not
    recorded. Rows stay on the device during an epoch and are read to the host in
    one copy at `after_train` (one host sync per epoch, none per batch).
    Memory: `(3 + bins)` float32 per hooked module per recorded batch, e.g. 4 bytes
    x 43 x 5 layers x 10,000 batches = 8.6 MB with the defaults, on the device for
    one epoch at most and on the host for the fit; raise `every` for long fits.
    Each fit starts a new record. A module called more than once per forward gives
    a row per call.
    """

    def __init__(self, modules: ModuleSpec = None, every: int = 1, bins: int = 40, hist_max: float = 10.0,
                 near_zero: float = 0.05) -> None:  # fmt: skip
        for name, value in (("every", every), ("bins", bins)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ActivationStats: {name} must be an int >= 1, got {value!r}.")
        if not isinstance(hist_max, (int, float)) or not hist_max > 0:
            raise ValueError(f"ActivationStats: hist_max is the top of the histogram and must be > 0, got {hist_max!r}.")
        if not isinstance(near_zero, (int, float)) or not near_zero >= 0:
            raise ValueError(f"ActivationStats: near_zero is a threshold on |a| and must be >= 0, got {near_zero!r}.")
        super().__init__(modules)
        self.every, self.bins, self.hist_max, self.near_zero = every, bins, float(hist_max), float(near_zero)
        self.layers: list[str] = []
        self._pending: list[list[torch.Tensor]] = []
        self._chunks: list[list[torch.Tensor]] = []
        self._iters: list[list[int]] = []

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not training: nothing to record
            return
        super().before_fit()
        assert self.hooks is not None  # set by HooksCallback.before_fit outside evaluations
        self.layers = list(self.hooks.names)
        for i, hook in enumerate(self.hooks):
            hook.stored = i  # the layer's index into the records
        self._pending = [[] for _ in self.layers]
        self._chunks = [[] for _ in self.layers]
        self._iters = [[] for _ in self.layers]

    def hook(self, hook: Hook, module: nn.Module, inp: Any, out: Any) -> None:
        """Append this output's row, on training batches whose index is a multiple of `every`."""
        learn = self.learn  # direct reads: this runs for every hooked module on every batch
        if not learn.training or learn.train_iter % self.every:
            return
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"ActivationStats: module {self.layers[hook.stored]!r} ({type(module).__name__}) returned a "
                f"{type(out).__name__}, not a tensor; hook modules that return one tensor (pass modules=...)."
            )
        self._pending[hook.stored].append(activation_row(out, self.bins, self.hist_max, self.near_zero))
        self._iters[hook.stored].append(learn.train_iter)

    def after_train(self) -> None:
        self._read()

    def after_fit(self) -> None:
        self._read()  # what an epoch cut short by a cancel or an error left on the device
        super().after_fit()

    def _read(self) -> None:
        counts = [len(rows) for rows in self._pending]
        if not any(counts):
            return
        # One copy of every layer's rows: the epoch's single host sync.
        rows = torch.cat([torch.stack(p) for p in self._pending if p]).cpu()
        for chunks, part in zip(self._chunks, rows.split(counts)):
            if len(part):
                chunks.append(part)
        self._pending = [[] for _ in self.layers]

    def _column(self, columns: slice | int) -> dict[str, torch.Tensor]:
        self._read()
        empty = torch.zeros(0, 3 + self.bins)
        return {name: torch.cat(chunks)[:, columns] if chunks else empty[:, columns]
                for name, chunks in zip(self.layers, self._chunks)}  # fmt: skip

    @property
    def means(self) -> dict[str, torch.Tensor]:
        """Layer name -> the mean activation of each recorded batch."""
        return self._column(0)

    @property
    def stds(self) -> dict[str, torch.Tensor]:
        """Layer name -> the (unbiased) std of the activations of each recorded batch."""
        return self._column(1)

    @property
    def near_zero_fractions(self) -> dict[str, torch.Tensor]:
        """Layer name -> the fraction of activations with `|a| <= near_zero`, per recorded batch."""
        return self._column(2)

    @property
    def hists(self) -> dict[str, torch.Tensor]:
        """Layer name -> a `(recorded batches, bins)` tensor of counts of `|a|` over `[0, hist_max]`."""
        return self._column(slice(3, None))

    @property
    def iters(self) -> dict[str, list[int]]:
        """Layer name -> the training batch (`train_iter` in the fit) of each record."""
        return {name: list(iters) for name, iters in zip(self.layers, self._iters)}

    def _check_recorded(self, what: str) -> None:
        if not self.layers or not any(self._iters):
            raise ValueError(f"{what}: nothing recorded yet; fit with ActivationStats added first.")

    def plot_stats(self, path: str | Path | None = None) -> Figure:
        """Plot the mean and the std of each layer's activations over training; return the figure.

        `path` also saves it (PNG by its suffix).
        """
        self._check_recorded("plot_stats")
        fig = new_figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        iters = self.iters
        for ax, (title, values) in zip(axes, (("mean", self.means), ("std", self.stds))):
            for name in self.layers:
                ax.plot(iters[name], values[name], label=name)
            ax.set_title(f"activation {title}")
            ax.set_xlabel("training batches")
        axes[0].legend()
        return finish(fig, path)

    def plot_color_dim(self, path: str | Path | None = None) -> Figure:
        """Plot each layer's histogram of `|a|` over training, one panel per layer; return the figure.

        The "colorful dimension" picture of the fastai lessons: x is the training
        batch, y the activation size (0 at the bottom, `hist_max` at the top), and the
        colour the log of the count, `log(1 + count)`. A healthy layer spreads over
        the height; a collapsing one hugs the bottom row.
        """
        self._check_recorded("plot_color_dim")
        n = len(self.layers)
        cols = min(n, 4)
        rows = math.ceil(n / cols)
        fig = new_figure(figsize=(3.2 * cols, 2.6 * rows))
        hists, iters = self.hists, self.iters
        for i, name in enumerate(self.layers):
            ax = fig.add_subplot(rows, cols, i + 1)
            its = iters[name]
            right = its[-1] + 1 if its else 1
            ax.imshow(hists[name].T.log1p().numpy(), origin="lower", aspect="auto",
                      extent=(its[0] if its else 0, right, 0.0, self.hist_max))  # fmt: skip
            ax.set_title(name)
            ax.set_xlabel("training batches")
            ax.set_ylabel("|activation|")
        return finish(fig, path)

    def plot_dead(self, path: str | Path | None = None) -> Figure:
        """Plot the fraction of each layer's activations near zero over training; return the figure."""
        self._check_recorded("plot_dead")
        fig = new_figure(figsize=(6, 4))
        ax = fig.add_subplot()
        fractions, iters = self.near_zero_fractions, self.iters
        for name in self.layers:
            ax.plot(iters[name], fractions[name], label=name)
        ax.set_ylim(0, 1)
        ax.set_xlabel("training batches")
        ax.set_ylabel(f"fraction with |a| <= {self.near_zero:g}")
        ax.legend()
        return finish(fig, path)
