"""Checkpoints: save and load a learner exactly, resume a fit, keep the best model.

A checkpoint is one file written by `torch.save` holding only plain data
(tensors, numbers, strings, lists, tuples and dicts), so it loads with
`torch.load(..., weights_only=True)` and opening one cannot run code:

    format, version     "loopkit-checkpoint", 1
    model               the plain module's state_dict (never DDP-prefixed keys)
    opt                 the optimizer's state_dict, or None
    epoch, n_epochs     the position: the epoch just finished, of how many
    train_iter          training batches completed in that fit
    callbacks           {callback name: its state_dict()} for callbacks that have one
    rng                 python, numpy, torch (and CUDA) RNG states, and the states of
                        the generators the loaders shuffle with
    rng_ranks           under distributed training, every rank's `rng`, by rank

Files are written to a temporary name beside the target and renamed over it, so a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from loopkit import Callback

from ._dist import is_main_process
from ._monitor import Monitor

if TYPE_CHECKING:
    from loopkit import Learner

FORMAT, VERSION = "loopkit-checkpoint", 1


def plain_model(model: nn.Module) -> nn.Module:
    """Return `model` without a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _loader_generators(learn: Learner) -> list[torch.Generator]:
    # Shuffling loaders draw from their own generator when given one; its state is part of
    # "where the fit is", so an exactly resumed fit shuffles the next epoch the same way.
    found: dict[int, torch.Generator] = {}
    for dl in (learn.train_dl, learn.valid_dl):
        for owner in (dl, getattr(dl, "sampler", None), getattr(dl, "batch_sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator):
                found.setdefault(id(gen), gen)
    return list(found.values())


def rng_state(learn: Learner) -> dict[str, Any]:
    """Return every RNG state that the next epoch draws from, as plain data."""
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]  # the legacy tuple form
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "loaders": [gen.get_state() for gen in _loader_generators(learn)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(learn: Learner, state: dict[str, Any]) -> None:
    """Restore the RNG states saved by `rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generators = _loader_generators(learn)
    if len(generators) == len(state["loaders"]):
        for gen, gen_state in zip(generators, state["loaders"]):
            gen.set_state(gen_state)
    else:
        warnings.warn(
            f"the checkpoint has {len(state['loaders'])} loader generator state(s) but the loaders have "
            f"{len(generators)}; shuffling will not continue exactly. Build the loaders as in the saved run.",
            stacklevel=3,
        )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(learn: Learner, path: str | Path) -> Path:
    """Write `learn`'s full state to `path` atomically; return the path.

    Under distributed training call it on every rank: the ranks' RNG states are
    gathered (each rank resumes with its own dropout stream), rank 0 writes, and
    every rank returns only once the file is complete, so any rank may read it next.
    """
    path = Path(path)
    rng = rng_state(learn)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rng_ranks: list[Any] | None = None
    if distributed:
        rng_ranks = [None] * dist.get_world_size()
        dist.all_gather_object(rng_ranks, rng)
    if is_main_process():
        state = {
            "format": FORMAT,
            "version": VERSION,
            "model": plain_model(learn.model).state_dict(),
            "opt": learn.opt.state_dict() if learn.opt is not None else None,
            "epoch": learn.epoch,
            "n_epochs": learn.n_epochs,
            "train_iter": learn.train_iter,
            "callbacks": {cb.cb_name: cb.state_dict() for cb in learn.cbs if callable(getattr(cb, "state_dict", None))},
            "rng": rng,
        }
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        _write_atomically(state, path)
    if distributed:
        dist.barrier()
    return path


def _write_atomically(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(learn: Learner, path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint against `learn`'s model without changing anything.

    Raises `FileNotFoundError`, a `ValueError` naming what is wrong with the file
    (not plain data, not a loopkit checkpoint), or a `ValueError` listing the
    missing and unexpected keys and the shape mismatches against the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; write one with learn.save(path) or SaveModel.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is damaged (truncated?) or not a torch file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), "")
        raise ValueError(
            f"refusing to load {str(path)!r}: it contains pickled objects that are not plain data "
            f"({refused or 'see the cause above'}), and unpickling them could run code. loopkit checkpoints hold "
            "only tensors and plain values; if you trust this file, open it with torch.load(weights_only=False)."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is damaged or not a torch file ({err}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a loopkit checkpoint (no 'format': {FORMAT!r}); "
            "for a bare state_dict use model.load_state_dict(torch.load(path, weights_only=True))."
        )
    _check_model_keys(plain_model(learn.model), state["model"], path)
    return state


def _check_model_keys(model: nn.Module, saved: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(saved)) if saved[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches [{'; '.join(shapes)}]" if shapes else ""]  # fmt: skip
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this model: {', '.join(p for p in parts if p)}. "
            "Build the same architecture as the run that saved it."
        )


def apply_checkpoint(learn: Learner, state: dict[str, Any], with_opt: bool = True) -> None:
    """Load a checked checkpoint into `learn`: model, optimizer, callbacks, RNG and position."""
    plain_model(learn.model).load_state_dict(state["model"])
    if with_opt and state["opt"] is not None:
        if learn.opt is None:
            learn.opt = learn.opt_func(learn.model.parameters(), lr=learn.lr)
        learn.opt.load_state_dict(state["opt"])
    for name, cb_state in state["callbacks"].items():
        cb = getattr(learn, name, None)
        if isinstance(cb, Callback) and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(cb_state)
    rng = state["rng"]
    if "rng_ranks" in state and dist.is_available() and dist.is_initialized():
        if len(state["rng_ranks"]) == dist.get_world_size():
            rng = state["rng_ranks"][dist.get_rank()]
    set_rng_state(learn, rng)
    learn.epoch, learn.train_iter = state["epoch"], state["train_iter"]


class SaveModel(Callback):
    """Save a full checkpoint when the monitored figure improves (and optionally every epoch).

    Events: before_fit, after_epoch, after_fit.
    Reads: epoch, and `learn.avg_stats.history` (the epoch's row).
    Writes on the learner: nothing (at `after_fit`, with `restore_best`, the model's weights).
    Publishes: `best` (the best value so far), `best_epoch`, `path`.
    order = 90: after every other `after_epoch` (AvgStats, loggers, EarlyStopping),
    so the checkpoint holds their state for this epoch and resumes exactly.

    `monitor` is a column of the history (`valid_loss`, `train_loss`, a metric name);
    `mode` is "min" or "max". The best checkpoint is written to `path`; with
    `every_epoch` also to `<stem>_epoch<N><suffix>` beside it. Checkpoints are
    full `learn.save` files: `learn.fit(n_epochs, resume=path)` continues from one.
    """

    order = 90

    def __init__(self, monitor: str = "valid_loss", mode: str = "min", every_epoch: bool = False,
                 path: str | Path = "models/best.pt", min_delta: float = 0.0, restore_best: bool = False) -> None:
        self.monitor = Monitor(monitor, mode, min_delta)
        self.every_epoch, self.path, self.restore_best = every_epoch, Path(path), restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to save
            return
        self.monitor.check(self.learn)
        self.best, self.best_epoch = None, None

    def after_epoch(self) -> None:
        value = self.monitor.read(self.learn)
        improved = self.monitor.improved(value, self.best)
        if improved:  # update first, so the checkpoints below hold this epoch's best
            self.best, self.best_epoch = value, self.epoch
        if self.every_epoch:
            self.learn.save(self.path.with_name(f"{self.path.stem}_epoch{self.epoch}{self.path.suffix}"))
        if improved:
            self.learn.save(self.path)

    def after_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to restore
            return
        if self.restore_best and self.best_epoch is not None and self.path.is_file():
            state = read_checkpoint(self.learn, self.path)
            plain_model(self.model).load_state_dict(state["model"])

    def state_dict(self) -> dict[str, Any]:
        """Return the best value and epoch, for exact resume."""
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.best, self.best_epoch = state["best"], state["best_epoch"]
