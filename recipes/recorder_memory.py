"""Benchmark: the memory `Recorder` keeps per training batch, over a long run of tiny batches.

Trains a 4 -> 2 linear model on one 8-sample batch served again and again (so the
data costs nothing) for `--batches` training batches in one epoch, and measures
this process's resident set size (RSS) growth over the fit: what the fit kept
(RSS after it, with the record still held) and its peak (reset just before the
fit, on Linux). Each configuration runs in a fresh subprocess. The bytes a batch
that `Recorder` costs are the growth with it minus the growth of the same loop
without it, divided by the number of batches; with a one-cycle schedule the lr
and momentum change at every batch, so the hyper-parameter record cannot be
shared between batches.

    python recipes/recorder_memory.py            # 200,000 batches, about 2 minutes on one CPU core
    python recipes/recorder_memory.py --quick    # 5,000 batches, a few seconds, for a smoke test

Measured on the shared 2-core machine (torch 2.13, python 3.11, x86_64), 200,000
batches, bytes a batch the Recorder kept: before issue 11 (a 0-d loss tensor and a
row tuple per batch) 900 without a schedule and 966 with one-cycle; now 0.8 and 73
(a float32 loss folded into a tensor every 256 batches; under one-cycle the lr and
momentum change at every batch, 16 bytes each in arrays, plus the arrays' growth
and the allocator's fragmentation as they reallocate).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import Learner
from loopkit.callbacks import ParamScheduler, Recorder, one_cycle_scheds
from loopkit.recipes._common import peak_rss_bytes, reset_peak_rss, rss_bytes

N_BATCHES, BATCH_SIZE = 200_000, 8
CONFIGURATIONS = {
    "loop without Recorder": ("none", False),
    "loop with Recorder": ("recorder", False),
    "one-cycle without Recorder": ("none", True),
    "one-cycle with Recorder": ("recorder", True),
}


class Repeat:
    """A loader with a length that yields the same `(x, y)` batch `n` times."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n):
            yield self.batch


def worker(recorder: bool, one_cycle: bool, n_batches: int) -> dict[str, float]:
    """Fit one configuration in this (fresh) process; return its kept and peak RSS growth in bytes."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = (torch.randn(BATCH_SIZE, 4), torch.randint(0, 2, (BATCH_SIZE,)))
    learn = Learner(nn.Linear(4, 2), (Repeat(batch, n_batches), None), F.cross_entropy, default_cbs=False,
                    opt_func=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
                    cbs=[Recorder()] if recorder else [])  # fmt: skip
    cbs = [ParamScheduler(one_cycle_scheds(0.1))] if one_cycle else []
    learn.dls = (Repeat(batch, 100), None)
    learn.fit(1, cbs=cbs)  # warm up: the optimizer, its state, the allocator's pools
    learn.dls = (Repeat(batch, n_batches), None)
    reset = reset_peak_rss()
    before = rss_bytes()
    learn.fit(1, cbs=cbs)
    kept, peak = rss_bytes() - before, peak_rss_bytes() - before
    if recorder:  # the record is complete: every batch has its loss and hyper-parameters
        assert len(learn.recorder.losses) == len(learn.recorder.lrs) == n_batches
    return {"kept": kept, "peak": peak, "reset": reset}


def run_configuration(recorder: bool, one_cycle: bool, n_batches: int) -> dict[str, float]:
    """Run `worker` in a fresh Python process and return what it printed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--batches", str(n_batches),
               "--worker", "recorder" if recorder else "none"] + (["--one-cycle"] if one_cycle else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the configuration recorder={recorder}, one_cycle={one_cycle} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every configuration, print a table; return the figures by configuration name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=N_BATCHES, help="training batches in the measured fit")
    parser.add_argument("--quick", action="store_true", help="5,000 batches")
    parser.add_argument("--worker", choices=["none", "recorder"], help=argparse.SUPPRESS)
    parser.add_argument("--one-cycle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches = 5_000
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    if args.worker:
        print(json.dumps(worker(args.worker == "recorder", args.one_cycle, args.batches)))
        return {}

    figures = {name: run_configuration(kind == "recorder", one_cycle, args.batches)
               for name, (kind, one_cycle) in CONFIGURATIONS.items()}  # fmt: skip
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, threads 1, device cpu")
    print(f"{args.batches} training batches of {BATCH_SIZE} samples in one fit; each row in a fresh process; "
          f"RSS growth over the fit{'' if all(r['reset'] for r in figures.values()) else ' (peak not reset)'}")  # fmt: skip
    print(f"{'configuration':<30}{'kept MiB':>10}{'peak MiB':>10}{'Recorder kept B/batch':>24}{'peak B/batch':>14}")
    for name, row in figures.items():
        base = figures[name.replace("with Recorder", "without Recorder")]
        if base is not row:
            row["bytes_per_batch"] = (row["kept"] - base["kept"]) / args.batches
            row["peak_bytes_per_batch"] = (row["peak"] - base["peak"]) / args.batches
        per_batch = f"{row['bytes_per_batch']:.1f}" if "bytes_per_batch" in row else "-"
        peak_per_batch = f"{row['peak_bytes_per_batch']:.1f}" if "peak_bytes_per_batch" in row else "-"
        print(f"{name:<30}{row['kept'] / 2**20:>10.1f}{row['peak'] / 2**20:>10.1f}{per_batch:>24}{peak_per_batch:>14}")
    return figures


if __name__ == "__main__":
    main()
