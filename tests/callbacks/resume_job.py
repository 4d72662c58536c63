"""A training job for the exact-resume tests, run in fresh processes.

    python -m tests.callbacks.resume_job straight OUT N_EPOCHS
    python -m tests.callbacks.resume_job stop OUT N_EPOCHS K      # checkpoint after K epochs, then stop
    python -m tests.callbacks.resume_job resume OUT N_EPOCHS CKPT
    python -m tests.callbacks.resume_job preempt OUT N_EPOCHS K   # Preemption; waits on stdin mid-batch K
    python -m tests.callbacks.resume_job trials DIR N_EPOCHS N_TRIALS SEED

Each writes OUT: the final parameters, the epoch history, the per-batch losses and
hyper-parameters, via torch.save (and a history.csv beside it). `preempt` trains with
`Preemption(path=<OUT's folder>/preempted.pt)`; in training batch K (counted over the
fit) it prints "ready" after the loss and blocks until a line arrives on stdin, so the
test can send SIGTERM mid-batch without racing the training. `trials` writes
DIR/straight/out.pt, then for each trial i forks a child that trains with
`SaveModel(every_n_batches=1, keep_last=2)` and SIGKILLs itself at a random point of a
random training batch, then forks a fresh child that resumes from the latest complete
checkpoint and writes DIR/trial<i>/out.pt (and DIR/trial<i>/killed_at.txt). The
children are forked from a process that has imported torch and loopkit and done
nothing else, so each starts fresh, at a fraction of an interpreter's start-up cost.
Set RESUME_JOB_ONE_CYCLE=1 to train with `fit_one_cycle`, RESUME_JOB_ACCUMULATE=N
to add GradientAccumulation(N), RESUME_JOB_TENSOR_LOADER=1 to load with `TensorLoader`s
instead of torch `DataLoader`s.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, CancelFit, Learner, TensorLoader
from loopkit.callbacks import CSVLogger, EarlyStopping, Preemption, SaveModel


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


class Gate(Callback):
    """In training batch `k` of the fit, after the loss: say "ready" and wait for a line on stdin."""

    def __init__(self, k: int):
        self.k = k

    def after_loss(self) -> None:
        if self.training and self.train_iter == self.k:
            print("ready", flush=True)
            sys.stdin.readline()  # the SIGTERM arrives while we wait; the handler runs, the read goes on


class Kill(Callback):
    """SIGKILL this process at `event` of training batch `k` of the fit (after SaveModel's after_batch)."""

    order = 95

    def __init__(self, k: int, event: str):
        self.k, self.event = k, event

    def _kill_at(self, event: str) -> None:
        done = self.train_iter - (event == "after_batch")  # TrainEval counted the batch at its after_batch
        if event == self.event and self.training and done == self.k:
            os.kill(os.getpid(), signal.SIGKILL)

    def before_batch(self) -> None:
        self._kill_at("before_batch")

    def after_backward(self) -> None:
        self._kill_at("after_backward")

    def after_batch(self) -> None:
        self._kill_at("after_batch")


KILL_EVENTS = ("before_batch", "after_backward", "after_batch")


def fit(learn: Learner, n_epochs: int, **kwargs) -> None:
    if os.environ.get("RESUME_JOB_ONE_CYCLE"):
        learn.fit_one_cycle(n_epochs, lr_max=0.3, **kwargs)
    else:
        learn.fit(n_epochs, **kwargs)


def write(learn: Learner, out: str) -> None:
    torch.save({"params": [p.detach().clone() for p in learn.model.parameters()],
                "history": learn.avg_stats.history, "losses": learn.recorder.losses,
                "hps": learn.recorder.hps}, out)  # fmt: skip


def latest_checkpoint(folder: Path) -> Path | None:
    """Return the periodic checkpoint of `folder` furthest into the fit (by epoch, then batch)."""
    found = [(int(m[1]), int(m[2]), p) for p in folder.glob("best_epoch*_batch*.pt")
             if (m := re.fullmatch(r"best_epoch(\d+)_batch(\d+)\.pt", p.name))]  # fmt: skip
    return max(found)[2] if found else None


def in_child(job) -> int:
    """Run `job()` in a forked child; return its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            job()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def trials(out_dir: Path, n_epochs: int, n_trials: int, seed: int) -> None:
    def straight() -> None:
        learn = build(str(out_dir / "straight"))
        fit(learn, n_epochs)
        write(learn, str(out_dir / "straight" / "out.pt"))

    (out_dir / "straight").mkdir(parents=True)
    assert in_child(straight) == 0
    rng = random.Random(seed)
    n_batches = 7 * n_epochs  # 50 samples in batches of 8
    for trial in range(n_trials):
        folder = out_dir / f"trial{trial}"
        folder.mkdir()
        k, event = rng.randrange(n_batches), rng.choice(KILL_EVENTS)
        (folder / "killed_at.txt").write_text(f"batch {k} {event}\n")

        def killed() -> None:
            learn = build(str(folder))
            fit(learn, n_epochs, cbs=[SaveModel(path=folder / "best.pt", every_n_batches=1, keep_last=2),
                                      Kill(k, event)])  # fmt: skip

        def resumed() -> None:
            learn = build(str(folder))
            save = SaveModel(path=folder / "best.pt", every_n_batches=1, keep_last=2)
            fit(learn, n_epochs, cbs=[save], resume=latest_checkpoint(folder))  # None (killed before one): from scratch
            write(learn, str(folder / "out.pt"))

        assert in_child(killed) == -signal.SIGKILL
        assert in_child(resumed) == 0


def main(argv: list[str]) -> None:
    mode, out, n_epochs = argv[0], argv[1], int(argv[2])
    if mode == "trials":
        trials(Path(out), n_epochs, int(argv[3]), int(argv[4]))
        return
    out_dir = os.path.dirname(out)
    learn = build(out_dir)
    if mode == "straight":
        fit(learn, n_epochs)
    elif mode == "stop":
        fit(learn, n_epochs, cbs=[StopAfter(int(argv[3]), os.path.join(out_dir, "ckpt.pt"))])
    elif mode == "resume":
        fit(learn, n_epochs, resume=argv[3])
    elif mode == "preempt":
        preemption = Preemption(path=os.path.join(out_dir, "preempted.pt"))
        fit(learn, n_epochs, cbs=[preemption, Gate(int(argv[3]))])
        assert preemption.received == signal.SIGTERM and preemption.saved is not None
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back
        learn.validate()  # the learner is usable
    write(learn, out)


if __name__ == "__main__":
    main(sys.argv[1:])
