"""Jobs for the distributed tests, started with torchrun (2 processes, gloo, 127.0.0.1).

    torchrun --standalone --nproc_per_node 2 -m tests.callbacks.dist_job MODE OUT_DIR

Rank 0 writes OUT_DIR/result.pt: final parameters, the epoch history and what
the mode measured. Each mode's data and model are built by `build()` below, which
the tests also use for their single-process references.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, CancelFit, Learner, TensorLoader
from loopkit.callbacks import CSVLogger, EarlyStopping, SaveModel
from loopkit.callbacks.distributed import shard_loader

SIZES = {"equiv": (48, 16), "stats": (37, 23), "merge": (33, 5), "io": (40, 12), "stop": (40, 12), "error": (40, 12),
         "accum": (37, 12), "twice": (40, 12), "eval": (37, 23), "stop_epoch": (40, 12), "metrics": (37, 23),
         "tensor": (37, 23), "preempt": (40, 12)}  # fmt: skip


def data(mode: str) -> tuple[TensorDataset, TensorDataset]:
    n_train, n_valid = SIZES[mode]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n_train + n_valid, 5, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (pred.argmax(1) == y).double().mean()


def stateful_metrics() -> list:
    """Return torchmetrics metrics for the "metrics" mode, and a sample counter that shows double counting."""
    from torchmetrics import Metric
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score

    class CountSamples(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("n", default=torch.tensor(0), dist_reduce_fx="sum")

        def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
            self.n += len(y)

        def compute(self) -> torch.Tensor:
            return self.n

    return [accuracy, MulticlassF1Score(num_classes=2, average="macro", validate_args=False),
            MulticlassAUROC(num_classes=2, validate_args=False), CountSamples()]  # fmt: skip


def build(mode: str, bs: int, distributed: bool, cbs: list[Callback] | None = None, shuffle: bool = False,
          tensor_loader: bool = False) -> Learner:  # fmt: skip
    train, valid = data(mode)
    dls: tuple[DataLoader | TensorLoader, DataLoader | TensorLoader]
    if tensor_loader:  # the same shuffling seed, so Distributed cuts the same global batches
        dls = (TensorLoader(train.tensors, bs=bs, shuffle=shuffle, seed=5), TensorLoader(valid.tensors, bs=bs))
    else:
        dls = (DataLoader(train, batch_size=bs, shuffle=shuffle, generator=torch.Generator().manual_seed(5)),
               DataLoader(valid, batch_size=bs))  # fmt: skip
    metrics = stateful_metrics() if mode == "metrics" else [accuracy]
    learn = Learner(model(), dls, F.cross_entropy, lr=0.2, metrics=metrics, cbs=cbs, distributed=distributed)
    learn.avg_stats.train_metrics = True
    learn.progress_bar.enabled = False
    return learn


class RaiseOnRank(Callback):
    """On one rank only, raise `error` at the `at`-th training batch of `epoch`."""

    def __init__(self, rank: int, epoch: int, at: int, error: type[BaseException]):
        self.on_rank, self.at_epoch, self.at, self.error = rank, epoch, at, error

    def after_loss(self) -> None:
        if self.training and self.epoch == self.at_epoch and self.iter == self.at and self.learn.distributed.rank == self.on_rank:
            raise self.error("raised on purpose by RaiseOnRank")


class CountEpochs(Callback):
    """Count the epochs whose before_epoch reached the callbacks."""

    order = 100

    def __init__(self) -> None:
        self.n_started = 0

    def before_epoch(self) -> None:
        self.n_started += 1


class StopAfterEpoch(Callback):
    """On one rank only, raise CancelFit in after_epoch of `epoch`."""

    order = 100

    def __init__(self, rank: int, epoch: int):
        self.on_rank, self.at_epoch = rank, epoch

    def after_epoch(self) -> None:
        if self.epoch == self.at_epoch and self.learn.distributed.rank == self.on_rank:
            raise CancelFit


class SignalOnRank(Callback):
    """Send this process SIGTERM after training batch `at` (counted over the fit), on one rank only."""

    def __init__(self, rank: int, at: int):
        self.on_rank, self.at = rank, at

    def after_batch(self) -> None:
        if self.training and self.train_iter == self.at and self.learn.distributed.rank == self.on_rank:
            os.kill(os.getpid(), signal.SIGTERM)


class CountAllReduces(Callback):
    """Count DDP's gradient all-reduces with a communication hook (one bucket for these models)."""

    order = -29  # right after Distributed (-30) wrapped the model

    def __init__(self) -> None:
        self.n_all_reduces = 0

    def before_fit(self) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def hook(state, bucket):
            self.n_all_reduces += 1
            return default_hooks.allreduce_hook(None, bucket)

        self.model.register_comm_hook(None, hook)


def main(mode: str, out_dir: str) -> None:
    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    result: dict = {}
    if mode in ("equiv", "stats", "merge"):
        learn = build(mode, bs=4, distributed=True)
        learn.fit(2)
    elif mode == "metrics":  # torchmetrics gather their states; every sample counts once
        learn = build(mode, bs=4, distributed=True)
        learn.fit(2)
        sharded = learn.validate()
        everything = list(DataLoader(data(mode)[1], batch_size=5))  # not a DataLoader: each rank evaluates it all
        result.update(sharded=sharded.metrics, whole=learn.validate(everything).metrics)
    elif mode == "accum":
        from loopkit.callbacks import GradientAccumulation

        counter = CountAllReduces()
        learn = build(mode, bs=4, distributed=True, cbs=[GradientAccumulation(20), counter])
        learn.fit(2)
        result.update(n_all_reduces=counter.n_all_reduces, n_steps=learn.gradient_accumulation.n_steps)
    elif mode == "twice":  # several fits in one job share the process group
        learn = build(mode, bs=4, distributed=True)
        before = [p.detach().clone() for p in learn.model.parameters()]
        found = learn.lr_find(num_it=15)
        result.update(found=float(found), restored=all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters())))
        learn.fit(1)
        learn.fit_one_cycle(2, 0.2, cbs=[SaveModel(path=out / "best.pt", restore_best=True)])
        learn.fit(1)
    elif mode == "io":
        cbs = [CSVLogger(out / "history.csv"), SaveModel(path=out / "ckpt.pt", every_epoch=True)]
        learn = build(mode, bs=4, distributed=True, cbs=cbs, shuffle=True)
        learn.fit(4)
    elif mode == "resume":
        learn = build("io", bs=4, distributed=True, cbs=[CSVLogger(out / "history.csv")], shuffle=True)
        learn.fit(4, resume=out / "ckpt_epoch1.pt")
    elif mode == "eval":  # evaluations after a fit: global figures, every sample once, in order
        learn = build(mode, bs=4, distributed=True)
        learn.fit(1)
        stats = learn.validate()
        inp, pred, targ, losses = learn.get_preds(with_input=True, with_loss=True)
        x = torch.randn(3 + rank, 5, dtype=torch.float64)  # predict is each rank's own batch
        result.update(stats=(stats.loss, stats.metrics, stats.count), inp=inp, pred=pred, targ=targ, losses=losses,
                      predict_in=x, predict_out=learn.predict(x), n_history=len(learn.avg_stats.history),
                      train_dl=type(learn.train_dl).__name__)  # fmt: skip
    elif mode == "stop_epoch":  # rank 0 alone stops in after_epoch: of epoch 1, then of the last epoch
        counter = CountEpochs()
        learn = build("stop_epoch", bs=4, distributed=True, cbs=[counter])
        learn.fit(4, cbs=[StopAfterEpoch(rank=0, epoch=1)])
        first = counter.n_started
        learn.fit(2, cbs=[StopAfterEpoch(rank=0, epoch=1)])  # the last epoch: nobody may wait for rank 0
        result.update(n_started=(first, counter.n_started - first))
    elif mode == "tensor":  # TensorLoaders train as DataLoaders do, and evaluations gather their shards
        torch_learn = build(mode, bs=4, distributed=True, shuffle=True)
        torch_learn.fit(2)
        learn = build(mode, bs=4, distributed=True, shuffle=True, tensor_loader=True)
        shards = [[batch[0][:, 0].tolist() for batch in shard_loader(dl, 2, rank, None, "test")] for dl in learn.dls]
        learn.fit(2)
        inp, pred, targ = learn.get_preds(with_input=True)
        stats = learn.validate()
        result.update(torch_params=[p.detach().clone() for p in torch_learn.model.parameters()],
                      torch_history=torch_learn.avg_stats.history, inp=inp, pred=pred, targ=targ, shards=shards,
                      stats=(stats.loss, stats.metrics, stats.count), train_dl=type(learn.train_dl).__name__)  # fmt: skip
    elif mode == "preempt":  # SIGTERM reaches rank 1 alone in training batch 3: every rank stops there
        from loopkit.callbacks import Preemption

        preemption = Preemption(path=out / "preempted.pt")
        learn = build("preempt", bs=4, distributed=True, cbs=[preemption, SignalOnRank(rank=1, at=3)])
        learn.fit(3)
        result.update(received=str(preemption.received), saved=str(preemption.saved))
    elif mode == "stop":
        learn = build(mode, bs=4, distributed=True, cbs=[RaiseOnRank(1, epoch=1, at=2, error=CancelFit), EarlyStopping(patience=9)])
        learn.fit(5)
    elif mode == "error":
        learn = build(mode, bs=4, distributed=True, cbs=[RaiseOnRank(1, epoch=1, at=2, error=RuntimeError)])
        learn.fit(5)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result.update(params=[p.detach().clone() for p in learn.model.parameters()], history=learn.avg_stats.history,
                  train_iter=learn.train_iter, plain=type(learn.model).__name__)  # fmt: skip
    torch.save(result, out / f"result_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
