"""Look inside a CNN: activation statistics with default init, Kaiming init and batchnorm.

The story of the fastai lessons on initialization, on the 8x8 digits that ship
with scikit-learn. The same small CNN (four 3x3 convolutions with ReLU, then a
linear classifier) is trained three times with the same seed and a high learning
rate: with PyTorch's default init, with Kaiming init (the ReLU-aware init), and
with batchnorm after each convolution. `ActivationStats` hooks each convolution
block (convolution, [batchnorm,] ReLU) and records its output at every training
batch. The recipe prints, for each case, the share of activations near zero
(|a| <= 0.05) per block over the first epoch and the final accuracy, and writes three
pictures per case into --out: <case>_color_dim.png (the histogram of |a| over
time, the "colorful dimension" plot), <case>_stats.png (mean and std) and
<case>_dead.png (fraction near zero).

    python recipes/activations.py                 # a few seconds
    python -m loopkit.recipes.activations --epochs 1 --out /tmp/inside
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import DataLoaders, Learner, set_seed
from loopkit.callbacks import ActivationStats
from loopkit.recipes._common import accuracy, load_data, make_parser

EPOCHS, BS, LR, MOMENTUM = 3, 64, 0.1, 0.9
CHANNELS = (8, 16, 32, 32)
CASES = ("default", "kaiming", "batchnorm")
BLOCKS = [f"block{i}" for i in range(1, len(CHANNELS) + 1)]


def make_cnn(n_channels: int, n_classes: int, case: str) -> nn.Sequential:
    """Return the CNN: a block per width (3x3 conv, stride 2 after the first, [batchnorm,] ReLU), then a classifier."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    n_in = n_channels
    for i, (name, n_out) in enumerate(zip(BLOCKS, CHANNELS)):
        conv = nn.Conv2d(n_in, n_out, 3, stride=1 if i == 0 else 2, padding=1, bias=case != "batchnorm")
        if case != "default":
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # keeps the variance through each ReLU
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        layers = [conv, nn.BatchNorm2d(n_out), nn.ReLU()] if case == "batchnorm" else [conv, nn.ReLU()]
        blocks[name] = nn.Sequential(*layers)
        n_in = n_out
    blocks["pool"] = nn.AdaptiveAvgPool2d(1)
    blocks["flatten"] = nn.Flatten()
    blocks["head"] = nn.Linear(n_in, n_classes)
    return nn.Sequential(blocks)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the three cases, print their figures, write their plots; return `<case>_near_zero` and `<case>_accuracy`."""
    args = make_parser(__doc__, "activations", EPOCHS, BS, LR).parse_args(argv)
    data = load_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    for case in CASES:
        set_seed(args.seed)  # each case starts from the same RNG state, so only the model differs
        dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
        model = make_cnn(data.train[0].shape[1], len(data.classes), case)
        stats = ActivationStats(modules=BLOCKS)
        learn = Learner(model, dls, F.cross_entropy, opt_func=partial(torch.optim.SGD, momentum=MOMENTUM),
                        lr=args.lr, metrics=[accuracy], cbs=[stats])  # fmt: skip
        learn.progress_bar.enabled = False
        learn.fit(args.epochs)
        stats.plot_color_dim(path=args.out / f"{case}_color_dim.png")
        stats.plot_stats(path=args.out / f"{case}_stats.png")
        stats.plot_dead(path=args.out / f"{case}_dead.png")
        # The first epoch is where the inits differ most: later, training has moved every case on.
        first_epoch = {name: torch.tensor(iters) < len(dls.train) for name, iters in stats.iters.items()}
        fractions = stats.near_zero_fractions
        near_zero = {name: fractions[name][first_epoch[name]].mean().item() for name in stats.layers}
        results[f"{case}_near_zero"] = sum(near_zero.values()) / len(near_zero)
        results[f"{case}_accuracy"] = learn.avg_stats.history[-1]["accuracy"]
        per_block = "  ".join(f"{name} {value:4.0%}" for name, value in near_zero.items())
        print(f"{case:<10} near zero: {per_block}  | mean {results[f'{case}_near_zero']:4.0%}  "
              f"accuracy {results[f'{case}_accuracy']:.3f}")  # fmt: skip
    print(f"wrote {', '.join(f'{case}_{{color_dim,stats,dead}}.png' for case in CASES)} to {args.out}")
    return results


if __name__ == "__main__":
    main()
