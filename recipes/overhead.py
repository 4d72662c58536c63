"""Benchmark: loopkit's per-batch overhead against a hand-written PyTorch loop.

Two workloads by default, each one training epoch on synthetic data with plain SGD:

- `mlp`: 784 -> 50 -> 10, batches of 64 (782 batches), where the model's work dominates;
- `tiny`: 784 -> 10, batches of 16 (1,250 batches), where the loop's own cost shows.

(`cnn`, a small convolutional net on 28x28 images, is there for a GPU:
`--workload cnn --device cuda`.) In each, a raw loop and loopkit configured several
ways train the same model with the same optimizer on batches built once up front, so
the figures measure the loop, not data loading. The contenders run one epoch each per
trial, in a rotating order, and a contender's cost over the raw loop is the median
over trials of its time minus the raw loop's time in the same trial: drift on a shared
machine hits both sides of each difference alike. The rows `+ AvgStats`, `+ Recorder`
and `+ ProgressBar` add one callback to the bare loop (only `TrainEval`), and the line
under the table is each callback's cost per batch: that row minus the bare loop, again
a median of per-trial differences. The bar writes to nowhere.

On the `mlp` workload two more rows load the same samples end to end, shuffled each
epoch: the raw loop over a torch `DataLoader` (the default loader, which collates each
batch sample by sample) and loopkit with its default callbacks over a `TensorLoader`.

The clock is the main thread's CPU time on the CPU (torch runs on that thread with 1
thread, and other processes on a shared machine don't inflate it), and wall-clock time
with the device synchronized around each epoch on CUDA; `--clock wall` forces the latter.

    python recipes/overhead.py                              # both CPU workloads
    python recipes/overhead.py --quick                      # a few seconds, for a smoke test
    python recipes/overhead.py --workload cnn --device cuda # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Learner, TensorLoader
from loopkit.callbacks import AvgStats, ProgressBar, Recorder

RAW, BARE, DEFAULT, DEFAULT_BAR = "raw loop", "loopkit bare", "loopkit default, no bar", "loopkit default + bar"
PER_CALLBACK = {"+ AvgStats": "AvgStats", "+ Recorder": "Recorder", "+ ProgressBar": "ProgressBar"}
RAW_DATALOADER, LOOPKIT_TENSORLOADER = "raw loop, DataLoader", "loopkit default, TensorLoader"


@dataclass
class Workload:
    """A model, its input shape, the batch size and the number of samples of one epoch."""

    describe: str
    make_model: Callable[[], nn.Module]
    shape: tuple[int, ...]
    bs: int
    n_samples: int


def _cnn() -> nn.Module:
    def conv(ni: int, nf: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(ni, nf, 3, stride=2, padding=1), nn.BatchNorm2d(nf), nn.ReLU())

    return nn.Sequential(conv(1, 16), conv(16, 32), conv(32, 64), conv(64, 64), nn.Flatten(), nn.Linear(256, 10))


WORKLOADS = {
    "mlp": Workload("MLP 784 -> 50 -> 10", lambda: nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)),
                    (784,), 64, 50_000),
    "tiny": Workload("linear 784 -> 10", lambda: nn.Linear(784, 10), (784,), 16, 20_000),
    "cnn": Workload("CNN, 4 stride-2 convs with batchnorm, on 1x28x28", _cnn, (1, 28, 28), 64, 20_000),
}  # fmt: skip


def make_data(shape: tuple[int, ...], n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return synthetic samples `(x, y)`, made once so every contender gets the same data."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n_samples, *shape, generator=gen), torch.randint(0, 10, (n_samples,), generator=gen)


def raw_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: list, device: torch.device) -> None:
    """Run one training epoch the way a hand-written loop does."""
    model.train()
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()


def contenders(work: Workload, device: torch.device, end_to_end: bool) -> dict[str, Callable[[], None]]:
    """Return the timed functions, each running one training epoch.

    The loop contenders share one model and one optimizer (plain SGD keeps no state),
    so they differ only in the loop that drives them.
    """
    torch.manual_seed(0)
    x, y = make_data(work.shape, work.n_samples)
    batches = list(zip(x.to(device).split(work.bs), y.to(device).split(work.bs)))
    model = work.make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    on = None if device.type == "cpu" else device  # on the CPU, no Device callback: batches are there already

    def learner(default_cbs: bool = True, bar: bool = False, cbs: list | None = None) -> Callable[[], None]:
        learn = Learner(model, (batches, None), F.cross_entropy, lr=0.01, default_cbs=default_cbs, cbs=cbs, device=on)
        learn.opt = opt
        if default_cbs and not bar:
            learn.progress_bar.enabled = False
        return lambda: learn.fit(1)

    def quiet_bar() -> ProgressBar:
        return ProgressBar(write=lambda line: None)

    runs = {
        RAW: lambda: raw_epoch(model, opt, batches, device),
        BARE: learner(default_cbs=False),
        "+ AvgStats": learner(default_cbs=False, cbs=[AvgStats()]),
        "+ Recorder": learner(default_cbs=False, cbs=[Recorder()]),
        "+ ProgressBar": learner(default_cbs=False, cbs=[quiet_bar()]),
        DEFAULT: learner(),
        DEFAULT_BAR: learner(cbs=[quiet_bar()]),
    }
    if end_to_end:  # the same samples, shuffled by each loader's own seeded generator
        torch_dl = DataLoader(TensorDataset(x, y), batch_size=work.bs, shuffle=True,
                              generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")  # fmt: skip
        loader_model = work.make_model().to(device)
        loader_opt = torch.optim.SGD(loader_model.parameters(), lr=0.01)
        tensors = Learner(work.make_model(), (TensorLoader((x.to(device), y.to(device)), bs=work.bs, shuffle=True), None),
                          F.cross_entropy, lr=0.01, device=on)  # fmt: skip
        tensors.progress_bar.enabled = False
        runs[RAW_DATALOADER] = lambda: raw_epoch(loader_model, loader_opt, torch_dl, device)
        runs[LOOPKIT_TENSORLOADER] = lambda: tensors.fit(1)
    return runs


def measure(runs: dict[str, Callable[[], None]], n_batches: int, trials: int,
            clock: Callable[[], float], sync: Callable[[], None]) -> dict[str, list[float]]:
    """Return each contender's µs per batch in every trial (one epoch each, in a rotating order)."""
    for run in runs.values():  # warm-up: allocator, first optimizer step, kernels
        run()
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for trial in range(trials):
        for name in names[trial % len(names):] + names[: trial % len(names)]:
            sync()
            start = clock()
            runs[name]()
            sync()
            times[name].append((clock() - start) / n_batches * 1e6)
    return times


def _over(times: dict[str, list[float]], name: str, base: str) -> float:
    return min(times[name]) - min(times[base])


def report(name: str, work: Workload, times: dict[str, list[float]], n_batches: int) -> dict[str, float]:
    """Print one workload's table; return each contender's median µs per batch."""
    medians = {contender: min(t) for contender, t in times.items()}
    raw = medians[RAW]
    print(f"\nworkload {name}: {work.describe}, {n_batches} batches of {work.bs}, "
          f"median of {len(times[RAW])} trials")  # fmt: skip
    print(f"{'contender':<31}{'µs/batch':>10}{'ratio':>8}{'µs over raw':>13}")
    for contender, value in medians.items():
        base = RAW_DATALOADER if contender == LOOPKIT_TENSORLOADER else RAW
        over = "" if contender in (RAW, RAW_DATALOADER) else f"{_over(times, contender, base):>13.1f}"
        print(f"{contender:<31}{value:>10.1f}{value / raw:>8.3f}{over}")
    costs = ", ".join(f"{cb} {_over(times, row, BARE):.1f}" for row, cb in PER_CALLBACK.items())
    print(f"µs per batch over the bare loop: {costs}")
    if LOOPKIT_TENSORLOADER in medians:
        speedup = medians[RAW_DATALOADER] / medians[LOOPKIT_TENSORLOADER]
        print(f"end to end: loopkit over a TensorLoader is {speedup:.2f}x as fast as the raw loop over a DataLoader")
    print(f"throughput of loopkit (default callbacks, no bar): {raw / medians[DEFAULT]:.3f} of the raw loop's")
    return medians


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark and print a table per workload; return their median µs per batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both", help="both: mlp and tiny")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a tenth of the samples, 3 trials")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    on_cpu_thread = args.clock == "cpu" and args.threads == 1 and device.type == "cpu"
    clock = time.thread_time if on_cpu_thread else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    trials = 3 if args.quick else args.trials
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"threads {torch.get_num_threads()}, device {device}, clock {clock.__name__}")  # fmt: skip
    figures = {}
    for name in ["mlp", "tiny"] if args.workload == "both" else [args.workload]:
        work = WORKLOADS[name]
        if args.quick:
            work = Workload(work.describe, work.make_model, work.shape, work.bs, work.n_samples // 10)
        n_batches = -(-work.n_samples // work.bs)
        runs = contenders(work, device, end_to_end=name == "mlp")
        figures[name] = report(name, work, measure(runs, n_batches, trials, clock, sync), n_batches)
    return figures


if __name__ == "__main__":
    main()
