"""Benchmark: loopkit's per-batch overhead against a hand-written PyTorch loop.

Two workloads by default, each one training epoch on synthetic data with plain SGD:

- `mlp`: 784 -> 50 -> 10, batches of 64 (782 batches), where the model's work dominates;
- `tiny`: 784 -> 10, batches of 16 (1,250 batches), where the loop's own cost shows.

(`cnn`, a small convolutional net on 28x28 images, is there for a GPU:
`--workload cnn --device cuda`.) In each, a raw loop and loopkit configured several
ways train the same model with the same optimizer on batches built once up front, so
the figures measure the loop, not data loading. In each trial every loopkit contender
runs one epoch right next to one epoch of the raw loop, in an order that alternates
between trials, and its cost over the raw loop ("µs over raw") is the median over
trials of the difference of the two: drift on a shared machine hits both epochs of a
pair alike. "±" is that median's standard error (from the spread of the differences);
a cost within two of it of zero is not told apart from zero. The line under the table
is each callback's cost per batch: the bare loop (only `TrainEval`) with that one
callback added, against the bare loop, measured the same way. The bar writes to
nowhere. "µs/batch" is the median of a contender's epochs.

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
import math
import platform
import statistics
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


def baseline(name: str) -> str | None:
    """Return what contender `name` is measured against: None for the two raw loops."""
    if name in (RAW, RAW_DATALOADER):
        return None
    if name == LOOPKIT_TENSORLOADER:
        return RAW_DATALOADER
    return BARE if name in PER_CALLBACK else RAW


def measure(runs: dict[str, Callable[[], None]], n_batches: int, trials: int,
            clock: Callable[[], float], sync: Callable[[], None]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Return each contender's µs per batch in every trial, and its differences with its baseline.

    In a trial each contender runs one epoch right next to an epoch of its `baseline`,
    the two in an order that alternates from trial to trial. The difference of two
    adjacent epochs cancels the drift of a shared machine, which comparing separate
    minima or medians does not.
    """

    def timed(name: str) -> float:
        sync()
        start = clock()
        runs[name]()
        sync()
        return (clock() - start) / n_batches * 1e6

    for run in runs.values():  # warm-up: allocator, first optimizer step, kernels
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    over: dict[str, list[float]] = {name: [] for name in runs if baseline(name) is not None}
    for trial in range(trials):
        for name in runs:
            base = baseline(name)
            if base is None:
                continue
            order = (name, base) if trial % 2 else (base, name)
            pair = {contender: timed(contender) for contender in order}
            times[name].append(pair[name])
            times[base].append(pair[base])
            over[name].append(pair[name] - pair[base])
    return times, over


def _standard_error(values: list[float]) -> float:
    # Of the median, from the interquartile range: sigma ~ IQR / 1.349, and the median's
    # standard error ~ 1.253 sigma / sqrt(n). nan with fewer than two values.
    if len(values) < 2:
        return math.nan
    q1, _, q3 = statistics.quantiles(values)
    return 1.253 * (q3 - q1) / 1.349 / math.sqrt(len(values))


def report(name: str, work: Workload, times: dict[str, list[float]], over: dict[str, list[float]],
           n_batches: int) -> dict[str, dict[str, float]]:
    """Print one workload's table; return each contender's median µs per batch and its cost over its baseline."""
    medians = {contender: statistics.median(t) for contender, t in times.items()}
    extra = {contender: statistics.median(d) for contender, d in over.items()}
    error = {contender: _standard_error(d) for contender, d in over.items()}
    raw = medians[RAW]
    print(f"\nworkload {name}: {work.describe}, {n_batches} batches of {work.bs}, {len(over[BARE])} trials")
    print(f"{'contender':<31}{'µs/batch':>10}{'ratio':>8}{'µs over raw':>13}{'±':>7}")
    for contender, value in medians.items():
        if contender not in PER_CALLBACK:
            cost = f"{extra[contender]:>13.1f}{error[contender]:>7.1f}" if contender in extra else ""
            print(f"{contender:<31}{value:>10.1f}{value / raw:>8.3f}{cost}")
    costs = ", ".join(f"{cb} {extra[row]:.1f} ± {error[row]:.1f}" for row, cb in PER_CALLBACK.items())
    print(f"µs per batch each callback adds to the bare loop: {costs}")
    if LOOPKIT_TENSORLOADER in medians:
        speedup = medians[RAW_DATALOADER] / medians[LOOPKIT_TENSORLOADER]
        print(f"end to end: loopkit over a TensorLoader is {speedup:.2f}x as fast as the raw loop over a DataLoader")
    throughput = raw / (raw + extra[DEFAULT])
    print(f"throughput of loopkit (default callbacks, no bar): {throughput:.3f} of the raw loop's")
    return {"per_batch": medians, "over_baseline": extra}


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Run the benchmark and print a table per workload; return their figures (see `report`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both", help="both: mlp and tiny")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--samples", type=int, default=None, help="samples an epoch (default: the workload's)")
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
        if args.quick or args.samples:
            n_samples = args.samples or work.n_samples // 10
            work = Workload(work.describe, work.make_model, work.shape, work.bs, n_samples)
        n_batches = -(-work.n_samples // work.bs)
        runs = contenders(work, device, end_to_end=name == "mlp")
        figures[name] = report(name, work, *measure(runs, n_batches, trials, clock, sync), n_batches)
    return figures


if __name__ == "__main__":
    main()
