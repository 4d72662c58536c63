"""The baseline to beat: classify a digit by the class whose mean image it is closest to.

Nothing is trained. The "model" is one mean image per class, averaged over the
training split; a validation image gets the class at the smallest mean squared
pixel distance. Every learned model in the other recipes must beat this figure.
The reported loss is the cross-entropy of the negative distances read as logits,
printed for completeness; only the accuracy means much here. Writes metrics.csv
(one row), confusion.png (from a `ClassificationInterpretation` of the scores, to
compare with the learned models') and model.pt (the mean images) into --out; there
is no loss curve.
--epochs and --lr are accepted, like every recipe's, but change nothing; --bs is
the number of images scored at once.

    python recipes/pixel_similarity.py              # embedded 8x8 digits, a second
    python -m loopkit.recipes.pixel_similarity --data ~/data/mnist
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopkit import set_seed
from loopkit.callbacks import ClassificationInterpretation
from loopkit.recipes._common import load_data, make_parser, report, write_confusion, write_metrics

EPOCHS, BS, LR = 1, 64, 0.0  # nothing is trained; kept for a uniform command line


class MeanImages(nn.Module):
    """Score each class by minus the mean squared distance to its mean training image."""

    means: torch.Tensor  # (n_classes, C, H, W), a buffer: saved in model.pt, never trained

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.stack([x[y == c].mean(0) for c in range(n_classes)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, n_classes) scores; the highest is the nearest mean image."""
        return -(x.unsqueeze(1) - self.means).pow(2).flatten(2).mean(2)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Score the validation split, print and write the figures; return them."""
    args = make_parser(__doc__, "pixel_similarity", EPOCHS, BS, LR).parse_args(argv)
    set_seed(args.seed)
    data = load_data(args.data)
    model = MeanImages(data.train[0], data.train[1], len(data.classes))
    x, y = data.valid
    with torch.no_grad():
        scores = torch.cat([model(xb) for xb in x.split(args.bs)])
    row = {"epoch": 0, "valid_loss": F.cross_entropy(scores, y).item(),
           "accuracy": (scores.argmax(1) == y).float().mean().item()}  # fmt: skip
    print("  ".join(f"{k:<10}" for k in row))
    print("  ".join(f"{v:<10.6f}" if isinstance(v, float) else f"{v:<10}" for v in row.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    write_metrics([row], args.out / "metrics.csv")
    # No Learner here, so the interpretation is built from the scores directly.
    losses = F.cross_entropy(scores, y, reduction="none")
    confusion = write_confusion(ClassificationInterpretation(x, scores.softmax(1), y, losses, data.classes), args.out)
    torch.save(model.state_dict(), args.out / "model.pt")
    files = ["metrics.csv", confusion, "model.pt"]
    return report({"valid_loss": row["valid_loss"], "accuracy": row["accuracy"]}, args.out, files)


if __name__ == "__main__":
    main()
