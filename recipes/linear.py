"""Logistic regression on handwritten digits: one linear layer, plain SGD.

Each class's score is a weighted sum of the pixels; cross-entropy turns the
scores into probabilities. The first learned model, and the first to beat the
mean-image baseline (pixel_similarity.py).

    python recipes/linear.py                 # embedded 8x8 digits, a few seconds
    python -m loopkit.recipes.linear --epochs 20 --lr 0.05 --out runs/linear-slow
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import DataLoaders, Learner, set_seed
from loopkit.recipes._common import accuracy, load_data, make_parser, save_outputs

EPOCHS, BS, LR = 10, 64, 0.1


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, print the epoch table and the final figures, write the outputs; return the final figures."""
    args = make_parser(__doc__, "linear", EPOCHS, BS, LR).parse_args(argv)
    set_seed(args.seed)
    data = load_data(args.data)
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(data.train[0][0].numel(), len(data.classes)))
    learn = Learner(model, dls, F.cross_entropy, opt_func=torch.optim.SGD, lr=args.lr, metrics=[accuracy])
    learn.fit(args.epochs)
    return save_outputs(learn, args.out, classes=data.classes)


if __name__ == "__main__":
    main()
