"""Benchmark: peak memory and time of a training epoch, batch B against micro-batches of B/k accumulated k times.

Trains a deep, narrow MLP (128 features, 16 hidden layers of 128, SGD with
momentum) on synthetic data, where the activations kept for backward dominate
memory: they grow with the batch, the weights don't. Each configuration runs in
a fresh subprocess, so its peak is its own: on CPU the peak resident set size
(RSS) during training (the peak is reset just before, on Linux) and its growth
over the RSS just before training; on CUDA
`torch.cuda.max_memory_allocated` and its growth over the memory allocated
before training. A raw PyTorch loop with batch B is the reference; then loopkit
with batch B, and loopkit with micro-batches of B/k and `GradientAccumulation(B)`,
which makes the same updates. Time is the median over epochs after a warm-up
epoch, as a ratio to loopkit with batch B. On CPU the clock is the thread's CPU
time with 1 thread (as in overhead.py), else wall time.

    python recipes/memory.py              # full run, about a minute on one CPU core
    python recipes/memory.py --quick      # a few seconds, for a smoke test
    python recipes/memory.py --device cuda --ks 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Learner
from loopkit.callbacks import GradientAccumulation, pick_device
from loopkit.recipes._common import peak_rss_bytes, reset_peak_rss, rss_bytes

N_SAMPLES, BATCH_SIZE, WIDTH, DEPTH, KS, EPOCHS = 32_768, 8_192, 128, 16, (2, 4, 8), 3


def make_model(width: int, depth: int) -> nn.Module:
    """Return the benchmark MLP: `depth` hidden layers of `width` units, 10 classes."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def make_batches(n_samples: int, bs: int, width: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return synthetic `(x, y)` batches of `bs`, already on `device` (the same data for every configuration)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_samples, width, generator=gen).to(device)
    y = torch.randint(0, 10, (n_samples,), generator=gen).to(device)
    return list(zip(x.split(bs), y.split(bs)))


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Train one configuration in this (fresh) process; return its peak memory and epoch times."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model(args.width, args.depth).to(device)
    batches = make_batches(args.samples, args.micro_bs, args.width, device)
    sgd = torch.optim.SGD
    clock = time.thread_time if device.type == "cpu" and args.threads == 1 else time.perf_counter

    if args.worker == "raw":
        opt = sgd(model.parameters(), lr=0.01, momentum=0.9)

        def epoch() -> None:
            model.train()
            for xb, yb in batches:
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                opt.zero_grad()
    else:
        cbs = [GradientAccumulation(args.bs)] if args.micro_bs != args.bs else []
        learn = Learner(model, (batches, None), F.cross_entropy, default_cbs=False, cbs=cbs)
        learn.opt = sgd(model.parameters(), lr=0.01, momentum=0.9)  # made now, as in the raw loop, not in the timed fit

        def epoch() -> None:
            learn.fit(1)

    # Without a reset (macOS), the peak may be that of importing torch rather than of training.
    reset = reset_peak_rss()
    before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.epochs + 1):  # the first epoch warms up (allocator, optimizer state)
        start = clock()
        epoch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    return {"peak": peak, "growth": peak - before, "time": statistics.median(times[1:]), "reset": reset}


def run_configuration(args: argparse.Namespace, kind: str, micro_bs: int) -> dict[str, float]:
    """Run `worker` in a fresh Python process and return what it printed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--micro-bs", str(micro_bs),
               "--bs", str(args.bs), "--samples", str(args.samples), "--width", str(args.width),
               "--depth", str(args.depth), "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--device", args.device]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} configuration (micro-batch {micro_bs}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every configuration, print a table; return the figures by configuration name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=N_SAMPLES)
    parser.add_argument("--bs", type=int, default=BATCH_SIZE, help="the batch B; micro-batches are B/k")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="accumulation factors k")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--depth", type=int, default=DEPTH)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--quick", action="store_true", help="4,096 samples, B=1,024, k=4, 1 timed epoch")
    parser.add_argument("--worker", choices=["raw", "loopkit"], help=argparse.SUPPRESS)
    parser.add_argument("--micro-bs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = str(pick_device(args.device))
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if args.quick:
        args.samples, args.bs, args.ks, args.epochs = 4_096, 1_024, [4], 1
    bad = [k for k in args.ks if k < 1 or args.bs % k]
    if bad:
        parser.error(f"each k must divide the batch B={args.bs} so micro-batches are B/k; got {bad}")

    configurations = {"raw loop, batch B": ("raw", args.bs), "loopkit, batch B": ("loopkit", args.bs)}
    for k in args.ks:
        configurations[f"loopkit, B/{k} x {k} accumulated"] = ("loopkit", args.bs // k)
    figures = {name: run_configuration(args, kind, micro_bs) for name, (kind, micro_bs) in configurations.items()}

    cuda = args.device.startswith("cuda")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"threads {args.threads}, device {args.device}"
          f"{f' ({torch.cuda.get_device_name()})' if cuda else ''}")  # fmt: skip
    print(f"MLP {args.width} x {args.depth} layers, {args.samples} samples, B={args.bs}, "
          f"median of {args.epochs} epoch(s) after a warm-up; each row in a fresh process")  # fmt: skip
    measure = "max_memory_allocated" if cuda else "peak RSS"
    print(f"{'configuration':<32}{measure + ' MiB':>24}{'growth MiB':>12}{'s/epoch':>10}{'time ratio':>12}")
    base = figures["loopkit, batch B"]["time"]
    for name, row in figures.items():
        print(f"{name:<32}{row['peak'] / 2**20:>24.1f}{row['growth'] / 2**20:>12.1f}"
              f"{row['time']:>10.3f}{row['time'] / base:>12.2f}")  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
