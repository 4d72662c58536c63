"""A training job for the exact-resume tests, run in fresh processes.

    python -m tests.callbacks.resume_job straight OUT N_EPOCHS
    python -m tests.callbacks.resume_job stop OUT N_EPOCHS K      # checkpoint after K epochs, then stop
    python -m tests.callbacks.resume_job resume OUT N_EPOCHS CKPT

Each writes OUT: the final parameters and the epoch history, via torch.save.
Set RESUME_JOB_ONE_CYCLE=1 to train with `fit_one_cycle`, RESUME_JOB_ACCUMULATE=N
to add GradientAccumulation(N), RESUME_JOB_TENSOR_LOADER=1 to load with `TensorLoader`s
instead of torch `DataLoader`s.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, CancelFit, Learner, TensorLoader
from loopkit.callbacks import CSVLogger, EarlyStopping


def build(out_dir: str) -> Learner:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(70, 6, generator=gen)
    y = (x[:, :3].sum(1) > 0).long()
    train: DataLoader | TensorLoader
    valid: DataLoader | TensorLoader
    if os.environ.get("RESUME_JOB_TENSOR_LOADER"):
        train = TensorLoader((x[:50], y[:50]), bs=8, shuffle=True, seed=2)
        valid = TensorLoader((x[50:], y[50:]), bs=16)
    else:
        train = DataLoader(TensorDataset(x[:50], y[:50]), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(2))
        valid = DataLoader(TensorDataset(x[50:], y[50:]), batch_size=16)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))  # dropout draws RNG
    cbs: list[Callback] = [CSVLogger(os.path.join(out_dir, "history.csv")), EarlyStopping(patience=50)]
    learn = Learner(model, (train, valid), F.cross_entropy, lr=0.1, cbs=cbs,
                    opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-3))  # fmt: skip
    learn.progress_bar.enabled = False
    if os.environ.get("RESUME_JOB_ACCUMULATE"):
        from loopkit.callbacks import GradientAccumulation

        learn.add_cbs(GradientAccumulation(int(os.environ["RESUME_JOB_ACCUMULATE"])))
    return learn


class StopAfter(Callback):
    """Simulate a job killed after `n` epochs: checkpoint, then stop."""

    order = 100

    def __init__(self, n: int, path: str):
        self.n, self.path = n, path

    def after_epoch(self) -> None:
        if self.epoch == self.n - 1:
            self.learn.save(self.path)
            raise CancelFit


def main(argv: list[str]) -> None:
    mode, out, n_epochs = argv[0], argv[1], int(argv[2])
    out_dir = os.path.dirname(out)
    learn = build(out_dir)
    if os.environ.get("RESUME_JOB_ONE_CYCLE"):
        def fit(**kwargs):
            learn.fit_one_cycle(n_epochs, lr_max=0.3, **kwargs)
    else:
        def fit(**kwargs):
            learn.fit(n_epochs, **kwargs)
    if mode == "straight":
        fit()
    elif mode == "stop":
        fit(cbs=[StopAfter(int(argv[3]), os.path.join(out_dir, "ckpt.pt"))])
    elif mode == "resume":
        fit(resume=argv[3])
    torch.save({"params": [p.detach().clone() for p in learn.model.parameters()],
                "history": learn.avg_stats.history, "losses": learn.recorder.losses}, out)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
