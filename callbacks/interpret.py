"""`ClassificationInterpretation`: where a classifier goes wrong, from one pass of `learn.get_preds`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loopkit import Callback

from ._plot import finish, new_figure


class TopLosses(NamedTuple):
    """The `k` largest per-sample losses (`values`, largest first) and the samples' `indices`."""

    values: torch.Tensor
    indices: torch.Tensor


class ClassificationInterpretation:
    """Inspect a classifier's predictions: confusion matrix, most confused classes, top losses.

    Build it with `ClassificationInterpretation.from_learner(learn)`, which runs one
    `learn.get_preds` over a loader, or directly from tensors you already have.
    `inputs` are the samples (index 0 is the batch; `None` if you have none, which
    only `plot_top_losses` needs), `probs` the `[N, C]` class probabilities (or any
    class scores: the predicted class is their argmax), `targs` the `[N]` integer
    class indices, `losses` the `[N]` per-sample losses. `vocab` names the `C` classes
    in the results and plots; without it classes are their indices.

    Raises `ValueError` or `TypeError`, saying what to change, for outputs that are
    not class scores `[N, C]` with `C >= 2`, targets that are not integer class
    indices in `[0, C)`, and sizes that disagree.
    """

    def __init__(self, inputs: Any, probs: torch.Tensor, targs: torch.Tensor, losses: torch.Tensor,
                 vocab: Sequence[Any] | None = None) -> None:  # fmt: skip
        _check_scores(probs, "probs")
        n_samples, n_classes = probs.shape
        _check_targets(targs, n_samples)
        if targs.numel() and (int(targs.min()) < 0 or int(targs.max()) >= n_classes):
            raise ValueError(
                f"targets must be class indices in [0, {n_classes}) for {n_classes} class scores, got values from "
                f"{int(targs.min())} to {int(targs.max())}; the model must output one score per class."
            )
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n_samples,):
            got = f"shape {list(losses.shape)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(f"losses must be one loss per sample, shape [{n_samples}], got {got}; "
                             "compute them with reduction='none'.")  # fmt: skip
        if vocab is not None and len(vocab) != n_classes:
            raise ValueError(
                f"vocab names {len(vocab)} classes but the outputs score {n_classes}; pass one name per class, "
                "in class-index order (ImageData.classes is such a list)."
            )
        self.inputs, self.probs, self.targs, self.losses = inputs, probs, targs.long(), losses
        self.vocab = list(vocab) if vocab is not None else None
        self.n_classes = n_classes
        self.preds = probs.argmax(dim=1)  # the predicted class of each sample

    @classmethod
    def from_learner(cls, learn: Any, dl: Any = None, act: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     vocab: Sequence[Any] | None = None) -> ClassificationInterpretation:  # fmt: skip
        """Run `learn.get_preds(dl, with_input=True, with_loss=True)` once and interpret the result.

        `dl` defaults to the valid loader; it must yield `(x, y)` batches whose target is
        one integer class index per sample. `act` turns the model's outputs into
        probabilities; the default is a softmax over dim 1, for multi-class logits. The
        per-sample losses are `learn.loss_func`'s, with `reduction="none"`. The outputs
        and targets are checked at every batch, so a regression model or an unlabelled
        loader stops at the first batch, not after the whole pass.
        """
        if act is not None and not callable(act):
            raise TypeError(f"act must be a function from outputs to probabilities, e.g. torch.sigmoid; got {act!r}.")
        inputs, scores, targs, losses = learn.get_preds(dl, with_input=True, with_loss=True, cbs=[_CheckClassification()])
        probs = act(scores) if act is not None else torch.softmax(scores.float(), dim=1)
        return cls(inputs, probs, targs, losses, vocab=vocab)

    def _name(self, index: int) -> Any:
        return self.vocab[index] if self.vocab is not None else index

    def confusion_matrix(self) -> torch.Tensor:
        """Return the `[C, C]` counts: row = actual class, column = predicted class."""
        n = self.n_classes
        return torch.bincount(self.targs * n + self.preds, minlength=n * n).reshape(n, n)

    def most_confused(self, k: int = 5, min_val: int = 1) -> list[tuple[Any, Any, int]]:
        """Return up to `k` `(actual, predicted, count)`, most frequent mistakes first.

        Only mistakes (actual != predicted) made at least `min_val` times; ties in
        `count` keep class order. Classes are named by `vocab` when given.
        """
        _check_k(k, "most_confused")
        if not isinstance(min_val, int) or min_val < 1:
            raise ValueError(f"most_confused: min_val is the fewest mistakes to list, an int >= 1; got {min_val!r}.")
        matrix = self.confusion_matrix()
        pairs = [(int(matrix[a, p]), a, p) for a in range(self.n_classes) for p in range(self.n_classes)
                 if a != p and matrix[a, p] >= min_val]  # fmt: skip
        pairs.sort(key=lambda pair: -pair[0])  # stable: equal counts stay in (actual, predicted) order
        return [(self._name(a), self._name(p), count) for count, a, p in pairs[:k]]

    def top_losses(self, k: int = 9) -> TopLosses:
        """Return the `k` largest per-sample losses and their sample indices, largest first.

        `k` larger than the number of samples gives them all; equal losses keep
        sample order.
        """
        _check_k(k, "top_losses")
        values, indices = torch.sort(self.losses, descending=True, stable=True)
        return TopLosses(values[:k], indices[:k])

    def plot_confusion_matrix(self, normalize: bool = False, path: str | Path | None = None) -> Figure:
        """Plot the confusion matrix (rows actual, columns predicted); return the figure.

        `normalize` divides each row by its count, so a cell is the fraction of that
        class predicted as the column's (a class with no samples stays 0). Cells are
        annotated with their values up to 30 classes. `path` also saves the figure
        (PNG by its suffix); under distributed training rank 0 alone writes.
        """
        matrix = self.confusion_matrix().double()
        if normalize:
            matrix = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)
        n = self.n_classes
        side = min(max(5.0, 0.5 * n + 2), 16.0)
        fig = new_figure(figsize=(side, side))
        ax = fig.add_subplot()
        image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        names = [str(self._name(i)) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("confusion matrix" + (" (normalized by row)" if normalize else ""))
        if n <= 30:
            threshold = float(matrix.max()) / 2
            for a in range(n):
                for p in range(n):
                    value = float(matrix[a, p])
                    ax.text(p, a, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                            color="white" if value > threshold else "black", fontsize=8)  # fmt: skip
        return finish(fig, path)

    def plot_top_losses(self, k: int = 9, path: str | Path | None = None) -> Figure:
        """Plot the `k` samples with the largest losses, largest first; return the figure.

        Each panel's title is `predicted/actual / loss / probability of the predicted
        class`. A sample that is `[H, W]` or `[C, H, W]` with 1 or 3 channels is drawn
        as an image (each scaled to its own range, so normalised inputs show); any
        other sample as a plot of its flattened values. Needs the inputs (a tensor
        whose first dimension is the sample). `path` also saves the figure.
        """
        _check_k(k, "plot_top_losses")
        if not isinstance(self.inputs, torch.Tensor) or len(self.inputs) != len(self.losses):
            got = type(self.inputs).__name__ if not isinstance(self.inputs, torch.Tensor) else f"{len(self.inputs)} rows"
            raise TypeError(
                f"plot_top_losses draws the inputs, which must be one tensor with a row per sample; got {got}. "
                "Models with several inputs: build ClassificationInterpretation(inputs=<the one to draw>, ...)."
            )
        top = self.top_losses(k)
        n_cols = math.ceil(math.sqrt(len(top.indices)))
        n_rows = math.ceil(len(top.indices) / n_cols)
        fig = new_figure(figsize=(3 * n_cols, 3 * n_rows + 0.4))
        fig.suptitle("predicted/actual / loss / probability of predicted")
        for panel, (loss, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            ax = fig.add_subplot(n_rows, n_cols, panel + 1)
            _draw_sample(ax, self.inputs[index])
            pred, actual = int(self.preds[index]), int(self.targs[index])
            prob = float(self.probs[index, pred])
            ax.set_title(f"{self._name(pred)}/{self._name(actual)} / {loss:.2f} / {prob:.2f}", fontsize=10)
        return finish(fig, path)


def _draw_sample(ax: Axes, sample: torch.Tensor) -> None:
    sample = sample.detach().float().cpu()
    if sample.ndim == 3 and sample.shape[0] in (1, 3):
        sample = sample[0] if sample.shape[0] == 1 else sample.permute(1, 2, 0)
    if sample.ndim == 2 or (sample.ndim == 3 and sample.shape[-1] == 3):
        low, high = sample.min(), sample.max()
        scaled = (sample - low) / (high - low) if high > low else torch.zeros_like(sample)
        ax.imshow(scaled.numpy(), cmap="gray" if sample.ndim == 2 else None, vmin=0, vmax=1)
        ax.axis("off")
    else:
        values = sample.flatten().numpy()
        if len(values) <= 16:
            ax.bar(range(len(values)), values)
        else:
            ax.plot(values)
        ax.set_xlabel("feature")


def _check_k(k: int, where: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{where}: k is how many to return, an int >= 1; got {k!r}.")


def _check_scores(scores: Any, what: str) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[1] < 2:
        got = f"shape {list(scores.shape)}" if isinstance(scores, torch.Tensor) else f"a {type(scores).__name__}"
        raise ValueError(
            f"interpretation needs class scores, one row of C >= 2 scores per sample ([N, C]); the {what} have {got}. "
            "A regression model or a single logit has no classes to confuse; for a binary classifier with one "
            "logit, output two, or build ClassificationInterpretation with probs = torch.cat([1 - p, p], dim=1)."
        )


def _check_targets(targs: Any, n_samples: int | None) -> None:
    if targs is None:
        raise ValueError(
            "interpretation needs targets, and these batches have inputs only; evaluate a labelled loader "
            "that yields (x, y) batches."
        )
    if isinstance(targs, (tuple, list)):
        raise ValueError(f"interpretation needs one target per sample, got {len(targs)} targets per batch; "
                         "evaluate a loader that yields (x, y) with y the class indices.")  # fmt: skip
    if not isinstance(targs, torch.Tensor) or targs.ndim != 1 or targs.dtype.is_floating_point or targs.is_complex() \
            or targs.dtype == torch.bool or (n_samples is not None and len(targs) != n_samples):  # fmt: skip
        got = f"{targs.dtype} of shape {list(targs.shape)}" if isinstance(targs, torch.Tensor) else type(targs).__name__
        raise ValueError(
            f"targets must be integer class indices, shape [N]{f' with N = {n_samples}' if n_samples else ''}; "
            f"got {got}. For one-hot or probability targets, pass targs.argmax(1) (as a long tensor)."
        )


class _CheckClassification(Callback):
    """Stop `from_learner`'s evaluation at the first batch whose outputs or targets can't be interpreted.

    Events: after_pred. Reads: pred, yb. Writes on the learner: nothing. Publishes: nothing.
    order = 0. Shapes and dtypes only: no host sync.
    """

    name = "interpretation_check"

    def after_pred(self) -> None:
        _check_scores(self.learn.pred, "model's outputs")
        yb = self.learn.yb
        _check_targets(yb[0] if len(yb) == 1 else (yb or None), len(self.learn.pred))
