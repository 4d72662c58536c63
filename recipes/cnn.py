"""A small CNN with batchnorm on handwritten digits, trained by one-cycle.

Four 3x3 convolutions, each followed by batchnorm and a ReLU, with a max-pool
halfway and a global average pool before the classifier, so the same network
takes the 8x8 digits and 28x28 MNIST. `learn.fit_one_cycle` warms the learning
rate up to --lr and anneals it down while momentum moves the other way; the
schedule goes to sched.png. The most accurate of the recipes.

    python recipes/cnn.py                    # embedded 8x8 digits, a few seconds
    python -m loopkit.recipes.cnn --data ~/data/mnist --epochs 2 --bs 128
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import DataLoaders, Learner, set_seed
from loopkit.recipes._common import accuracy, load_data, make_parser, save_outputs

EPOCHS, BS, LR, CHANNELS = 8, 64, 0.1, (32, 64)


def conv(n_in: int, n_out: int) -> nn.Sequential:
    """Return a 3x3 convolution that keeps the size, then batchnorm and ReLU."""
    return nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU())


def make_cnn(n_channels: int, n_classes: int, channels: tuple[int, int] = CHANNELS) -> nn.Sequential:
    """Return the CNN for images with `n_channels` channels (any size from 2x2) and `n_classes` classes."""
    width, wider = channels
    return nn.Sequential(
        conv(n_channels, width), conv(width, width), nn.MaxPool2d(2),
        conv(width, wider), conv(wider, wider), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(wider, n_classes),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, print the epoch table and the final figures, write the outputs; return the final figures."""
    args = make_parser(__doc__, "cnn", EPOCHS, BS, LR).parse_args(argv)
    set_seed(args.seed)
    data = load_data(args.data)
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
    model = make_cnn(data.train[0].shape[1], len(data.classes))
    learn = Learner(model, dls, F.cross_entropy, opt_func=partial(torch.optim.SGD, momentum=0.9), metrics=[accuracy])
    learn.fit_one_cycle(args.epochs, args.lr)
    return save_outputs(learn, args.out, sched=True, classes=data.classes)


if __name__ == "__main__":
    main()
