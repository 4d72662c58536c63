"""Checkpoints: save and load a learner exactly, resume a fit, keep the best model.

A checkpoint is one file written by `torch.save` holding only plain data
(tensors, numbers, strings, lists, tuples and dicts), so it loads with
`torch.load(..., weights_only=True)` and opening one cannot run code:

    format, version     "loopkit-checkpoint", 3 (version 1 had no opt_class, 2 no batch)
    model               the plain module's state_dict (never DDP-prefixed keys)
    opt                 the optimizer's state_dict, or None
    opt_class           the optimizer's class name (e.g. "AdamW"), or None
    epoch, n_epochs     the position: the epoch just finished (or, mid-epoch, the
                        current one), of how many
    batch               0 at an epoch's end; mid-epoch, the training batches of
                        `epoch` done (a resumed fit continues with batch `batch`)
    train_iter          training batches completed in that fit
    callbacks           {callback name: its state_dict()} for callbacks that have one
    rng                 python, numpy, torch (and CUDA) RNG states, and the states of
                        the generators the loaders shuffle with
    phase_rng, loader   mid-epoch only (else None): the RNG states at the start of the
                        epoch's training phase, which its order was drawn from, and the
                        train loader's `n_batches`, `batch_size`, `n_samples`, `world_size`
    rng_ranks           under distributed training, every rank's `rng`, by rank (and
    phase_rng_ranks     its `phase_rng`, mid-epoch)

Files are written to a temporary name beside the target (`.<name>.tmp`) and renamed
over it, so a crash mid-write leaves the previous checkpoint intact. Reading checks the
whole file against the learner before anything is changed (`read_checkpoint`).
"""

from __future__ import annotations

import copy
import glob
import math
import numbers
import os
import pickle
import random
import time
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import RandomSampler

from loopkit import Callback

from ._dist import is_main_process
from ._monitor import Monitor

if TYPE_CHECKING:
    from loopkit import Learner

FORMAT, VERSION = "loopkit-checkpoint", 3
VERSIONS = (1, 2, 3)  # version 2 added "opt_class"; 3 "batch", "phase_rng" and "loader" (mid-epoch positions)


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


def _shuffles(learn: Learner) -> bool:
    # A learner built only to predict has loaders that don't shuffle (or none worth the
    # name): the saved loader states have nothing to restore there, and that's fine.
    loaders = (learn.train_dl, learn.valid_dl)
    samplers = [getattr(dl, "sampler", None) for dl in loaders]
    samplers += [getattr(getattr(dl, "batch_sampler", None), "sampler", None) for dl in loaders]
    return any(isinstance(s, RandomSampler) for s in samplers) or bool(_loader_generators(learn))


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


def set_rng_state(learn: Learner, state: dict[str, Any], warn: bool = True) -> None:
    """Restore the RNG states saved by `rng_state` (`warn`: when the loaders' generators don't match)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generators = _loader_generators(learn)
    if len(generators) == len(state["loaders"]):
        for gen, gen_state in zip(generators, state["loaders"]):
            gen.set_state(gen_state)
    elif warn and _shuffles(learn):
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
    # Written while a training phase runs (from a training batch's after_batch, as SaveModel and
    # Preemption do), the checkpoint is mid-epoch: it records the batches of the epoch done.
    phase = getattr(learn, "_train_phase", None)
    batch = learn.train_iter - phase.train_iter if phase is not None and phase.open and not learn.evaluating else 0
    phase_rng = phase.rng if phase is not None and batch > 0 else None
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    ranks: list[Any] | None = None
    if distributed:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, (rng, phase_rng))
    if is_main_process():
        from ._position import loader_info

        state = {
            "format": FORMAT,
            "version": VERSION,
            "model": plain_model(learn.model).state_dict(),
            "opt": learn.opt.state_dict() if learn.opt is not None else None,
            "opt_class": _opt_class(learn.opt) if learn.opt is not None else None,
            "epoch": learn.epoch,
            "n_epochs": learn.n_epochs,
            "batch": batch,
            "train_iter": learn.train_iter,
            "callbacks": {cb.cb_name: cb.state_dict() for cb in learn.cbs if callable(getattr(cb, "state_dict", None))},
            "rng": rng,
            "phase_rng": phase_rng,
            "loader": loader_info(learn) if batch > 0 else None,
        }
        if ranks is not None:
            state["rng_ranks"] = [r for r, _ in ranks]
            if batch > 0:
                state["phase_rng_ranks"] = [p for _, p in ranks]
        _write_atomically(state, path)
    if distributed:
        dist.barrier()
    return path


def _write_atomically(state: dict[str, Any], path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"cannot save a checkpoint to {str(path)!r}: it is a directory; give a file path such as "
                         f"{str(path / 'best.pt')!r}.")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    # One fixed temporary name per target: a save killed mid-write leaves at most one behind,
    # and the next save of the same checkpoint reuses (and so removes) it.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # never write through a stale file (or a link someone left there)
        with open(tmp, "xb") as file:  # like any new file: mode 0o666 less the umask (mkstemp gave 0o600)
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        interrupt = _interrupt_behind(err)
        if interrupt is not None:
            raise interrupt from None
        raise
    # Temporary files of older loopkit versions had random names (`.best.pt.k3j9x_2a.tmp`).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        stale.unlink(missing_ok=True)


def _interrupt_behind(err: BaseException) -> BaseException | None:
    # Ctrl-C inside torch.save's file writes surfaces as torch's "[enforce fail ...] unexpected
    # pos" RuntimeError, with the KeyboardInterrupt only as its context: find it, so the user
    # who pressed Ctrl-C gets a KeyboardInterrupt.
    if not isinstance(err, Exception):
        return None
    seen: set[int] = set()
    context = err.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, (KeyboardInterrupt, SystemExit)):
            return context
        seen.add(id(context))
        context = context.__context__
    return None


class _Checkpoint(dict[str, Any]):
    """A checkpoint's contents as `read_checkpoint` checked them, with the file they came from."""

    path: Path
    checked_opt: Any = None  # the optimizer the "opt" entry was checked against
    start: tuple[int, int] = (0, 0)  # where a fit resumed from it starts: (start_epoch, start_iter)


def read_checkpoint(learn: Learner, path: str | Path, with_opt: bool = True) -> _Checkpoint:
    """Read a checkpoint and check all of it against `learn`, without changing anything.

    Everything `apply_checkpoint` will use is checked here: the layout of the file, the
    model's keys and shapes, the position, the callbacks' entries, every RNG state, and
    (with `with_opt`, when `learn` has an optimizer) that the optimizer state fits it:
    same optimizer class, same number of param groups with the same number of
    parameters, per-parameter state of the parameters' shapes.

    Raises `FileNotFoundError`, or a `ValueError` naming the file and what is wrong with
    it: damaged or not a torch file, not plain data, not a loopkit checkpoint, an entry
    missing or malformed, the missing and unexpected keys and shape mismatches against
    the model, or an optimizer state that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a directory, not a checkpoint; "
                             "give the path of a file learn.save wrote.")
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; write one with learn.save(path) or SaveModel.")
    state = _Checkpoint(_load_file(path))
    state.path = path
    _check_layout(state, path)
    _check_model_keys(plain_model(learn.model), state["model"], path)
    if with_opt and state["opt"] is not None and learn.opt is not None:
        _check_opt(learn.opt, state["opt"], state.get("opt_class"), path)
        state.checked_opt = learn.opt
    _try_callback_states(learn, state["callbacks"], path)
    return state


def _try_callback_states(learn: Learner, states: dict[str, dict[str, Any]], path: Path) -> None:
    # Each callback loads its state into a copy of itself (sharing the learner, model,
    # optimizer and loaders, never copying them), so a state it can't take is refused now,
    # before a fit starts. apply_checkpoint still puts callbacks back if a real load fails.
    shared = [learn, learn.model, plain_model(learn.model), learn.opt, learn.dls, learn.train_dl, learn.valid_dl]
    for name, cb_state in states.items():
        cb = getattr(learn, name, None)
        if not isinstance(cb, Callback) or not callable(getattr(cb, "load_state_dict", None)):
            continue
        try:
            trial = copy.deepcopy(cb, {id(obj): obj for obj in shared})
        except Exception:
            continue  # holds something that can't be copied; apply_checkpoint's rollback covers it
        try:
            trial.load_state_dict(copy.deepcopy(cb_state))
        except Exception as err:
            raise _cannot_restore(path, cb, err) from err


def _cannot_restore(path: Path, cb: Callback, err: Exception) -> ValueError:
    return _refuse(path, f"{type(cb).__name__} could not restore its state from it ({type(err).__name__}: {err})")


def _load_file(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is damaged (truncated?) or not a torch file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file can make torch warn about its protocol before failing
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names what it refused: "Unsupported global: GLOBAL x.y" is an object that is not
        # plain data; anything else ("Unsupported operand 152") is a damaged pickle.
        unsupported = [line.strip() for line in str(err).splitlines() if "Unsupported" in line]
        if not any("Unsupported global" in line for line in unsupported):
            detail = unsupported[0] if unsupported else type(err).__name__
            raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is damaged ({detail}).") from err
        raise ValueError(
            f"refusing to load {str(path)!r}: it contains pickled objects that are not plain data "
            f"({unsupported[0]}), and unpickling them could run code. loopkit checkpoints hold "
            "only tensors and plain values; if you trust this file, open it with torch.load(weights_only=False)."
        ) from err
    except Exception as err:  # a damaged file fails in many ways: RuntimeError, EOFError, OverflowError, KeyError...
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: the file is damaged or not a torch file "
            f"({type(err).__name__}: {err})."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a loopkit checkpoint (no 'format': {FORMAT!r}); "
            "for a bare state_dict use model.load_state_dict(torch.load(path, weights_only=True))."
        )
    return state


def _refuse(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"cannot load checkpoint {str(path)!r}: {problem}. The file is damaged or was not written by learn.save; "
        "nothing was changed."
    )


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_layout(state: dict[str, Any], path: Path) -> None:
    missing = [key for key in ("version", "model", "opt", "epoch", "n_epochs", "train_iter", "callbacks", "rng")
               if key not in state]  # fmt: skip
    if missing:
        raise _refuse(path, f"it has no {missing} entr{'y' if len(missing) == 1 else 'ies'}")
    if state["version"] not in VERSIONS:
        raise ValueError(
            f"cannot load checkpoint {str(path)!r}: it is version {state['version']!r} of the format and this "
            f"loopkit reads versions {list(VERSIONS)}; upgrade loopkit to read it."
        )
    model = state["model"]
    if not (isinstance(model, dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):  # fmt: skip
        raise _refuse(path, "its 'model' entry is not a state_dict (names to tensors)")
    if not (_is_int(state["epoch"]) and _is_int(state["n_epochs"]) and _is_int(state["train_iter"])):
        raise _refuse(path, f"its position is not counts (epoch {state['epoch']!r}, n_epochs {state['n_epochs']!r}, "
                            f"train_iter {state['train_iter']!r})")  # fmt: skip
    opt = state["opt"]
    if opt is not None and not (
        isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])
    ):  # fmt: skip
        raise _refuse(path, "its 'opt' entry is not an optimizer state_dict ('state' and 'param_groups')")
    if state["version"] >= 2 and opt is not None and not isinstance(state.get("opt_class"), str):
        raise _refuse(path, "it has an optimizer state but no 'opt_class' naming the optimizer")
    callbacks = state["callbacks"]
    if not (isinstance(callbacks, dict)
            and all(isinstance(k, str) and isinstance(v, dict) for k, v in callbacks.items())):  # fmt: skip
        raise _refuse(path, "its 'callbacks' entry is not a dict of callback names to their state_dict()")
    _check_rng(state["rng"], path, "rng")
    for entry in ("rng_ranks", "phase_rng_ranks"):
        if entry in state:
            if not isinstance(state[entry], list):
                raise _refuse(path, f"its {entry!r} entry is not a list of RNG states by rank")
            for rank, rng in enumerate(state[entry]):
                _check_rng(rng, path, f"{entry}[{rank}]")
    _check_position(state, path)


def _check_position(state: dict[str, Any], path: Path) -> None:
    if state["version"] < 3:
        state.update(batch=0, phase_rng=None, loader=None)  # older files hold epoch ends only
    missing = [key for key in ("batch", "phase_rng", "loader") if key not in state]
    if missing:
        raise _refuse(path, f"it has no {missing} entr{'y' if len(missing) == 1 else 'ies'}")
    if not _is_int(state["batch"]):
        raise _refuse(path, f"its 'batch' entry is not a count of batches (got {state['batch']!r})")
    if state["batch"] == 0:
        return
    _check_rng(state["phase_rng"], path, "phase_rng")
    loader = state["loader"]
    keys = ("n_batches", "batch_size", "n_samples", "world_size")
    if not (isinstance(loader, dict) and set(loader) == set(keys)
            and all(loader[k] is None or _is_int(loader[k]) for k in keys) and _is_int(loader["world_size"], 1)):  # fmt: skip
        raise _refuse(path, f"its 'loader' entry does not describe the train loader ({loader!r:.80})")


def _check_rng(rng: Any, path: Path, entry: str) -> None:
    # Each state is tried on a fresh generator of its kind, so whatever the real one would
    # refuse at apply time is refused now, and no global RNG is touched.
    if not isinstance(rng, dict) or not {"python", "numpy", "torch", "loaders"} <= set(rng):
        raise _refuse(path, f"its {entry!r} entry does not hold the python, numpy, torch and loader RNG states")
    try:
        random.Random().setstate(rng["python"])
        name, keys, *rest = rng["numpy"]
        if not (isinstance(keys, torch.Tensor) and keys.dtype == torch.int64 and keys.shape == (624,)
                and bool(((keys >= 0) & (keys < 2**32)).all())):  # fmt: skip
            raise ValueError(f"the numpy key is not 624 uint32 values (got {keys!r:.60})")
        np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), *rest))
        _check_generator_state(rng["torch"])
        if not isinstance(rng["loaders"], list):
            raise ValueError("the loaders' states are not a list")
        for gen_state in rng["loaders"]:
            _check_generator_state(gen_state)
        cuda = rng.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
            raise ValueError("the CUDA states are not a list of byte tensors")
    except Exception as err:
        raise _refuse(path, f"its {entry!r} entry holds an invalid RNG state ({type(err).__name__}: {err})") from err


def _check_generator_state(gen_state: Any) -> None:
    if not isinstance(gen_state, torch.Tensor) or gen_state.dtype != torch.uint8 or gen_state.ndim != 1:
        raise ValueError(f"a torch generator state is a 1-d uint8 tensor, got {gen_state!r:.60}")
    torch.Generator().set_state(gen_state)


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


def _opt_class(opt: Any) -> str:
    return type(opt).__qualname__


def _check_opt(opt: Any, saved: dict[str, Any], saved_class: str | None, path: Path) -> None:
    """Raise a `ValueError` unless `opt.load_state_dict(saved)` gives a working optimizer."""
    fix = ("Build the optimizer as in the run that saved it, or load the weights alone with "
           "learn.load(path, with_opt=False).")
    if saved_class is not None and saved_class != _opt_class(opt):
        raise ValueError(f"checkpoint {str(path)!r} holds the state of a {saved_class} optimizer but this learner's "
                         f"is a {_opt_class(opt)}. {fix}")  # fmt: skip
    groups, saved_groups = opt.param_groups, saved["param_groups"]
    counts, saved_counts = [len(g["params"]) for g in groups], [len(s["params"]) for s in saved_groups]
    if counts != saved_counts:
        raise ValueError(
            f"checkpoint {str(path)!r} has an optimizer with {len(saved_counts)} param group(s) of "
            f"{saved_counts} parameters, but this learner's has {len(counts)} of {counts}. {fix}"
        )
    ids = [i for s in saved_groups for i in s["params"]]
    if len(set(ids)) != len(ids) or not set(saved["state"]) <= set(ids):
        raise _refuse(path, "its optimizer state refers to parameters that are not in its param groups")
    if not isinstance(opt, torch.optim.Optimizer):
        return  # a home-made optimizer: nothing more is known about its state
    # Load into a probe that shares nothing mutable with `opt`, so torch itself tells
    # whether the state loads, and fills in the defaults of keys older files lack.
    probe = type(opt).__new__(type(opt))
    probe.__setstate__({"defaults": dict(opt.defaults), "state": defaultdict(dict),
                        "param_groups": [dict(g) for g in groups]})  # fmt: skip
    try:
        probe.load_state_dict(saved)
    except Exception as err:
        raise _refuse(path, f"its optimizer state does not load ({type(err).__name__}: {err})") from err
    for group, loaded in zip(groups, probe.param_groups):
        for key in opt.defaults:  # the hyper-parameters step reads (not e.g. a scheduler's initial_lr)
            value = group.get(key)
            if not _same_kind(value, loaded.get(key, _MISSING)):
                raise ValueError(
                    f"checkpoint {str(path)!r} has an optimizer whose param groups have {key!r} = "
                    f"{loaded.get(key, 'nothing')!r}, but this learner's {type(opt).__name__} uses {value!r}. {fix}"
                )
    for param, param_state in probe.state.items():
        for key, value in param_state.items():
            live = opt.state.get(param, {}).get(key)
            if isinstance(value, torch.Tensor) and value.ndim > 0 and not _fits(value, param, live):
                raise ValueError(
                    f"checkpoint {str(path)!r} has optimizer state {key!r} of shape {tuple(value.shape)} for a "
                    f"parameter of shape {tuple(param.shape)}: its param groups hold the parameters in another "
                    f"order. {fix}"
                )


_MISSING = object()


def _same_kind(value: Any, loaded: Any) -> bool:
    # The hyper-parameters `step` reads must keep their type: a number stays a number
    # (or a tensor), a tuple of betas a tuple of as many numbers, a flag a flag.
    if loaded is _MISSING:
        return False
    if value is None or isinstance(value, str):
        return loaded is None or isinstance(loaded, (str, bool))
    if isinstance(value, bool):
        return isinstance(loaded, bool)
    if isinstance(value, (numbers.Real, torch.Tensor)):
        return isinstance(loaded, (numbers.Real, torch.Tensor)) and not isinstance(loaded, bool)
    if isinstance(value, (tuple, list)):
        return (isinstance(loaded, (tuple, list)) and len(loaded) == len(value)
                and all(_same_kind(v, w) for v, w in zip(value, loaded)))  # fmt: skip
    return True


def _fits(value: torch.Tensor, param: torch.Tensor, live: Any) -> bool:
    if isinstance(live, torch.Tensor):
        return value.shape == live.shape
    # Per-parameter buffers have the parameter's shape, or a factored form of it with
    # some sizes 1 (Adafactor's row and column variances).
    return value.ndim == param.ndim and all(v in (p, 1) for v, p in zip(value.shape, param.shape))


def apply_checkpoint(learn: Learner, state: dict[str, Any], with_opt: bool = True, resume: bool = False) -> None:
    """Load a checkpoint that `read_checkpoint` checked into `learn`: model, optimizer, callbacks, RNG, position.

    A callback whose state the learner lacks is skipped, with a warning when
    `resume` (a resumed fit would not continue it). If a callback fails to
    restore its state, every callback is put back as it was and a `ValueError` is
    raised before anything else changes.
    """
    path = getattr(state, "path", Path("<checkpoint>"))
    model = plain_model(learn.model)
    _check_model_keys(model, state["model"], path)  # again: callbacks may have changed the model since the read
    opt = None
    if with_opt and state["opt"] is not None:
        opt = learn.opt if learn.opt is not None else learn.opt_func(learn.model.parameters(), lr=learn.lr)
        if getattr(state, "checked_opt", None) is not opt:
            _check_opt(opt, state["opt"], state.get("opt_class"), path)
    _load_callbacks(learn, state["callbacks"], path, warn_dropped=resume)
    # Nothing below can fail: the file was checked whole.
    model.load_state_dict(state["model"])
    if opt is not None:
        learn.opt = opt
        opt.load_state_dict(state["opt"])
    rng, phase_rng = state["rng"], state["phase_rng"]
    if "rng_ranks" in state and dist.is_available() and dist.is_initialized():
        if len(state["rng_ranks"]) == dist.get_world_size():
            rng = state["rng_ranks"][dist.get_rank()]
            phase_rng = state["phase_rng_ranks"][dist.get_rank()] if "phase_rng_ranks" in state else phase_rng
    set_rng_state(learn, rng)
    learn.epoch, learn.train_iter = state["epoch"], state["train_iter"]
    if resume and state["batch"]:
        from ._position import TrainPhase

        # The resumed epoch's phase: its order is drawn again from phase_rng, then rng is set again.
        phase = learn._train_phase = TrainPhase(state["epoch"], state["train_iter"] - state["batch"], phase_rng)
        phase.resume_rng = rng


def read_resume(learn: Learner, path: str | Path, n_epochs: int) -> _Checkpoint:
    """Read and check a checkpoint for `fit(n_epochs, resume=path)`; its `start` is `(start_epoch, start_iter)`.

    On top of `read_checkpoint`'s checks: a `ValueError` when the checkpoint leaves
    nothing to do in `n_epochs` epochs, and, for a mid-epoch checkpoint, when the train
    loader has another batch size, number of samples or of batches (or the run another
    number of processes), since the saved position would point elsewhere in the epoch.
    Warns when `n_epochs` differs from the saved fit's.
    """
    checkpoint = read_checkpoint(learn, path)
    epoch, batch, name = checkpoint["epoch"], checkpoint["batch"], str(path)
    if batch == 0 and epoch + 1 >= n_epochs:
        raise ValueError(
            f"{name!r} was saved at the end of epoch {epoch} (zero-based), so a fit of "
            f"{n_epochs} epochs has nothing left to do; pass the n_epochs of the original fit or more."
        )
    if batch and epoch >= n_epochs:
        raise ValueError(f"{name!r} was saved in epoch {epoch} (zero-based, after batch {batch}), which a fit of "
                         f"{n_epochs} epochs does not have; pass the n_epochs of the original fit.")  # fmt: skip
    if batch:
        _check_loader(learn, checkpoint["loader"], name)
    if checkpoint["n_epochs"] != n_epochs:
        warnings.warn(
            f"resuming a fit of {checkpoint['n_epochs']} epochs as one of {n_epochs}: schedules that follow "
            "pct_train will not continue exactly; pass the original n_epochs to resume exactly.",
            stacklevel=4,
        )
    checkpoint.start = (epoch, batch) if batch else (epoch + 1, 0)
    return checkpoint


def _check_loader(learn: Learner, saved: dict[str, Any], name: str) -> None:
    from ._position import loader_info

    now = loader_info(learn)
    distributed = getattr(learn, "distributed", None)
    if distributed is not None:  # the loaders are sharded at before_fit, after this check
        now["world_size"] = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if now["world_size"] != 1 or saved["world_size"] != 1:
        now["n_batches"] = saved["n_batches"]  # a shard's batches follow from the sizes and processes compared here
    what = {"world_size": "processes", "batch_size": "batch size", "n_samples": "samples", "n_batches": "batches"}
    wrong = [f"{what[key]} {saved[key]} then, {now[key]} now" for key in what
             if saved[key] is not None and now[key] is not None and saved[key] != now[key]]  # fmt: skip
    if wrong:
        raise ValueError(
            f"cannot resume from {name!r}: it was saved mid-epoch, and the train loader differs from the saved run's "
            f"({'; '.join(wrong)}), so the saved position would point elsewhere in the epoch. Build the train loader "
            "as in the saved run, or resume from a checkpoint written at an epoch's end. Nothing was changed."
        )


def _load_callbacks(learn: Learner, states: dict[str, dict[str, Any]], path: Path, warn_dropped: bool) -> None:
    loaded: list[tuple[Callback, dict[str, Any]]] = []
    dropped = []
    for name, cb_state in states.items():
        cb = getattr(learn, name, None)
        if not isinstance(cb, Callback) or not callable(getattr(cb, "load_state_dict", None)):
            dropped.append(name)
            continue
        before = copy.deepcopy(cb.state_dict())
        loaded.append((cb, before))
        try:
            cb.load_state_dict(copy.deepcopy(cb_state))
        except Exception as err:
            for done, done_before in reversed(loaded):
                done.load_state_dict(done_before)
            raise _cannot_restore(path, cb, err) from err
    if dropped and warn_dropped:
        warnings.warn(
            f"checkpoint {str(path)!r} holds the state of callback(s) {dropped} that this learner lacks; that state "
            "is dropped. Add the same callbacks as the run that saved it to continue it exactly.",
            stacklevel=4,
        )


class SaveModel(Callback):
    """Save full checkpoints: at the best monitored figure, and periodically (epochs, batches, seconds).

    Events: before_fit, after_batch, after_epoch, after_fit.
    Reads: epoch, iter, training, train_iter, evaluating, and `learn.avg_stats.history`
    (the epoch's row).
    Writes on the learner: nothing (at `after_fit`, with `restore_best`, the model's weights).
    Publishes: `best` (the best value so far), `best_epoch`, `path`, `periodic` (the
    periodic checkpoints kept, oldest first), `top` (`(value, file name)` of the best
    `keep_best` checkpoints, best first), `last_saved` (the path of the latest checkpoint
    written in this fit, or `None`).
    order = 90: after every other `after_batch` and `after_epoch` (AvgStats, loggers,
    EarlyStopping), so the checkpoint holds their state for this batch or epoch and
    resumes exactly.

    `monitor` is a column of the history (`valid_loss`, `train_loss`, a metric name);
    `mode` is "min" or "max". The best checkpoint is written to `path`. Periodic
    checkpoints go beside it: with `every_epoch` at each epoch's end as
    `<stem>_epoch<E><suffix>`; with `every_n_batches` after every `n`-th training batch
    of the fit, and with `every_seconds` after the first training batch that ends
    `every_seconds` or more after the last periodic save (or the fit's start) by `clock` (a
    function returning seconds, `time.monotonic` by default), as
    `<stem>_epoch<E>_batch<B><suffix>`, where `B` training batches of epoch `E` are
    done. `keep_last` keeps only the last `k` periodic checkpoints, and `keep_best` also
    writes the best `k` epochs by the monitored figure as
    `<stem>_epoch<E>_<monitor>_<value><suffix>`; older files are deleted only once the
    new checkpoint is complete. Both lists are part of the checkpoint, so a resumed fit
    keeps counting. Checkpoints are full `learn.save` files: `learn.fit(n_epochs,
    resume=path)` continues from one, mid-epoch ones included. At `before_fit` (on
    rank 0) the folder of `path` is created, and a `ValueError` is raised if `path` is a
    directory or the folder can't be made or written to. Bad arguments (such as
    `every_n_batches=0`) are a `ValueError` at construction.
    """

    order = 90

    def __init__(self, monitor: str = "valid_loss", mode: str = "min", every_epoch: bool = False,
                 path: str | Path = "models/best.pt", min_delta: float = 0.0, restore_best: bool = False,
                 every_n_batches: int | None = None, every_seconds: float | None = None,
                 keep_last: int | None = None, keep_best: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.monitor = Monitor(monitor, mode, min_delta, owner="SaveModel")
        for name, value in (("every_n_batches", every_n_batches), ("keep_last", keep_last), ("keep_best", keep_best)):
            if value is not None and not _is_int(value, 1):
                raise ValueError(f"SaveModel({name}={value!r}): give an int >= 1, or None to turn it off.")
        if every_seconds is not None and not (isinstance(every_seconds, numbers.Real) and not isinstance(every_seconds, bool)
                                              and math.isfinite(every_seconds) and every_seconds > 0):  # fmt: skip
            raise ValueError(f"SaveModel(every_seconds={every_seconds!r}): give a number of seconds > 0, "
                             "e.g. 1800 for every half hour, or None to turn it off.")  # fmt: skip
        if keep_last is not None and not (every_epoch or every_n_batches or every_seconds):
            raise ValueError(f"SaveModel(keep_last={keep_last}) keeps periodic checkpoints, and none are asked for; "
                             "set every_epoch, every_n_batches or every_seconds too.")  # fmt: skip
        if not callable(clock):
            raise TypeError(f"SaveModel(clock=...) must be a function returning seconds, got {clock!r}.")
        self.every_epoch, self.path, self.restore_best = every_epoch, Path(path), restore_best
        self.every_n_batches, self.every_seconds, self.clock = every_n_batches, every_seconds, clock
        self.keep_last, self.keep_best = keep_last, keep_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.periodic: list[str] = []
        self.top: list[tuple[float, str]] = []
        self.last_saved: Path | None = None
        self._last_time = 0.0

    def before_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to save
            return
        self.monitor.check(self.learn)
        if is_main_process():
            self._check_path()
        self.best, self.best_epoch, self.periodic, self.top, self.last_saved = None, None, [], [], None
        self._last_time = self.clock()

    def _check_path(self) -> None:
        # Now, not at the first save an epoch later (which would also have written beside a directory).
        if self.path.is_dir():
            raise ValueError(f"SaveModel(path={str(self.path)!r}) is a directory; give a file path such as "
                             f"{str(self.path / 'best.pt')!r}.")  # fmt: skip
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"SaveModel(path={str(self.path)!r}) cannot create the folder {str(folder)!r} "
                             f"({err}); choose a folder you can write to.") from err  # fmt: skip
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"SaveModel(path={str(self.path)!r}): the folder {str(folder)!r} is not writable; "
                             "choose a folder you can write to.")  # fmt: skip

    def _beside(self, tail: str) -> Path:
        return self.path.with_name(f"{self.path.stem}_{tail}{self.path.suffix}")

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or not (self.every_n_batches or self.every_seconds):
            return
        due = bool(self.every_n_batches) and learn.train_iter % self.every_n_batches == 0  # type: ignore[operator]
        if self.every_seconds and not due:
            due = self.clock() - self._last_time >= self.every_seconds
        if due:
            self._save_periodic(self._beside(f"epoch{learn.epoch}_batch{learn.iter + 1}"))

    def after_epoch(self) -> None:
        value = self.monitor.read(self.learn)
        improved = self.monitor.improved(value, self.best)
        if improved:  # update first, so the checkpoints below hold this epoch's best
            self.best, self.best_epoch = value, self.epoch
        if self.every_epoch:
            self._save_periodic(self._beside(f"epoch{self.epoch}"))
        if self.keep_best and not math.isnan(value):
            self._save_top(value)
        if improved:
            self._save(self.path)

    def _save(self, path: Path, drop: Sequence[str] = ()) -> None:
        self.last_saved = self.learn.save(path)
        if is_main_process():  # only now that the new file is complete
            for name in drop:
                if name != path.name:
                    (self.path.parent / name).unlink(missing_ok=True)

    def _save_periodic(self, path: Path) -> None:
        kept = [name for name in self.periodic if name != path.name] + [path.name]
        k = len(kept) if self.keep_last is None else self.keep_last
        self.periodic, drop = kept[-k:], kept[:-k]  # set first: the checkpoint lists what it keeps
        self._save(path, drop)
        self._last_time = self.clock()

    def _save_top(self, value: float) -> None:
        name = self._beside(f"epoch{self.epoch}_{self.monitor.name}_{value:.6g}").name
        sign = 1.0 if self.monitor.mode == "min" else -1.0
        ranked = sorted([*[t for t in self.top if t[1] != name], (value, name)], key=lambda t: sign * t[0])  # stable
        kept = ranked[: self.keep_best]
        if (value, name) in kept:
            self.top = kept
            self._save(self.path.with_name(name), [t[1] for t in ranked[self.keep_best :]])

    def after_fit(self) -> None:
        if self.learn.evaluating:  # an evaluation is not a fit: nothing to restore
            return
        if self.restore_best and self.best_epoch is not None and self.path.is_file():
            state = read_checkpoint(self.learn, self.path)
            plain_model(self.model).load_state_dict(state["model"])

    def state_dict(self) -> dict[str, Any]:
        """Return the best value and epoch and the kept checkpoints' names, for exact resume."""
        return {"best": self.best, "best_epoch": self.best_epoch, "periodic": list(self.periodic),
                "top": [list(t) for t in self.top]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (checkpoints of older versions have no lists)."""
        periodic, top = list(state.get("periodic", [])), [(float(v), str(n)) for v, n in state.get("top", [])]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.periodic, self.top = periodic, top
