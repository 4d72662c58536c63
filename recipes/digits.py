"""A small MLP on handwritten digits: the recipe to run first.

Two linear layers with a ReLU between them (64 pixels -> 100 -> 10 classes),
trained with SGD and momentum on the 8x8 digits that ship with scikit-learn. It
prints the epoch table and the final validation loss and accuracy (about 0.98),
and writes metrics.csv, loss.png and model.pt into --out.

    python recipes/digits.py                 # embedded 8x8 digits, a few seconds
    python -m loopkit.recipes.digits --data ~/data/mnist --epochs 3
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from loopkit.recipes._common import accuracy, load_data, make_parser, save_outputs, seed_everything
from torch import nn

from loopkit import DataLoaders, Learner

EPOCHS, BS, LR, MOMENTUM, HIDDEN = 10, 64, 0.05, 0.9, 100


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, print the epoch table and the final figures, write the outputs; return the final figures."""
    args = make_parser(__doc__, "digits", EPOCHS, BS, LR).parse_args(argv)
    seed_everything(args.seed)
    data = load_data(args.data)
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(data.train[0][0].numel(), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, len(data.classes))
    )
    opt_func = partial(torch.optim.SGD, momentum=MOMENTUM)
    learn = Learner(model, dls, F.cross_entropy, opt_func=opt_func, lr=args.lr, metrics=[accuracy])
    learn.fit(args.epochs)
    return save_outputs(learn, args.out)


if __name__ == "__main__":
    main()
