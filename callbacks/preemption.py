"""`Preemption`: on SIGTERM (or another signal), checkpoint and end the fit cleanly."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import distributed as dist

from loopkit import Callback, CancelFit

_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def _signal_number(sig: str | int | signal.Signals) -> signal.Signals:
    if isinstance(sig, signal.Signals):
        return sig
    if isinstance(sig, int) and not isinstance(sig, bool):
        try:
            return signal.Signals(sig)
        except ValueError:
            raise ValueError(f"Preemption: {sig} is not a signal number on this platform.") from None
    if isinstance(sig, str):
        name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
        if name in _UNCATCHABLE:
            raise ValueError(f"Preemption: {name} cannot be caught by any process; use SIGTERM or SIGUSR1.")
        if name in signal.Signals.__members__:
            return signal.Signals[name]
        known = ", ".join(sorted(n for n in signal.Signals.__members__ if n not in _UNCATCHABLE))
        raise ValueError(f"Preemption: {sig!r} is not a signal on this platform; use one of {known}.")
    raise TypeError(f"Preemption: a signal is a name such as 'SIGTERM' or a number, got {sig!r}.")


class Preemption(Callback):
    """On a signal (SIGTERM by default), finish the batch, save a checkpoint and end the fit.

    Events: before_fit, after_batch, after_epoch, after_fit.
    Reads: training, evaluating, and `learn.distributed` when present.
    Writes on the learner: nothing (it calls `learn.save(path)` and raises `CancelFit`).
    Publishes: `signals` (the signals it handles), `received` (the signal received in
    this fit, or `None`), `saved` (the checkpoint written, or `None`).
    order = 100: after every other `after_batch` and `after_epoch` (SaveModel is 90), so
    the checkpoint holds their state for the batch.

    From `before_fit` to `after_fit` of each fit (not of evaluations or `lr_find`'s
    sweep), a handler for each of `signals` notes the signal and returns; the batch that
    is running finishes. At the end of the training batch (`after_batch`), or at the end
    of the epoch when the signal came during validation, `learn.save(path)` writes a
    checkpoint (atomically: a temporary file renamed) and `CancelFit` ends the fit
    normally; the learner stays usable. `fit(n_epochs, resume=path)` continues the run
    exactly, mid-epoch included. The previous handlers are put back at `after_fit`,
    however the fit ends. Signal handlers can only be set in the main thread: a fit
    elsewhere is a `ValueError` at `before_fit`.

    Under `Distributed`, the ranks agree at every training batch's end and epoch end
    (one tiny all-reduce on a gloo group), so a signal received by any rank stops them
    all at the same batch: every rank calls `learn.save` (rank 0 writes one checkpoint)
    and raises `CancelFit`.

    `signals` are names (`"SIGTERM"`, `"SIGUSR1"`, `"TERM"`), numbers or
    `signal.Signals`; a name that is no signal here, or SIGKILL/SIGSTOP (which no
    process can catch), is a `ValueError` at construction.
    """

    order = 100

    def __init__(self, path: str | Path = "models/preempted.pt", signals: Sequence[str | int] | str | int = ("SIGTERM",)) -> None:
        given = [signals] if isinstance(signals, (str, int)) else list(signals)
        if not given:
            raise ValueError("Preemption(signals=()) handles nothing; give at least one, e.g. ('SIGTERM', 'SIGUSR1').")
        self.signals = tuple(dict.fromkeys(_signal_number(s) for s in given))
        self.path = Path(path)
        self.received: signal.Signals | None = None
        self.saved: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._group: Any = None
        self._active = False

    def before_fit(self) -> None:
        learn = self.learn
        self._active = not learn.evaluating and getattr(learn, "lr_finder", None) is None
        if not self._active:
            return
        if threading.current_thread() is not threading.main_thread():
            self._active = False
            raise ValueError("Preemption sets signal handlers, which Python allows only in the main thread; "
                             "run the fit there, or leave Preemption out.")  # fmt: skip
        self.received, self.saved = None, None
        distributed = getattr(learn, "distributed", None)
        self._distributed = distributed is not None and dist.is_initialized() and dist.get_world_size() > 1
        if self._distributed and self._group is None and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # the flag is a CPU tensor: agree on the host
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def _stop_requested(self) -> bool:
        if not self._distributed:
            return self.received is not None
        flag = torch.tensor([int(self.received is not None)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def _stop_if_requested(self) -> None:
        if self._active and self._stop_requested():
            self.saved = self.learn.save(self.path)  # on every rank: a collective save, rank 0 writes
            raise CancelFit

    def after_batch(self) -> None:
        if self.learn.training:
            self._stop_if_requested()

    def after_epoch(self) -> None:
        self._stop_if_requested()

    def after_fit(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        self._previous = {}
        self._active = False
