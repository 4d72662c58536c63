"""Where a fit is inside an epoch: each training phase's start, and loaders started at a batch offset.

The learner calls `train_batches` when a training phase starts. It notes the phase's
start (its epoch, `train_iter` and RNG states) on `learn._train_phase`, which a
checkpoint written during the phase records: the number of training batches done in
the epoch, and the RNG states the epoch's order was drawn from. A fit resumed from such
a checkpoint (`apply_checkpoint(resume=True)`) sets those RNG states again, draws the
epoch's order exactly as the interrupted run did, starts the loader at the next batch
(`iter_from`) and then sets the RNG states of the moment of the save, so dropout and
everything else continue their streams.

How a loader is started at batch `start`, without loading the batches before it where
the loader allows it:

- a loader with an `iter_from(start)` method (loopkit's own loaders can have one): that
  method draws the epoch's order as `iter()` would, when it is called, and returns an
  iterator over batches `start`, `start + 1`, ...;
- a list or tuple of batches: sliced;
- a torch `DataLoader` over a map-style dataset whose batches come from a `BatchSampler`
  over a `RandomSampler` or `SequentialSampler` (or from `Distributed`'s shards): the
  epoch's batches of indices are drawn again, as `iter(dl)` draws them, and a copy of the
  loader with the same settings loads those from `start` on;
- anything else: iterated from the start of the epoch with the first `start` batches
  dropped, and a `UserWarning` that says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

if TYPE_CHECKING:
    from loopkit import Learner


class TrainPhase:
    """The training phase of an epoch: its epoch, `train_iter` and RNG states when it started.

    `open` is true while its batches are iterated (from the first batch until the
    loader is exhausted or the phase is cut short). `resume_rng`, in a fit resumed
    mid-epoch, holds the RNG states of the moment of the save, set once the loader is
    positioned.
    """

    def __init__(self, epoch: int, train_iter: int, rng: dict[str, Any]) -> None:
        self.epoch, self.train_iter, self.rng = epoch, train_iter, rng
        self.open = False
        self.resume_rng: dict[str, Any] | None = None


def train_batches(learn: Learner) -> tuple[Iterable[Any], int]:
    """Return the batches of the training phase that starts now, and the index of the first.

    Leaf work for the loop, called after `before_train`: it fires nothing. In the first
    epoch of a fit resumed mid-epoch the batches start at `learn.start_iter`; otherwise
    at 0, and the phase's RNG states are noted for the checkpoints written during it.
    """
    from .checkpoint import rng_state, set_rng_state

    phase: TrainPhase | None = learn._train_phase
    if (phase is not None and phase.resume_rng is not None and learn.start_iter
            and learn.epoch == learn.start_epoch == phase.epoch):  # fmt: skip
        set_rng_state(learn, phase.rng, warn=False)  # the states the interrupted run drew this epoch's order from
        batches: Iterable[Any] = iter_from(learn.dl, learn.start_iter)  # type: ignore[arg-type]  # set by the loop
        # The global RNGs go on from the save. The loaders' generators stay where drawing the whole
        # epoch's order left them: a sampler draws its last permutation as the epoch ends, after the save.
        loaders = rng_state(learn)["loaders"]
        set_rng_state(learn, {**phase.resume_rng, "loaders": loaders}, warn=False)
        phase.resume_rng = None
        return _tracked(batches, phase), learn.start_iter
    phase = learn._train_phase = TrainPhase(learn.epoch, learn.train_iter, rng_state(learn))
    return _tracked(learn.dl, phase), 0  # type: ignore[arg-type]


def _tracked(batches: Iterable[Any], phase: TrainPhase) -> Iterator[Any]:
    phase.open = True
    try:
        yield from batches
    finally:  # exhausted, or closed when a cancel or an error leaves the loop
        phase.open = False


def iter_from(dl: Iterable[Any], start: int) -> Iterator[Any]:
    """Return an iterator over the batches of `dl`'s epoch from batch `start` on.

    The epoch's order is drawn now, from the RNG states of the moment, as `iter(dl)`
    would draw it; see the module docstring for how each kind of loader is started.
    """
    own = getattr(dl, "iter_from", None)
    if callable(own):
        return iter(own(start))
    if isinstance(dl, (list, tuple)):
        return iter(dl[start:])
    if _replayable(dl):
        return _dataloader_from(dl, start)  # type: ignore[arg-type]  # checked by _replayable
    warnings.warn(
        f"resuming mid-epoch: the train loader ({type(dl).__name__}) cannot start at a batch, so loopkit loads and "
        f"drops the {start} batches of the epoch before it; random draws made while loading them are not those of "
        "the interrupted run. A loader can start there itself: give it an iter_from(start) method, or use a "
        "DataLoader with shuffle=True or False.",
        stacklevel=2,
    )
    it = iter(dl)
    for _ in range(start):
        if next(it, _END) is _END:
            break
    return it


_END = object()


def _replayable(dl: Any) -> bool:
    if not isinstance(dl, DataLoader) or isinstance(dl.dataset, IterableDataset) or dl.batch_sampler is None:
        return False
    from .distributed import ShardBatchSampler

    batches = dl.batch_sampler
    return isinstance(batches, ShardBatchSampler) or (
        type(batches) is BatchSampler and type(batches.sampler) in (RandomSampler, SequentialSampler)
    )


def _dataloader_from(dl: DataLoader, start: int) -> Iterator[Any]:
    # Replay what iter(dl) draws, in its order: the workers' base seed from the loader's
    # generator (or the global one), then the sampler's order when the first batch is asked for.
    source = dl.generator if dl.generator is not None else torch.default_generator
    base = torch.Generator()
    base.set_state(source.get_state())  # the copy draws the same base seed as iter(dl) would
    if not (dl.persistent_workers and dl._iterator is not None):  # a persistent loader drew it once, already
        torch.empty((), dtype=torch.int64).random_(generator=dl.generator)
    batches = list(dl.batch_sampler)[start:]  # type: ignore[arg-type]  # indices only: no sample is loaded
    extra: dict[str, Any] = {"prefetch_factor": dl.prefetch_factor} if dl.num_workers else {}
    rest = DataLoader(dl.dataset, batch_sampler=batches, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                      pin_memory=dl.pin_memory, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
                      multiprocessing_context=dl.multiprocessing_context, generator=base,
                      pin_memory_device=dl.pin_memory_device, **extra)  # fmt: skip
    return iter(rest)


def loader_info(learn: Learner) -> dict[str, int | None]:
    """Return what a mid-epoch position depends on: the train loader's batches, batch size and samples."""
    from loopkit._checks import length

    dl = learn.train_dl
    sampler = getattr(dl, "batch_sampler", None)
    size = getattr(dl, "batch_size", None) or getattr(sampler, "batch_size", None) or getattr(dl, "bs", None)
    dataset = getattr(dl, "dataset", None)
    n_samples = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else getattr(dl, "n_samples", None)
    distributed = getattr(learn, "distributed", None)
    return {"n_batches": length(dl), "batch_size": _int_or_none(size), "n_samples": _int_or_none(n_samples),
            "world_size": distributed.world_size if distributed is not None else 1}  # fmt: skip


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
