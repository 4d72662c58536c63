"""Benchmark: the CNN recipe's training step compiled by `Compile` (inductor) against eager, on the CPU.

Trains the CNN of `cnn.py` on the embedded 8x8 digits (1,438 training images, batch
64, a `TensorLoader`, SGD with momentum, validation off) with loopkit's default
callbacks, once eager and once with `Compile()` (inductor), interleaved in one
process. Prints the compile time (the first compiled epoch's wall time minus a
steady compiled epoch's) and the median µs per batch of each, with their ratio.
The per-batch clock is the main thread's CPU time with 1 thread (inductor's
generated kernels run on it too), which other processes on a shared machine don't
inflate; `--clock wall` uses wall-clock time. Compile seconds are always wall time.

    python recipes/compiled.py            # full run, a minute or two on one CPU core
    python recipes/compiled.py --quick    # fewer repeats, for a smoke test
    python recipes/compiled.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from loopkit import Learner, TensorLoader, digits
from loopkit.callbacks import Compile
from loopkit.recipes.cnn import make_cnn

BATCH_SIZE, REPEATS, LR = 64, 7, 0.05


def make_learner(compiled: bool, bs: int, backend: str, device: torch.device) -> Learner:
    """Return a quiet learner for the CNN on the digits' training split, compiled or not.

    On a GPU the images are put there once, so every batch is made there.
    """
    data = digits()
    torch.manual_seed(0)
    model = make_cnn(data.train[0].shape[1], len(data.classes))
    dls = (TensorLoader(tuple(t.to(device) for t in data.train), bs=bs, shuffle=True), None)
    cbs = [Compile(backend=backend)] if compiled else []
    learn = Learner(model, dls, F.cross_entropy, lr=LR, cbs=cbs, device=None if device.type == "cpu" else device,
                    opt_func=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))  # fmt: skip
    learn.progress_bar.enabled = False
    return learn


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print the figures; return them (seconds and µs per batch)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the clock is then wall time, synchronized)")
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    on_cpu_thread = args.clock == "cpu" and args.threads == 1 and device.type == "cpu"
    clock = time.thread_time if on_cpu_thread else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    eager = make_learner(False, args.bs, args.backend, device)
    compiled = make_learner(True, args.bs, args.backend, device)
    n_batches = len(eager.train_dl)  # type: ignore[arg-type]
    start = time.perf_counter()
    compiled.fit(1)  # generates the code: forward and backward of the training graph
    first_epoch = time.perf_counter() - start
    eager.fit(1)  # warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    walls: list[float] = []
    for _ in range(args.repeats):
        for name, learn in (("eager", eager), ("compiled", compiled)):
            sync()
            start, wall = clock(), time.perf_counter()
            learn.fit(1)
            sync()
            times[name].append((clock() - start) / n_batches * 1e6)
            if name == "compiled":
                walls.append(time.perf_counter() - wall)
    medians = {name: statistics.median(t) for name, t in times.items()}
    compile_s = first_epoch - statistics.median(walls)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"threads {torch.get_num_threads()}, device {device}, backend {args.backend}, clock {clock.__name__}")
    print(f"{n_batches} batches of {args.bs} (8x8 digits), median of {args.repeats} interleaved epochs")
    print(f"compile: {compile_s:.1f} s (first compiled epoch {first_epoch:.1f} s wall)")
    print(f"{'contender':<12}{'µs/batch':>10}{'ratio':>8}")
    for name, value in medians.items():
        print(f"{name:<12}{value:>10.1f}{value / medians['eager']:>8.3f}")
    speedup = medians["eager"] / medians["compiled"]
    print(f"the compiled step is {speedup:.2f}x as fast as eager")
    return {"compile_s": compile_s, **medians}


if __name__ == "__main__":
    main()
