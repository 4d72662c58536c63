"""Find a learning rate with the LR finder, then train the CNN by one-cycle at it.

`learn.lr_find()` raises the learning rate exponentially over 100 training
batches, records the loss, and restores the model, the optimizer and the RNG
states afterwards, so the fit that follows starts exactly where it would have
without the sweep. The plot of loss against learning rate, with the
suggestions marked, goes to lr_find.png; then cnn.py's network trains with
`fit_one_cycle` at the suggestion (or at --lr, if given).

    python recipes/lr_find.py                # embedded 8x8 digits, a few seconds
    python -m loopkit.recipes.lr_find --epochs 4 --out runs/lr_find-short
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from loopkit import DataLoaders, Learner, set_seed
from loopkit.recipes._common import accuracy, load_data, make_parser, save_outputs
from loopkit.recipes.cnn import make_cnn

EPOCHS, BS = 8, 64


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Sweep, plot, train at the suggested lr and write the outputs; return the final figures and the lr."""
    lr_help = "lr_max of the one-cycle fit (default: the LR finder's lr_steep suggestion)"
    args = make_parser(__doc__, "lr_find", EPOCHS, BS, None, lr_help).parse_args(argv)
    set_seed(args.seed)
    data = load_data(args.data)
    dls = DataLoaders.from_tensors(data.train, data.valid, bs=args.bs, seed=args.seed)
    model = make_cnn(data.train[0].shape[1], len(data.classes))
    learn = Learner(model, dls, F.cross_entropy, opt_func=partial(torch.optim.SGD, momentum=0.9), metrics=[accuracy])
    learn.progress_bar.enabled = False  # the sweep's epochs have no validation figures to show
    found = learn.lr_find()
    learn.progress_bar.enabled = True
    args.out.mkdir(parents=True, exist_ok=True)
    found.plot(path=args.out / "lr_find.png")
    lr = args.lr if args.lr is not None else found.lr_steep
    print(f"lr_find suggests lr_steep {found.lr_steep:.3g}, lr_min {found.lr_min:.3g}; training at lr_max {lr:.3g}")
    learn.fit_one_cycle(args.epochs, lr)
    return {**save_outputs(learn, args.out, sched=True, also=["lr_find.png"], classes=data.classes), "lr": lr}


if __name__ == "__main__":
    main()
