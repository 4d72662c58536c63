"""`preserve_state`: put a learner back as it was after a fit run for its side effects (the LR finder's sweep)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .checkpoint import rng_state, set_rng_state

if TYPE_CHECKING:
    from loopkit import Learner

_LOOP_STATE = ("n_epochs", "start_epoch", "epoch", "training", "dl", "iter", "n_iter", "train_iter",
               "pct_train", "batch", "xb", "yb", "pred", "loss")  # fmt: skip


@contextlib.contextmanager
def preserve_state(learn: Learner) -> Iterator[Learner]:
    """Put back, when the block ends, what a fit changes besides the weights and the optimizer's state.

    That is the loop's counters (`n_epochs`, `epoch`, `train_iter`, `pct_train`,
    `batch`, `loss`, ...), the state of every callback that has a `state_dict()`
    (`Recorder`'s record, `AvgStats`' history, `EarlyStopping`'s counters), the
    RNG states the data and model draw from, and `learn.opt` itself if it did not
    exist yet. `learn.lr_find` runs its sweep inside this block; `LRFinder` puts
    back the weights and the optimizer's state. Gradients present before the block
    are put back too (a fit leaves none of its own).
    """
    loop = {name: getattr(learn, name) for name in _LOOP_STATE}
    opt = learn.opt
    # The fit clears every gradient when it ends; gradients from before the sweep come back.
    grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in learn.model.parameters()]
    states = [(cb, copy.deepcopy(cb.state_dict())) for cb in learn.cbs if callable(getattr(cb, "state_dict", None))]
    rng = rng_state(learn)
    try:
        yield learn
    finally:
        for name, value in loop.items():
            setattr(learn, name, value)
        for param, grad in grads:
            param.grad = grad
        if opt is None:
            learn.opt = None  # type: ignore[assignment]  # the next fit makes a fresh one, as it would have
        for cb, state in states:
            cb.load_state_dict(state)
        set_rng_state(learn, rng)
