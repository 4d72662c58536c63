"""Put the model and each batch on a device: `Device`, `to_device` and `pick_device`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from loopkit import Callback

DeviceLike = torch.device | str | int


def pick_device(device: DeviceLike | None = None) -> torch.device:
    """Return `device` as a `torch.device`; `None` or `"auto"` pick CUDA, else MPS, else CPU.

    Raises `ValueError` for a name torch does not know, or for a CUDA or MPS
    device that this machine does not have.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # torch reads a bare index as a CUDA device
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{device!r} is not a device torch knows; pass e.g. 'cpu', 'cuda', 'cuda:1', 'mps', "
            "or None / 'auto' for the default device."
        ) from None
    if picked.type == "cuda":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus == 0 or (picked.index is not None and picked.index >= n_gpus):
            raise ValueError(
                f"device {str(picked)!r} was asked for, but this machine has {n_gpus} CUDA device(s); "
                "pass None or 'auto' to use the best device available."
            )
    if picked.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but MPS is not available here; pass None or 'auto' instead.")
    return picked


def to_device(obj: Any, device: DeviceLike, non_blocking: bool = True) -> Any:
    """Return `obj` with every tensor moved to `device`, through tuples, lists, dicts and namedtuples.

    Containers are rebuilt with their own type (a namedtuple stays that
    namedtuple, a `defaultdict` keeps its factory); leaves that are not tensors
    are returned as they are. A tensor already on `device` is not copied. With
    `non_blocking` (the default) a copy is asynchronous only where that is safe:
    from pinned CPU memory to a CUDA device; every other copy is synchronous.
    """
    device = torch.device(device)
    if isinstance(obj, torch.Tensor):
        async_copy = non_blocking and device.type == "cuda" and obj.device.type == "cpu" and obj.is_pinned()
        return obj.to(device, non_blocking=async_copy)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple takes its fields positionally
        return type(obj)(*(to_device(item, device, non_blocking) for item in obj))
    if isinstance(obj, (tuple, list)):
        moved = [to_device(item, device, non_blocking) for item in obj]
        return moved if type(obj) is list else type(obj)(moved)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the dict's type and, for a defaultdict, its factory
        for key, value in obj.items():
            out[key] = to_device(value, device, non_blocking)
        return out
    return obj


def _leaves(obj: Any) -> Iterator[torch.Tensor]:
    # The tensors in a batch, through the containers to_device walks.
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _leaves(item)


def _pinned(batch: Any) -> bool:
    return any(t.device.type == "cpu" and t.is_pinned() for t in _leaves(batch))


class Prefetcher:
    """Iterate `dl` one batch ahead, starting each batch's copy while the one before it trains.

    `start(batch)` begins moving a batch and returns a handle; `finish(handle)` waits
    for that move and returns the moved batch. Batch k+1's `start` is called before
    batch k is handed out, so its copy runs during batch k's step. `Device` builds one
    for CUDA, where `start` copies pinned tensors on a side stream and `finish` makes the
    current stream wait for that copy. Supports `len` and `iter_from` (mid-epoch resume)
    when `dl` does.
    """

    def __init__(self, dl: Iterable[Any], start: Callable[[Any], Any], finish: Callable[[Any], Any]) -> None:
        self.dl, self.start, self.finish = dl, start, finish

    def __len__(self) -> int:
        return len(self.dl)  # type: ignore[arg-type]  # only asked of loaders with a length

    def __iter__(self) -> Iterator[Any]:
        return self._ahead(iter(self.dl))

    def iter_from(self, start: int) -> Iterator[Any]:
        """Iterate from batch `start` of the epoch, the wrapped loader started there (see `_position.iter_from`)."""
        from ._position import iter_from

        return self._ahead(iter_from(self.dl, start))

    def _ahead(self, it: Iterator[Any]) -> Iterator[Any]:
        end = object()
        batch = next(it, end)
        handle = self.start(batch) if batch is not end else None
        while batch is not end:
            moved = self.finish(handle)
            batch = next(it, end)
            handle = self.start(batch) if batch is not end else None
            yield moved


class _SideStream:
    """Copies from pinned memory to a CUDA device on a stream of their own (see `Prefetcher`)."""

    def __init__(self, device: torch.device, non_blocking: bool) -> None:
        self.device, self.non_blocking = device, non_blocking
        self.stream = torch.cuda.Stream(device)

    def start(self, batch: Any) -> tuple[Any, bool]:
        if not _pinned(batch):  # a copy from pageable memory would not overlap: Device moves it as it starts
            return batch, False
        with torch.cuda.stream(self.stream):
            return to_device(batch, self.device, self.non_blocking), True

    def finish(self, handle: tuple[Any, bool]) -> Any:
        batch, on_side_stream = handle
        if on_side_stream:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in _leaves(batch):
                # Made on the side stream, used on this one: the allocator must not reuse the
                # memory until this stream is done with it.
                tensor.record_stream(current)
        return batch


class Device(Callback):
    """Train on `device`: move the model (and optimizer state) at the start of a fit, and each batch.

    Events: before_fit, before_train, before_validate, before_batch. Reads: model,
    opt, dl, batch, n_inp. Writes on the learner: `model` (moved in place), `dl`
    (wrapped in a `Prefetcher`, on CUDA), `batch`, `xb`, `yb` (moved).
    Publishes: `device` (the `torch.device` in use, as `learn.device.device`),
    `non_blocking`, `prefetch`.
    order = -90: right after `TrainEval` (-100), so every other callback sees the
    model and the batch on the device; `Distributed` (-30) and `MixedPrecision`
    (-25) read the model's device after it was placed.

    `device=None` or `"auto"` picks CUDA if available, else MPS, else CPU
    (`pick_device`); `Learner(..., device=...)` adds this callback for you. An
    existing optimizer's state (momentum buffers, Adam moments) moves with the
    model. Batches go through `to_device`: nested tuples, lists, dicts and
    namedtuples are walked, non-tensor leaves are kept, and copies from pinned
    memory (`DataLoader(..., pin_memory=True)`) to CUDA are asynchronous when
    `non_blocking` is true. On CUDA with `prefetch` (the default), batches of pinned
    tensors are copied one batch ahead on a side stream: the next batch's copy runs
    while the current one trains (`Prefetcher`, which wraps `learn.dl` at
    `before_train` and `before_validate`). Other batches, and every batch on other
    devices, are copied when they start, on the current stream.
    """

    order = -90

    def __init__(self, device: DeviceLike | None = None, non_blocking: bool = True, prefetch: bool = True) -> None:
        self.device = pick_device(device)
        self.non_blocking = non_blocking
        self.prefetch = prefetch
        self._side: _SideStream | None = None

    def before_fit(self) -> None:
        learn = self.learn
        opt = learn.opt
        before = list(learn.model.parameters())
        saved = opt.state_dict() if opt is not None else None
        learn.model = learn.model.to(self.device)
        if opt is None or saved is None:
            return
        # Moving to CUDA or MPS keeps each Parameter object, but some moves (to 'meta', or with
        # torch.__future__.set_overwrite_module_params_on_conversion) make new ones, which the
        # optimizer made before this fit would not update: point it at the new ones.
        replaced = {id(old): new for old, new in zip(before, learn.model.parameters()) if old is not new}
        for group in opt.param_groups:
            group["params"] = [replaced.get(id(p), p) for p in group["params"]]
        if replaced or any(
            isinstance(value, torch.Tensor) and key != "step" and value.device != param.device
            for param, state in opt.state.items()
            for key, value in state.items()
        ):
            # load_state_dict maps the state to the parameters by position, casts it to each
            # parameter's device, and keeps step counters where the optimizer wants them.
            opt.load_state_dict(saved)

    def before_train(self) -> None:
        self._wrap()

    def before_validate(self) -> None:
        self._wrap()

    def _wrap(self) -> None:
        if self.prefetch and self.device.type == "cuda" and self.learn.dl is not None:
            if self._side is None:
                self._side = _SideStream(self.device, self.non_blocking)
            self.learn.dl = Prefetcher(self.learn.dl, self._side.start, self._side.finish)

    def before_batch(self) -> None:
        learn = self.learn
        batch = to_device(learn.batch, self.device, self.non_blocking)
        learn.batch = batch
        learn.xb, learn.yb = tuple(batch[: learn.n_inp]), tuple(batch[learn.n_inp :])

    def __repr__(self) -> str:
        return f"Device({str(self.device)!r})" if self.prefetch else f"Device({str(self.device)!r}, prefetch=False)"
