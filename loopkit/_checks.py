"""Argument checks and error messages for the learner: leaf work that fires no event."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .events import CancelException, CancelFit

Batch = tuple[Any, ...] | list[Any]


def split_dls(dls: Any) -> tuple[Iterable[Batch], Iterable[Batch] | None]:
    """Return `(train, valid)` from a pair or an object with `.train` and `.valid`; raise if it is neither."""
    if hasattr(dls, "train") and hasattr(dls, "valid"):
        train, valid = dls.train, dls.valid
    elif isinstance(dls, (tuple, list)) and len(dls) == 2 and not all(map(looks_like_batch, dls)):
        train, valid = dls
    else:
        raise TypeError(
            f"dls must be a pair (train, valid) or have .train and .valid, got {type(dls).__name__}; "
            "to train without validation pass (train_dl, None)."
        )
    for role, dl in (("train", train), ("valid", valid)):
        if dl is not None and not isinstance(dl, Iterable):
            raise TypeError(f"the {role} loader must be an iterable of batches, got {type(dl).__name__}.")
    if train is None:
        raise TypeError("the train loader is None; fit needs training batches.")
    return train, valid


def check_eval_loader(dl: Any, name: str) -> None:
    """Raise unless `dl` is one loader an evaluation can iterate (not a pair, a tensor, an iterator...)."""
    if hasattr(dl, "train") and hasattr(dl, "valid"):
        raise TypeError(f"{name} evaluates one loader, got a pair of loaders ({type(dl).__name__}); pass dls.valid.")
    if not isinstance(dl, Iterable) or isinstance(dl, (torch.Tensor, str)):
        raise TypeError(
            f"{name}(dl=...) takes a loader (an iterable of batches, such as a DataLoader), got "
            f"{type(dl).__name__}; for one batch of inputs use learn.predict(x)."
        )
    check_loader(dl, "evaluated")


def length(dl: Any) -> int | None:
    """Return `len(dl)`, or `None` when the loader has no length."""
    # A DataLoader over an IterableDataset has __len__ but raises TypeError from it.
    try:
        return len(dl)
    except TypeError:
        return None


def check_lr(lr: Any, what: str) -> None:
    """Raise unless `lr` is a finite real number >= 0."""
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not (float(lr) >= 0 and math.isfinite(lr)):
        raise ValueError(f"{what} must be a finite number >= 0, got {lr!r}; e.g. 1e-3 (find one with learn.lr_find()).")


def check_loader(dl: Any, role: str) -> None:
    """Raise if `dl` is a one-shot iterator or has length 0."""
    if isinstance(dl, Iterator):
        raise TypeError(
            f"the {role} loader is a one-shot iterator ({type(dl).__name__}), which would be empty after its "
            "first pass; pass something iterable again and again, such as a list of batches or a DataLoader."
        )
    if length(dl) == 0:
        raise ValueError(empty_error(role))


def empty_error(role: str) -> str:
    return (
        f"the {role} loader yields no batches; give it data (with drop_last=True, a dataset smaller "
        "than one batch yields none: use a smaller batch_size or drop_last=False)."
    )


def looks_like_batch(item: Any) -> bool:
    # Two batches passed as dls would otherwise read as (train, valid).
    return isinstance(item, (tuple, list)) and len(item) > 0 and isinstance(item[0], torch.Tensor)


def loss_error(loss: Any) -> str:
    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
    return (
        f"loss_func must return a scalar tensor, got {shape}; reduce it (e.g. reduction='mean') "
        "so backward and the averaged statistics are defined."
    )


def note_misplaced_cancel(err: BaseException) -> None:
    if isinstance(err, CancelException) and not isinstance(err, CancelFit):
        err.add_note(
            f"{type(err).__name__} cancels the {err.stage!r} stage and was raised outside it, so it is an "
            "error, not a cancel; see the cancel table in the docs ('the loop and its events')."
        )
