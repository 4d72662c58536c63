"""Data-parallel training on `torch.distributed` (DDP), launched by `torchrun`.

Every process runs the same script and the same fit. `Distributed` starts the
process group (gloo on CPU, NCCL on CUDA) unless one is up, shards the loaders
by rank, wraps the model in `DistributedDataParallel` for the fit only, and
makes every decision to stop a collective one, so no rank is left waiting.

Sharding. Each epoch the sample order (shuffled with a seed shared by all
ranks, changed with the epoch) is cut into global batches of
`world_size * batch_size`; rank `r` takes every `world_size`-th sample of each,
starting at `r`. Every sample is seen exactly once per epoch — no padding
duplicates — and all ranks yield the same number of training batches, so no
collective waits for a rank that ran out. A last global batch smaller than the
world size is merged into the one before it. Validation is sharded the same way.
Torch `DataLoader`s (map-style dataset, a batch size) and `TensorLoader`s are
sharded; a sharded `TensorLoader` still indexes its tensors in place, on their device.

Exact gradients. When a global batch does not split evenly, a rank's loss is
scaled by `world_size * n_local / n_global` before backward, so DDP's average
over ranks is the mean over the global batch, as one process would compute.
"""

from __future__ import annotations

import atexit
import inspect
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from loopkit import Callback, CancelFit, TensorLoader

from .stats import batch_size

_DDP_ARGS = frozenset(inspect.signature(DistributedDataParallel.__init__).parameters)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardBatchSampler:
    """Yield this rank's part of each global batch, every sample once per epoch.

    The global batches are the first `n_samples` indices (shuffled with
    `seed + epoch` when `shuffle`) cut into runs of `world_size * batch_size`;
    this rank takes positions `rank, rank + world_size, ...` of each. Every rank
    yields the same number of batches. Call `set_epoch` before each epoch.
    """

    def __init__(self, n_samples: int, batch_size: int, world_size: int, rank: int,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> None:  # fmt: skip
        if n_samples < world_size:
            raise ValueError(
                f"cannot shard {n_samples} samples over {world_size} processes: every process needs at "
                "least one; use fewer processes or more data."
            )
        self.n_samples, self.batch_size, self.world_size, self.rank = n_samples, batch_size, world_size, rank
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration uses (the same on every rank)."""
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """Return this epoch's global batches (all ranks' samples) as lists of indices."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_samples, generator=gen).tolist()
        else:
            order = list(range(self.n_samples))
        size = self.world_size * self.batch_size
        batches = [order[i : i + size] for i in range(0, self.n_samples, size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < size:
            batches.pop()
        elif len(batches) > 1 and len(batches[-1]) < self.world_size:
            last = batches.pop()  # too small to give every rank a sample
            batches[-1] = batches[-1] + last
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches())


class _ShardedTensorLoader:
    """Yield this rank's batches of a `TensorLoader`, the indices chosen by a `ShardBatchSampler`."""

    def __init__(self, dl: TensorLoader, batch_sampler: ShardBatchSampler) -> None:
        self.dl, self.batch_sampler = dl, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        batches = list(self.batch_sampler)
        # One index tensor per epoch, moved to the data's device once, then split into the batches.
        index = torch.tensor([i for batch in batches for i in batch], device=self.dl.device)
        for part in index.split([len(batch) for batch in batches]):
            yield self.dl.take(part)


def shard_loader(dl: Any, world_size: int, rank: int, seed: int | None, role: str) -> Any:
    """Return a loader over this rank's shard of `dl`'s samples, with `dl`'s other settings.

    `dl` is a torch `DataLoader` (the result is one too) or a `TensorLoader`; the shuffle
    seed defaults to the seed of `dl`'s generator.
    """
    if isinstance(dl, TensorLoader):
        if seed is None:
            seed = dl.generator.initial_seed() if dl.generator is not None else 0
        sampler = ShardBatchSampler(dl.n_samples, dl.bs, world_size, rank, shuffle=dl.shuffle, seed=seed,
                                    drop_last=dl.drop_last)  # fmt: skip
        return _ShardedTensorLoader(dl, sampler)
    if not isinstance(dl, DataLoader) or dl.batch_size is None or isinstance(dl.dataset, IterableDataset):
        raise TypeError(
            f"Distributed shards TensorLoaders and torch DataLoaders built from a map-style dataset with a "
            f"batch_size; the {role} loader is a {type(dl).__name__}. Build it with TensorLoader((x, y), bs=...) "
            "or DataLoader(dataset, batch_size=..., shuffle=...)."
        )
    if not isinstance(dl.sampler, (RandomSampler, SequentialSampler)):
        raise TypeError(
            f"the {role} loader uses a custom sampler ({type(dl.sampler).__name__}), which Distributed cannot "
            "shard; use shuffle=True or False and let Distributed split the data by rank."
        )
    if seed is None:
        seed = dl.generator.initial_seed() if dl.generator is not None else 0
    sampler = ShardBatchSampler(len(dl.dataset), dl.batch_size, world_size, rank,  # type: ignore[arg-type]
                                shuffle=isinstance(dl.sampler, RandomSampler), seed=seed, drop_last=dl.drop_last)  # fmt: skip
    extra: dict[str, Any] = {"prefetch_factor": dl.prefetch_factor, "persistent_workers": dl.persistent_workers} if dl.num_workers else {}
    return DataLoader(dl.dataset, batch_sampler=sampler, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                      pin_memory=dl.pin_memory, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn, **extra)  # fmt: skip


class Distributed(Callback):
    """Train data-parallel over the processes `torchrun` started.

    Events: before_fit, before_epoch, before_train, before_batch, before_backward,
    after_train, after_validate, after_cancel_fit, after_fit.
    Reads: model, train_dl, valid_dl, training, iter, yb, xb, loss, epoch.
    Writes on the learner: `model` (wrapped in DDP from before_fit to after_fit),
    `train_dl` and `valid_dl` (this rank's shards, for the fit only), `loss`
    (rescaled before backward when a global batch splits unevenly).
    Publishes: `rank`, `world_size`, `device`, `created_group`, `sharding` (whether
    this rank holds a shard of the phase loaders: always in a fit; in an evaluation
    when the evaluated loader is a DataLoader or a TensorLoader), and `global_sizes`
    (set at `before_train`: the number of samples, over all ranks, in each global
    training batch of the epoch — `GradientAccumulation` counts its windows in these).
    order = -30: after `Device` (-90) placed the model and before `AvgStats` (-20)
    all-reduces its sums at the end of a phase, so the stop agreement comes first.

    Stopping is agreed: at the start of every epoch, before every training backward,
    at the end of every phase and at the end of the fit, all ranks all-reduce a stop flag (one tiny CPU collective on a gloo
    group, no GPU sync). A rank whose fit is cancelled (`CancelFit` from any
    callback, e.g. `TerminateOnNaN`) sends the flag on its way out and the others
    raise `CancelFit` at their next agreement. `EarlyStopping` decides on the
    all-reduced figures, so all ranks decide alike. A rank that fails with an
    error exits without talking to the others; under torchrun its exit ends the job.

    `backend` defaults to NCCL when CUDA is available, else gloo; the process
    group is created from torchrun's environment when none is up. A group this
    callback created stays up for later fits and is destroyed when the process
    exits normally (an `atexit` hook), so the job ends without NCCL/gloo warnings. `seed` is the shuffling seed shared
    by the ranks (default: the loader's generator's seed, else 0). `learn.save`
    must be called on every rank (rank 0 writes).
    """

    order = -30

    def __init__(self, backend: str | None = None, timeout: float = 600.0, seed: int | None = None,
                 find_unused_parameters: bool = False) -> None:  # fmt: skip
        self.backend, self.timeout, self.seed = backend, timeout, seed
        self.find_unused_parameters = find_unused_parameters
        self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        self.created_group = False
        self.sharding = False
        self.global_sizes: list[int] = []
        self._control: Any = None
        self._samplers: list[ShardBatchSampler] = []
        self._loss_factor = 1.0
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            # Pick this process's GPU now, before Device (order -90) places the model on "cuda".
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    @staticmethod
    def launched() -> bool:
        """Return True when `torchrun` (or another launcher) started more than one process."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    def _start_group(self) -> None:
        if dist.is_initialized():
            return
        backend = self.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"Distributed needs a process group, and the launcher's variables {missing} are not set; "
                "start the script with `torchrun --nproc_per_node N script.py`, or call "
                "torch.distributed.init_process_group yourself first."
            )
        dist.init_process_group(backend, timeout=timedelta(seconds=self.timeout))
        self.created_group = True
        # The group outlives the fit (a second fit, lr_find then fit, ...), since re-creating one
        # mid-job races on the rendezvous; it is destroyed when the process exits normally.
        atexit.register(_destroy_group)

    def before_fit(self) -> None:
        self._start_group()
        self._stopped_by_peer = self._announced = False
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        on_cuda = dist.get_backend() == "nccl"
        if on_cuda:
            local_rank = int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count()))
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        # Stop flags go over gloo on the host, so agreeing never waits on the GPU.
        if on_cuda and self._control is None:
            self._control = dist.new_group(backend="gloo")
        learn = self.learn
        self._loaders = (learn.train_dl, learn.valid_dl)
        # An evaluation reads valid_dl (the evaluated loader) alone, and shards it only if it is a
        # DataLoader or TensorLoader: `predict`'s single batch, or a list of batches, is each rank's own.
        self.sharding = not learn.evaluating or isinstance(learn.valid_dl, (DataLoader, TensorLoader))
        if not learn.evaluating:
            learn.train_dl = shard_loader(learn.train_dl, self.world_size, self.rank, self.seed, "train")
        if learn.valid_dl is not None and self.sharding:
            role = "evaluated" if learn.evaluating else "valid"
            learn.valid_dl = shard_loader(learn.valid_dl, self.world_size, self.rank, self.seed, role)
        sharded = [learn.valid_dl] if learn.evaluating else [learn.train_dl, learn.valid_dl]
        self._samplers = [dl.batch_sampler for dl in sharded if dl is not None and self.sharding]  # type: ignore[attr-defined,misc]
        model = learn.model.to(self.device)
        if learn.evaluating:  # no gradients, so no DDP: the shards' figures are all-reduced by AvgStats
            learn.model = model
            return
        # No buffer sync in forward: the only collectives are DDP's gradient all-reduce,
        # the stop agreement and AvgStats' sums, which keeps the agreement protocol simple.
        # (torch 2.13 renamed the switch; older releases only know broadcast_buffers.)
        no_forward_sync: dict[str, Any] = (
            {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else {"broadcast_buffers": False}
        )
        learn.model = DistributedDataParallel(
            model, device_ids=[self.device.index] if on_cuda else None,
            find_unused_parameters=self.find_unused_parameters, **no_forward_sync,
        )  # fmt: skip

    def before_epoch(self) -> None:
        # Agree before anything of the epoch runs, so a stop decided at another rank's after_epoch
        # ends every rank after the same epochs (order -30: the first before_epoch that ships).
        self._agree_or_stop()
        for sampler in self._samplers:
            sampler.set_epoch(self.epoch)

    def before_train(self) -> None:
        self.global_sizes = [len(batch) for batch in self._samplers[0].global_batches()]

    def before_batch(self) -> None:
        learn = self.learn
        if learn.training:
            n_global = self.global_sizes[learn.iter]
            n_local = batch_size(learn.yb if learn.yb else learn.xb)
            self._loss_factor = self.world_size * n_local / n_global

    def before_backward(self) -> None:
        self._agree_or_stop()
        if self._loss_factor != 1.0:
            self.learn.loss = self.learn.loss * self._loss_factor

    def after_train(self) -> None:
        self._agree_or_stop()

    def after_validate(self) -> None:
        if self.sharding:  # an unsharded evaluation (one rank's predict) has no peers to agree with
            self._agree_or_stop()

    def _agree(self, stop: bool) -> bool:
        flag = torch.tensor([int(stop)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
        return bool(flag.item())

    def _agree_or_stop(self) -> None:
        if self._agree(False):
            self._stopped_by_peer = True
            raise CancelFit

    def after_cancel_fit(self) -> None:
        # This rank stopped on its own: tell the others, who meet us at their next agreement.
        if not self._stopped_by_peer and dist.is_initialized() and self.world_size > 1:
            self._agree(True)
            self._announced = True

    def after_fit(self) -> None:
        learn = self.learn
        # The last agreement of the fit: meets the stop flag of a rank that cancelled after the
        # others' last agreement point (say in the last epoch's after_epoch), so nobody waits for it.
        if self.sharding and dist.is_initialized() and self.world_size > 1 and not (self._stopped_by_peer or self._announced):
            self._agree(False)
        if isinstance(learn.model, DistributedDataParallel):
            learn.model = learn.model.module
        if self._samplers:
            learn.train_dl, learn.valid_dl = self._loaders
            self._samplers = []
        self.sharding = False
