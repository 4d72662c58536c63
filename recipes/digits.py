"""A small MLP on handwritten digits: the recipe to run first.

Two linear layers with a ReLU between them (64 pixels -> 100 -> 10 classes),
trained with SGD and momentum on the 8x8 digits that ship with scikit-learn. It
prints the epoch table, the final validation loss and accuracy (about 0.98)
from `learn.validate()` and the most confused digits, and writes metrics.csv,
loss.png, confusion.png and model.pt into --out. --device, --accumulate
and --amp show the callbacks that fit bigger batches on smaller hardware.

    python recipes/digits.py                 # embedded 8x8 digits, a few seconds
    python recipes/digits.py --bs 16 --accumulate 64 --amp bf16
    python -m loopkit.recipes.digits --data ~/data/mnist --epochs 3 --device cuda
    torchrun --standalone --nproc_per_node 2 recipes/digits.py   # data-parallel
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import DataLoaders, Learner, set_seed
from loopkit.callbacks import Distributed, GradientAccumulation, MixedPrecision
from loopkit.recipes._common import accuracy, load_data, make_parser, save_outputs

EPOCHS, BS, LR, MOMENTUM, HIDDEN = 10, 64, 0.05, 0.9, 100


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, print the epoch table and the final figures, write the outputs; return the final figures."""
    parser = make_parser(__doc__, "digits", EPOCHS, BS, LR)
    parser.add_argument("--device", default="auto",
                        help="cuda, cuda:1, mps, cpu... or auto: CUDA if available, else MPS, else CPU (default: auto)")
    parser.add_argument("--accumulate", type=int, default=None, metavar="N",
                        help="step the optimizer once every N samples, accumulating the gradients of batches of --bs: "
                        "--bs 16 --accumulate 64 trains like --bs 64 (default: step every batch)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                        help="mixed precision: autocast in bfloat16, or in float16 with loss scaling (default: float32)")
    args = parser.parse_args(argv)
    set_seed(args.seed)
    data = load_data(args.data)
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(data.train[0][0].numel(), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, len(data.classes))
    )
    cbs = [GradientAccumulation(args.accumulate)] if args.accumulate else []
    cbs += [MixedPrecision(args.amp)] if args.amp else []
    opt_func = partial(torch.optim.SGD, momentum=MOMENTUM)
    # Under torchrun each process trains on its shard and rank 0 writes the outputs.
    learn = Learner(model, dls, F.cross_entropy, opt_func=opt_func, lr=args.lr, metrics=[accuracy],
                    cbs=cbs, device=args.device, distributed=Distributed.launched())  # fmt: skip
    learn.fit(args.epochs)
    return save_outputs(learn, args.out, classes=data.classes)


if __name__ == "__main__":
    main()
