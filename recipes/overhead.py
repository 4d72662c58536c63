"""Benchmark: loopkit's per-batch overhead against a hand-written PyTorch loop.

Times one epoch of an MLP (784 -> 50 -> 10, batch 64, 50,000 synthetic samples,
plain SGD, 1 CPU thread) with a raw loop and with loopkit configured three ways,
interleaved in one process, and prints the median µs per batch and the ratio to
the raw loop. For these four rows the batches are built once up front, so the
figures measure the loop, not data loading. Two more rows load the same samples
end to end, shuffled each epoch: the raw loop over a torch `DataLoader` (the
default loader, which collates each batch sample by sample) and loopkit with its
default callbacks over a `TensorLoader`; the last line is their ratio. The clock
is the main thread's CPU time by default (torch runs on that thread with 1 thread,
and so does a `DataLoader` without workers), which other processes on a shared
machine don't inflate; `--clock wall` uses wall-clock time instead.

    python recipes/overhead.py            # full run
    python recipes/overhead.py --quick    # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Learner, TensorLoader
from loopkit.callbacks import ProgressBar

N_SAMPLES, BATCH_SIZE, REPEATS = 50_000, 64, 7


def make_model() -> nn.Module:
    """Return the benchmark MLP, 784 -> 50 -> 10."""
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))


def make_data(n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return synthetic samples `(x, y)`, made once so every contender gets the same data."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n_samples, 784, generator=gen), torch.randint(0, 10, (n_samples,), generator=gen)


def raw_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: list) -> None:
    """Run one training epoch the way a hand-written loop does."""
    model.train()
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()


def contenders(x: torch.Tensor, y: torch.Tensor, bs: int) -> dict[str, Callable[[], None]]:
    """Return the timed functions, each running one training epoch."""
    batches = list(zip(x.split(bs), y.split(bs)))
    raw_model = make_model()
    raw_opt = torch.optim.SGD(raw_model.parameters(), lr=0.01)
    dls = (batches, None)
    bare = Learner(make_model(), dls, F.cross_entropy, lr=0.01, default_cbs=False)
    default = Learner(make_model(), dls, F.cross_entropy, lr=0.01)
    default.progress_bar.enabled = False
    with_bar = Learner(make_model(), dls, F.cross_entropy, lr=0.01)
    with_bar.remove_cbs(ProgressBar).add_cbs(ProgressBar(write=lambda line: None))
    # End to end: the same samples, shuffled by each loader's own seeded generator.
    torch_dl = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))
    loader_model = make_model()
    loader_opt = torch.optim.SGD(loader_model.parameters(), lr=0.01)
    tensors = Learner(make_model(), (TensorLoader((x, y), bs=bs, shuffle=True), None), F.cross_entropy, lr=0.01)
    tensors.progress_bar.enabled = False
    return {
        "raw loop": lambda: raw_epoch(raw_model, raw_opt, batches),
        "loopkit bare": lambda: bare.fit(1),
        "loopkit default, no bar": lambda: default.fit(1),
        "loopkit default + bar": lambda: with_bar.fit(1),
        RAW_DATALOADER: lambda: raw_epoch(loader_model, loader_opt, torch_dl),
        LOOPKIT_TENSORLOADER: lambda: tensors.fit(1),
    }


RAW_DATALOADER, LOOPKIT_TENSORLOADER = "raw loop, DataLoader", "loopkit default, TensorLoader"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print a table; return the median µs per batch of each contender."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=N_SAMPLES)
    parser.add_argument("--bs", type=int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="5,000 samples, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 5_000, 3
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" and args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    x, y = make_data(args.samples)
    runs = contenders(x, y, args.bs)
    n_batches = -(-args.samples // args.bs)
    for run in runs.values():  # warm-up: allocator, first optimizer step
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():  # interleaved, so drift hits every contender alike
            start = clock()
            run()
            times[name].append((clock() - start) / n_batches * 1e6)
    medians = {name: statistics.median(t) for name, t in times.items()}
    raw = medians["raw loop"]
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"threads {torch.get_num_threads()}, device cpu, clock {clock.__name__}")
    print(f"{n_batches} batches of {args.bs}, median of {args.repeats} interleaved epochs")
    print(f"{'contender':<31}{'µs/batch':>10}{'ratio':>8}")
    for name, value in medians.items():
        print(f"{name:<31}{value:>10.1f}{value / raw:>8.3f}")
    speedup = medians[RAW_DATALOADER] / medians[LOOPKIT_TENSORLOADER]
    print(f"end to end: loopkit over a TensorLoader is {speedup:.2f}x as fast as the raw loop over a DataLoader")
    return medians


if __name__ == "__main__":
    main()
